"""Answer quality with the real models on the frozen answer set (bench/data/answers.jsonl, written
from kb/ by someone who had not read the prompts or the ranking code) and the off-topic set:
frustrated questions reaching troubleshooting with ≥ 2 fix steps from the right page, plain ones
answered from the right page, expected values stated, off-topic questions answered.

Usage: python bench/grounded.py [--split heldout|tune|all] [--url http://host:port] [--max-new-tokens N]
                                [--log verdicts.jsonl] [--from-log verdicts.jsonl] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from common import ROOT, table, update_file

from kbgate.config import load_config
from kbgate.eval import pct, read_jsonl
from kbgate.eval.answers import answers_report, check_rows, http_runner, judge, local_runner, totals

DATA = ROOT / "bench" / "data"
TARGETS = {"frustrated": 0.90, "plain": 0.90, "values": 0.95, "offtopic": 0.05}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="heldout", help="heldout (report), tune, or all")
    ap.add_argument("--url", default=None, help="a running server instead of the in-process pipeline")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="cap per answer [config: answer.max_new_tokens]")
    ap.add_argument("--log", default=None, help="append each verdict to this JSON-lines file as it comes")
    ap.add_argument("--from-log", default=None, help="report a saved --log instead of asking again")
    ap.add_argument("--note", default="", help="a paragraph added under the figures (what limited the run)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    split = None if args.split == "all" else args.split
    rows = []
    for name in ("answers.jsonl", "offtopic.jsonl"):
        part = read_jsonl(DATA / name, {"query": str}, split)
        check_rows(part, DATA / name)
        rows += part
    # interleaved by kind and language, so a run stopped early still covers every group
    rank: dict = {}
    for r in rows:
        group = (r.get("pages") is None, r["kind"], r.get("lang"))
        r["_rank"] = rank[group] = rank.get(group, -1) + 1
    rows.sort(key=lambda r: r["_rank"])
    cfg = load_config()
    engine = f"engine {getattr(cfg.model, 'engine', 'transformers')}, embedder {cfg.embedder.name}"
    cap = f"max {args.max_new_tokens or cfg.answer.max_new_tokens} new tokens"
    t0 = time.perf_counter()
    if args.from_log:
        verdicts = [json.loads(line) for line in open(args.from_log, encoding="utf-8") if line.strip()]
        meta = verdicts.pop(0) if verdicts and "meta" in verdicts[0] else {"meta": ""}
        where, wall = meta["meta"], meta.get("wall_s", 0.0)
        if len(verdicts) < len(rows):
            where += f"; {len(verdicts)} of the {len(rows)} questions answered before the run was stopped"
    else:
        if args.url:
            ask, where = http_runner(args.url), f"through {args.url}/api/search, {cap}"
        else:
            from kbgate.service import load_services
            # quality, not load: on a shared machine [server] deadline_s would cut slow answers short
            cfg = cfg.replace(server={"deadline_s": 3600.0})
            ask, where = local_runner(load_services(cfg), args.max_new_tokens), \
                f"in process (no deadline): {engine}, {cap}"
        log = open(args.log, "a", encoding="utf-8") if args.log else None
        if log:
            log.write(json.dumps({"meta": where}, ensure_ascii=False) + "\n")
        verdicts = []
        for i, r in enumerate(rows, 1):
            verdicts.append(judge(r, ask(r["query"])))
            print(f"{i}/{len(rows)} {verdicts[-1]['id']} {'PASS' if verdicts[-1]['ok'] else 'fail'}", file=sys.stderr)
            if log:
                log.write(json.dumps(verdicts[-1], ensure_ascii=False) + "\n")
                log.flush()
        wall = time.perf_counter() - t0
    res = {"queries": verdicts, "totals": totals(verdicts)}
    t = totals(res["queries"])
    got = {"frustrated": (t["frustrated"]["ok"], t["frustrated"]["n"]), "plain": (t["plain"]["ok"], t["plain"]["n"]),
           "values": (t["values"]["stated"], t["values"]["n"]),
           "offtopic": (t["offtopic"]["answered"], t["offtopic"]["n"])}
    verdict = table([
        ("frustrated: troubleshooting with ≥ 2 fix steps from the right page", pct(*got["frustrated"]), "≥ 90%"),
        ("plain: answered from the right page", pct(*got["plain"]), "≥ 90%"),
        ("expected value stated", pct(*got["values"]), "≥ 95%"),
        ("off-topic answered", pct(*got["offtopic"]), "≤ 5%"),
    ], header=("measure", "result", "target"))
    body = (f"Split `{args.split}` of `bench/data/answers.jsonl` + `bench/data/offtopic.jsonl` "
            f"({len(verdicts)} questions), "
            f"{where}; {wall / 60:.1f} min.\n`kbgate eval answers bench/data/answers.jsonl --split {args.split}` "
            f"gives the same figures per file.\n\n{verdict}\n\n" + (f"{args.note}\n\n" if args.note else "")
            + answers_report(res))
    print(body)
    if not args.no_write:
        name = "grounded" if args.split == "heldout" else f"grounded-{args.split}"
        update_file(name, f"## Answers on the frozen question set, {args.split} (`bench/grounded.py`, "
                          f"{time.strftime('%Y-%m-%d')})\n\n{body}")


if __name__ == "__main__":
    main()
