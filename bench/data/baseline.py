"""Measure recall@5 and MRR per mode on the FAQ sets' tune and held-out halves with the current code.

Builds an index of each set's pages (in a temporary folder) with the configured embedder, then
runs the project's own evaluation (`compare`: dense, bm25, hybrid) on each half.

    .venv/bin/python bench/data/baseline.py [--sets debian-faq-zh python-faq-en] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from indexer.embedders import load_embedder
from indexer.index import load_index
from indexer.store import build_index
from kbgate.config import load_config
from kbgate.retrieval import Retriever

try:  # the evaluation may have moved into kbgate
    from kbgate.eval.retrieval import compare, read_queries
except ImportError:
    from indexer.evaluate import compare, read_queries

HERE = Path(__file__).resolve().parent
SETS = ["debian-faq-zh", "debian-faq-en", "python-faq-en", "debian-faq-zh2en"]


def measure(name: str, cfg, embedder, k: int) -> dict:
    """Return {split: {mode: {"recall", "mrr", "n"}}} for one set."""
    root = HERE / name
    if not (root / "queries.jsonl").exists():
        sys.exit(f"error: {root}/queries.jsonl is missing; run bench/data/build_faq.py first")
    queries = read_queries(root / "queries.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_index(cfg, root / "pages", tmp, embedder, progress=False)
        print(f"{name}: indexed in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        retriever = Retriever(load_index(tmp, embedder), embedder, cfg.retrieval)
        out = {}
        for split in ("tune", "heldout"):
            qs = [q for q in queries if q["split"] == split]
            res = compare(retriever, qs, k=k)
            out[split] = {mode: {"recall": r["all"]["recall"], "mrr": r["all"]["mrr"], "n": len(qs)}
                          for mode, r in res.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=SETS, choices=SETS)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    cfg = load_config()
    embedder = load_embedder(cfg)
    results = {}
    print(f"| set | split | n | dense R@{args.k} | dense MRR | bm25 R@{args.k} | bm25 MRR | hybrid R@{args.k} | hybrid MRR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        results[name] = measure(name, cfg, embedder, args.k)
        for split, modes in results[name].items():
            cells = " | ".join(f"{modes[m]['recall']:.3f} | {modes[m]['mrr']:.3f}" for m in ("dense", "bm25", "hybrid"))
            print(f"| {name} | {split} | {modes['dense']['n']} | {cells} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
