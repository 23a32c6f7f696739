"""Answer quality with the real models: of a sample of tests/data/retrieval_queries.jsonl (every
third query, 8 per language), how many get an answer, and how many cite the page the query
was written for. The sample is fixed so runs compare; no query in it was used to tune prompts.

Usage: python bench/grounded.py [--no-write]
"""
from __future__ import annotations

import argparse
import json
import time

from common import ROOT, table, update_file

from kbgate.config import load_config
from kbgate.service import load_services


def sample() -> list[dict]:
    rows = [json.loads(line) for line in open(ROOT / "tests" / "data" / "retrieval_queries.jsonl", encoding="utf-8")]
    return [r for lang in ("zh", "en") for r in [x for x in rows if x["lang"] == lang][::3][:8]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    s = load_services(load_config())
    rows, counts = [], {"answer": 0, "troubleshooting": 0, "no_answer": 0, "cited": 0}
    t0 = time.perf_counter()
    for r in sample():
        res = s.pipeline.ask(r["query"], max_new_tokens=80)
        cited = [x.page for x in res.sources if x.cited]
        counts[res.route] += 1
        counts["cited"] += r["page"] in cited
        rows.append((r["query"], r["page"], res.route, "yes" if r["page"] in cited else "no",
                     res.answer.splitlines()[0][:60].replace("|", "/")))
    n = len(rows)
    summary = table([
        ("answered (answer or troubleshooting route)", f"{n - counts['no_answer']}/{n}",
         f"answer {counts['answer']}, troubleshooting {counts['troubleshooting']}, no_answer {counts['no_answer']}"),
        ("the expected page is cited", f"{counts['cited']}/{n}", "the page the query was written for"),
        ("time", f"{time.perf_counter() - t0:.0f} s", "max 80 new tokens per answer"),
    ])
    body = summary + "\n\n" + table(rows, header=("query", "expected page", "route", "cited", "answer (first line)"))
    print(body)
    if not args.no_write:
        update_file("grounded", f"## Grounded answers on retrieval queries (`bench/grounded.py`, "
                                f"{time.strftime('%Y-%m-%d')})\n\n{body}")


if __name__ == "__main__":
    main()
