"""Measure retrieval on a labelled query set: recall@k and MRR per language for each retriever, and fused.

A query set is JSON lines `{"query", "page", "lang"}` (optionally "split"); a
query counts as found when its page is among the pages of the top k hits.
Modes: "bm25", "dense:<embedder>" for each embedder, "dense" (all embedders,
equal weights) and "hybrid" (the configured fusion). All modes fuse the same
candidate lists with the same `Retriever.fuse`, so they share candidates,
section deduplication and tie-breaking; only the weights differ.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kbgate.retrieval import BM25, Retriever


def read_queries(path: str | Path, split: str | None = None) -> list[dict]:
    """Read a JSON-lines query set (only the rows of `split` when given)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


def mode_weights(retriever: Retriever) -> dict:
    """{mode: fixed weights, or None for the configured hybrid}."""
    names = [e.name for e in retriever.embedders]
    out = {BM25: {BM25: 1.0}}
    if len(names) > 1:
        out.update({f"dense:{n}": {n: 1.0} for n in names})
    out["dense"] = {n: 1.0 for n in names}
    out["hybrid"] = None
    return out


def mode_retriever(retriever: Retriever, mode: str) -> Retriever:
    """Return a retriever over the same index and embedders restricted to one mode's weights."""
    w = mode_weights(retriever)[mode]
    if w is None:
        return retriever
    full = {BM25: 0.0, **{e.name: 0.0 for e in retriever.embedders}, **w}
    return Retriever(retriever.index, retriever.embedder,
                     dataclasses.replace(retriever.cfg, weights_zh=full, weights_en=full))


def query_candidates(retriever: Retriever, queries: list[dict]) -> list[dict]:
    """Per query, every retriever's ranked sections (all embedders embed every query)."""
    texts = [q["query"] for q in queries]
    out = []
    for e_all, text in zip(_embed_all(retriever, texts), texts):
        out.append(retriever.candidates(text, e_all))
    return out


def _embed_all(retriever: Retriever, texts: list[str]) -> list[dict]:
    from indexer.embedders import embed_queries
    vecs = {e.name: embed_queries(e, texts) for e in retriever.embedders}
    return [{n: v[i] for n, v in vecs.items()} for i in range(len(texts))]


def score(retriever: Retriever, queries: list[dict], cands: list[dict], weights=None, k: int = 5,
          rrf_k: float | None = None) -> dict:
    """recall@k / MRR@k / recall@1 per language and "all" for one weighting (None: the configured hybrid)."""
    ranks: dict[str, list[int | None]] = {}
    misses = []
    for q, cand in zip(queries, cands):
        w, rk, _ = retriever.weights(q["query"])
        if weights is not None:
            w = weights
        if rrf_k is not None:
            rk = rrf_k
        order, _, rep = retriever.fuse(cand, w, rk)
        pages = list(dict.fromkeys(retriever.index.chunks[rep[key]].page for key in order[:k]))
        rank = pages.index(q["page"]) + 1 if q["page"] in pages else None
        ranks.setdefault(q.get("lang", "all"), []).append(rank)
        if rank is None:
            misses.append((q["query"], q["page"], pages))
    ranks["all"] = [r for lang in sorted(ranks) for r in ranks[lang]]
    out: dict = {lang: {"recall": _mean([r is not None for r in rs]), "mrr": _mean([1 / r if r else 0.0 for r in rs]),
                        "r1": _mean([r == 1 for r in rs]), "n": len(rs)} for lang, rs in ranks.items()}
    out["misses"] = misses
    return out


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def recall_at_k(retriever: Retriever, queries: list[dict], k: int = 5) -> dict:
    """Return {lang or "all": {"recall", "mrr", "r1", "n"}, "misses": [...]} through the real `search_many`.

    misses: (query, expected page, pages returned) for each query whose page is not in the top k.
    """
    results = retriever.search_many([q["query"] for q in queries], k)
    ranks: dict[str, list[int | None]] = {}
    misses = []
    for q, hits in zip(queries, results):
        pages = list(dict.fromkeys(h.page for h in hits))
        rank = pages.index(q["page"]) + 1 if q["page"] in pages else None
        ranks.setdefault(q.get("lang", "all"), []).append(rank)
        if rank is None:
            misses.append((q["query"], q["page"], pages))
    ranks["all"] = [r for lang in sorted(ranks) for r in ranks[lang]]
    out: dict = {lang: {"recall": _mean([r is not None for r in rs]), "mrr": _mean([1 / r if r else 0.0 for r in rs]),
                        "r1": _mean([r == 1 for r in rs]), "n": len(rs)} for lang, rs in ranks.items()}
    out["misses"] = misses
    return out


def compare(retriever: Retriever, queries: list[dict], k: int = 5) -> dict:
    """Return {mode: score(...)} for bm25, each embedder, all dense, and the configured hybrid."""
    cands = query_candidates(retriever, queries)
    return {mode: score(retriever, queries, cands, w, k) for mode, w in mode_weights(retriever).items()}
