"""Benchmark the answer route end to end with the real models: gate, retrieval, time to
first token, decode tokens/s, total answer time, and peak RSS with both models loaded.

Usage: python bench/answer.py [--no-write]
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import peak_rss_mb, table, update_file

from kbgate.grounding import count_steps
from kbgate.config import load_config
from kbgate.service import load_services

QUERIES = [
    "在家怎么连公司内网？",
    "年假有多少天？",
    "报销打车费需要什么票据",
    "How do I book a meeting room?",
    "how long do I have to submit an expense claim",
    "What should I do when a deploy fails?",
    # frustrated: the troubleshooting route
    "VPN 又连不上了，烦死了！",
    "打印机又卡纸了，气死我了",
    "重置密码根本不管用！邮件一直收不到",
    "Outlook keeps asking for my password, so annoying",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cfg = load_config()
    t0 = time.perf_counter()
    s = load_services(cfg)
    load_s = time.perf_counter() - t0
    s.pipeline.ask("warm up: VPN")
    rows, trouble = [], []
    stats = {"gate": [], "retrieval": [], "first_token": [], "total": [], "tps": [], "prompt": []}
    for q in QUERIES:
        t_first, n_tokens = None, 0
        for kind, data in s.pipeline.ask(q, stream=True):
            if kind == "token":
                n_tokens += 1
                t_first = t_first or time.perf_counter()
            elif kind == "done":
                r = data
        t_end = time.perf_counter()
        tm = r.timings_ms
        tps = (n_tokens - 1) / (t_end - t_first) if t_first and n_tokens > 1 else float("nan")
        for key in ("gate", "retrieval", "total"):
            stats[key].append(tm[key])
        if tm.get("first_token"):
            stats["first_token"].append(tm["first_token"])
            stats["tps"].append(tps)
        steps = count_steps(r.answer)
        if r.route == "troubleshooting":
            trouble.append(("quoted" if "quoted" in r.reason else "model") if steps >= 2 else "none")
        by = f"{steps} ({trouble[-1]})" if r.route == "troubleshooting" else "-"
        rows.append((q, r.route, r.sentiment["label"], by, f"{tm['gate']:.0f}", f"{tm['retrieval']:.0f}",
                     f"{tm['first_token']:.0f}" if tm.get("first_token") else "-",
                     f"{tps:.1f}" if tps == tps else "-", f"{tm['total'] / 1000:.1f} s",
                     ", ".join(f"[{x.n}] {x.page}" for x in r.sources if x.cited) or "-"))
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    summary = table([
        ("gate p50", f"{med(stats['gate']):.0f} ms", "in the pipeline, bfloat16, cached prefix"),
        ("retrieval p50", f"{med(stats['retrieval']):.0f} ms", "hybrid dense + BM25 over kb/"),
        ("time to first answer token p50", f"{med(stats['first_token']):.0f} ms",
         f"{cfg.answer.passages} passages of ≤ {cfg.answer.passage_tokens} tokens; target < 2,000 ms"),
        ("decode", f"{med(stats['tps']):.1f} tokens/s", "greedy, one sequence"),
        ("end-to-end answer p50", f"{med(stats['total']) / 1000:.1f} s", f"max {cfg.answer.max_new_tokens} new tokens"),
        ("troubleshooting replies with ≥ 2 cited steps",
         f"{sum(t != 'none' for t in trouble)}/{len(trouble)}",
         f"model's own steps {trouble.count('model')}, the wiki's steps quoted {trouble.count('quoted')}"),
        ("load time", f"{load_s:.1f} s", "Qwen + MiniLM + index, from the provisioned folder"),
        ("peak RSS", f"{peak_rss_mb():.0f} MB", "both models loaded, after the runs; target < 2,500 MB"),
    ])
    detail = table(rows, header=("query", "route", "label", "steps (by)", "gate ms", "retrieval ms", "first token ms",
                                 "tokens/s", "total", "cited"))
    body = summary + "\n\n" + detail
    print(body)
    if not args.no_write:
        update_file("answer", f"## Answer route (`bench/answer.py`, {time.strftime('%Y-%m-%d')})\n\n{body}")


if __name__ == "__main__":
    main()
