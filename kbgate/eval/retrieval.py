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
import itertools
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
    found = []
    for q, cand in zip(queries, cands):
        w, rk, _ = retriever.weights(q["query"])
        if weights is not None:
            w = weights
        if rrf_k is not None:
            rk = rrf_k
        order, _, rep = retriever.fuse(cand, w, rk)
        found.append(list(dict.fromkeys(retriever.index.chunks[rep[key]].page for key in order[:k])))
    return _summary(queries, found)


def _summary(queries: list[dict], found: list[list[str]]) -> dict:
    """{lang or "all": {"recall", "mrr", "r1", "n"}, "misses": [(query, expected, pages)]} from the pages found per query."""
    ranks: dict[str, list[int | None]] = {}
    misses = []
    for q, pages in zip(queries, found):
        rank = _rank(pages, q)
        ranks.setdefault(q.get("lang", "all"), []).append(rank)
        if rank is None:
            misses.append((q["query"], q.get("page") or "|".join(q["pages"]), pages))
    ranks["all"] = [r for lang in sorted(ranks) for r in ranks[lang]]
    out: dict = {lang: {"recall": _mean([r is not None for r in rs]), "mrr": _mean([1 / r if r else 0.0 for r in rs]),
                        "r1": _mean([r == 1 for r in rs]), "n": len(rs)} for lang, rs in ranks.items()}
    out["misses"] = misses
    return out


def _rank(pages: list[str], q: dict) -> int | None:
    """1-based rank of the first expected page (`page`, or any of `pages`) among the pages found; None if absent."""
    want = set(q.get("pages") or [q["page"]])
    return next((i for i, p in enumerate(pages, 1) if p in want), None)


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def recall_at_k(retriever: Retriever, queries: list[dict], k: int = 5) -> dict:
    """Return {lang or "all": {"recall", "mrr", "r1", "n"}, "misses": [...]} through the real `search_many`.

    misses: (query, expected page, pages returned) for each query whose page is not in the top k.
    """
    results = retriever.search_many([q["query"] for q in queries], k)
    return _summary(queries, [list(dict.fromkeys(h.page for h in hits)) for hits in results])


def compare(retriever: Retriever, queries: list[dict], k: int = 5) -> dict:
    """Return {mode: score(...)} for bm25, each embedder, all dense, and the configured hybrid."""
    cands = query_candidates(retriever, queries)
    return {mode: score(retriever, queries, cands, w, k) for mode, w in mode_weights(retriever).items()}


def best_single(retriever: Retriever, queries: list[dict], cands: list[dict], k: int = 5) -> float:
    """recall@k of the best single retriever (BM25 or one embedder) on these queries."""
    singles = [w for m, w in mode_weights(retriever).items() if w is not None and len(w) == 1]
    return max(score(retriever, queries, cands, w, k)["all"]["recall"] for w in singles)


def choose_fusion(parts: list[tuple], grid: dict, rrf_ks=(1, 3, 5, 10, 20, 40, 60), k: int = 5):
    """Pick ({retriever: weight}, rrf_k) for fusing on tuning sets `parts` = [(retriever, queries, candidates)].

    grid: {retriever name: candidate weights}. Rule: among the settings whose
    recall@k is at least the best single retriever's on every part (margin >= 0),
    the highest mean recall@k, then mean MRR; if none qualifies, the largest
    worst-case margin (a single retriever itself always has margin >= 0 when the
    grid holds it alone, so the fallback is never below its best part by much).
    Returns (weights, rrf_k, (qualifies, mean recall or margin, mean MRR)).
    """
    singles = [best_single(r, qs, cands, k) for r, qs, cands in parts]
    names = list(grid)
    best = None
    for combo in itertools.product(*(grid[n] for n in names)):
        if not any(combo):
            continue
        w = dict(zip(names, combo))
        for rk in rrf_ks:
            res = [score(r, qs, cands, w, k, rk)["all"] for r, qs, cands in parts]
            margin = min(x["recall"] - s for x, s in zip(res, singles))
            ok = margin >= -1e-9
            mean_r = sum(x["recall"] for x in res) / len(res)
            key = (ok, mean_r if ok else margin, sum(x["mrr"] for x in res) / len(res))
            if best is None or key > best[0]:
                best = (key, w, rk)
    return best[1], best[2], best[0]
