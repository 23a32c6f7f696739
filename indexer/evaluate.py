"""Measure retrieval on a labelled query set: recall@k per language for dense, BM25 and hybrid.

A query set is JSON lines `{"query", "page", "lang"}`; a query counts as found
when its page is among the pages of the top k hits. "dense" and "bm25" are the
same `Retriever` with the other side's fusion weights set to 0, so all three
share candidates, deduplication and tie-breaking.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kbgate.retrieval import Retriever

MODES = {
    "dense": {"bm25_weight_native": 0.0, "bm25_weight_foreign": 0.0,
              "dense_weight_native": 1.0, "dense_weight_foreign": 1.0},
    "bm25": {"dense_weight_native": 0.0, "dense_weight_foreign": 0.0,
             "bm25_weight_native": 1.0, "bm25_weight_foreign": 1.0},
    "hybrid": {},
}


def read_queries(path: str | Path) -> list[dict]:
    """Read a JSON-lines query set."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mode_retriever(retriever: Retriever, mode: str) -> Retriever:
    """Return a retriever over the same index and embedder restricted to one side ("dense", "bm25") or both."""
    return Retriever(retriever.index, retriever.embedder, dataclasses.replace(retriever.cfg, **MODES[mode]))


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def recall_at_k(retriever: Retriever, queries: list[dict], k: int = 5) -> dict:
    """Return {lang or "all": {"recall": recall@k, "mrr": MRR@k, "r1": recall@1}, "misses": [...]}.

    misses: (query, expected page, pages returned) for each query whose page is not in the top k.
    """
    results = retriever.search_many([q["query"] for q in queries], k)
    ranks: dict[str, list[int | None]] = {}
    misses = []
    for q, hits in zip(queries, results):
        pages = [h.page for h in hits]
        rank = pages.index(q["page"]) + 1 if q["page"] in pages else None
        ranks.setdefault(q.get("lang", "all"), []).append(rank)
        if rank is None:
            misses.append((q["query"], q["page"], pages))
    ranks["all"] = [r for lang in sorted(ranks) for r in ranks[lang]]
    out: dict = {lang: {"recall": _mean([r is not None for r in rs]),
                        "mrr": _mean([1 / r if r else 0.0 for r in rs]),
                        "r1": _mean([r == 1 for r in rs])} for lang, rs in ranks.items()}
    out["misses"] = misses
    return out


def compare(retriever: Retriever, queries: list[dict], k: int = 5) -> dict:
    """Return {mode: recall_at_k(...)} for dense, bm25 and hybrid."""
    return {mode: recall_at_k(mode_retriever(retriever, mode), queries, k) for mode in MODES}
