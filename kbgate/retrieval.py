"""Hybrid retrieval: dense (FAISS) + BM25, fused by language-weighted reciprocal rank fusion.

fused(section) = w_dense / (rrf_k + dense rank) + w_bm25 / (rrf_k + BM25 rank).
The weights follow the query's language: a query written in the embedder's
languages gets the `*_native` weights, any other the `*_foreign` ones, and a
mixed query ("pod一直ImagePullBackOff") a blend by its share of native terms.
An English-only MiniLM turns most Chinese characters into [UNK], so for Chinese
BM25 must lead. Ranks are counted per section (page, heading), so the
overlapping pieces of one long section count once and never fill the list.

`Hit.relevance` in [0, 1] is an absolute signal for "the wiki has no answer":
the IDF-weighted share of the query's terms found in the chunk, or, if larger,
the cosine rescaled between `dense_floor` and `dense_ceiling` times the native
share (an embedder's cosine means little in a language it cannot read).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from indexer.index import Index
from indexer.search import bm25_search, coverage, dense_search
from indexer.tokenize import detect_lang, is_cjk, tokenize
from kbgate.config import RetrievalConfig


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
        self.embedder = embedder
        self.cfg = cfg or RetrievalConfig()
        self._tag_masks: dict[frozenset, np.ndarray] = {}
        self._section_rows: dict[tuple, list[int]] | None = None
        self._merged: dict[tuple, str] = {}  # (page, heading) -> section_text

    def section_text(self, hit: Hit) -> str:
        """The whole section a hit belongs to: its pieces merged, each overlap kept once.

        Chunks are capped at 200 tokens, so a long list of steps can be split; the model
        and the quoted troubleshooting steps need all of it, not the piece that ranked.
        """
        key = (hit.page, hit.heading)
        if key not in self._merged:  # the index never changes under a Retriever: merge each section once
            pieces = [self.index.chunks[r].text for r in self._sections().get(key, [])]
            self._merged[key] = merge_pieces(pieces) if len(pieces) > 1 else hit.text
        return self._merged[key]

    def steps_section(self, page: str) -> Hit | None:
        """The first section of a page headed like a fix (解决步骤, Fix), as a hit with no scores."""
        return next((self._hit(rows[0]) for (pg, heading), rows in self._sections().items()
                     if pg == page and is_steps_section(heading)), None)

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

    def weights(self, query: str, tokens: list[str] | None = None) -> tuple[float, float, float]:
        """Return (dense weight, BM25 weight, native share): native and foreign weights blended by that share.

        native share = fraction of the query's terms in the embedder's languages
        ("pod一直ImagePullBackOff" is partly English), so a mixed query gets mixed weights.
        """
        share = native_share(query if tokens is None else tokens, self.embedder.languages)
        c = self.cfg
        dense = share * c.dense_weight_native + (1 - share) * c.dense_weight_foreign
        bm25 = share * c.bm25_weight_native + (1 - share) * c.bm25_weight_foreign
        return dense, bm25, share

    def _allowed(self, tags) -> np.ndarray | None:
        if not tags:
            return None
        key = frozenset(tags)
        if key not in self._tag_masks:
            self._tag_masks[key] = np.array([bool(key.intersection(c.tags)) for c in self.index.chunks], bool)
        return self._tag_masks[key]

    def search(self, query: str, k: int | None = None, *, prefer_troubleshooting: bool = False,
               tags=None) -> list[Hit]:
        """Return up to k hits, best first (see the module docstring)."""
        k = self.cfg.k if k is None else k
        if k <= 0 or not query.strip() or not len(self.index):
            return []
        qvec = self.embedder.embed([query])[0]  # (dim,) float32, normalized
        return self._search(query, qvec, k, prefer_troubleshooting, tags)

    def search_many(self, queries: list[str], k: int | None = None, *, prefer_troubleshooting: bool = False,
                    tags=None) -> list[list[Hit]]:
        """Search several queries (same order out), embedding them in one batch."""
        k = self.cfg.k if k is None else k
        live = [i for i, q in enumerate(queries) if q.strip()] if k > 0 and len(self.index) else []
        out: list[list[Hit]] = [[] for _ in queries]
        if live:
            qvecs = self.embedder.embed([queries[i] for i in live])  # (len(live), dim)
            for i, v in zip(live, qvecs):
                out[i] = self._search(queries[i], v, k, prefer_troubleshooting, tags)
        return out

    def _search(self, query, qvec, k, prefer_troubleshooting, tags) -> list[Hit]:
        c, ix = self.cfg, self.index
        allowed = self._allowed(tags)
        tokens = tokenize(query)
        w_dense, w_bm25, share = self.weights(query, tokens)
        d_rows, _ = dense_search(ix, qvec, c.candidates, allowed, c.ivf_nprobe, c.faiss_threads)
        b_rows, _, b_all = bm25_search(ix, tokens, c.candidates, allowed)
        d_rank, b_rank = self._ranks(d_rows), self._ranks(b_rows)
        # fuse per section: the pieces of one long section count once, at their best rank
        fused: dict[tuple, float] = {}
        rep: dict[tuple, tuple[float, int]] = {}  # section -> (best single contribution, its row)
        for ranks, w in ((d_rank, w_dense), (b_rank, w_bm25)):
            if w > 0:
                for key, (i, r) in ranks.items():
                    part = w / (c.rrf_k + i)
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
        order = sorted(fused, key=lambda key: (-fused[key], rep[key][1]))[:k]
        picked = [rep[key][1] for key in order]
        score = {rep[key][1]: fused[key] for key in order}
        d_rank = {r: i for i, r in d_rank.values()}
        b_rank = {r: i for i, r in b_rank.values()}
        if not picked:
            return []
        cos = ix.faiss.reconstruct_batch(np.asarray(picked, np.int64)) @ qvec  # (len(picked),) cosines
        lex = coverage(ix, tokens, picked)
        return [self._hit(r, float(score[r]), d_rank.get(r), b_rank.get(r), float(cs), float(b_all[r]),
                          self.relevance(float(cs), float(lx), share))
                for r, cs, lx in zip(picked, cos, lex)]

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

    def relevance(self, cosine: float, lexical: float, share: float) -> float:
        """Combine lexical coverage and the rescaled cosine (trusted as far as the query is native) into [0, 1]."""
        lo, hi = self.cfg.dense_floor, self.cfg.dense_ceiling
        dense = min(max((cosine - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.0
        return round(max(lexical, share * dense), 4)


def _piece_number(chunk_id: str) -> int:
    """'it/vpn#安装客户端~3' -> 3; the first piece has no suffix."""
    head, sep, tail = chunk_id.rpartition("~")
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
