"""Load-test the search service on loopback: /api/search latency and throughput at 1, 4 and 16 clients.

A bounded Python client (threads + requests): each level sends a fixed number of
requests and stops by itself. Without --url it serves the app in-process through
waitress (as `kbgate serve` does) with the real models and index. Every non-2xx is
counted by status; a 5xx other than 503-with-Retry-After (queue full) is a failure
and makes the exit status 1. The table goes to stdout and into BENCHMARKS.md
between `<!-- bench:service -->` and `<!-- /bench:service -->`.

    python bench/service.py                 # search + sentiment, in-process server
    python bench/service.py --gate-only     # /api/sentiment only (fast), larger counts
    python bench/service.py --url http://127.0.0.1:8080 --no-write
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from common import write_report  # noqa: E402  (puts the repo on sys.path)
QUERIES = ["在家怎么连接公司 VPN？", "How do I reset my password?", "打印机怎么添加？",
           "VPN 又连不上了，烦死了！", "How many days of annual leave do I get?", "报销被驳回了怎么办",
           "Wi-Fi keeps dropping in the office, this is so annoying", "新员工入职第一天要做什么？"]


@dataclass
class Level:
    name: str
    path: str
    requests: int
    clients: int
    latencies: list = field(default_factory=list)  # seconds, 2xx only
    statuses: Counter = field(default_factory=Counter)
    bad: list = field(default_factory=list)  # descriptions of 5xx without Retry-After, or transport errors
    wall: float = 0.0


def body_for(path: str, i: int) -> dict:
    q = QUERIES[i % len(QUERIES)]
    return {"texts": [q]} if path == "/api/sentiment" else {"query": q}


def run_level(base: str, level: Level, timeout: float) -> Level:
    """Send level.requests requests from level.clients threads; record status and latency of each."""
    def one(i: int):
        t0 = time.perf_counter()
        try:
            r = requests.post(base + level.path, json=body_for(level.path, i), timeout=timeout)
        except requests.RequestException as e:
            return "error", time.perf_counter() - t0, f"{type(e).__name__}: {e}"
        return r.status_code, time.perf_counter() - t0, r.headers.get("Retry-After")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=level.clients) as pool:
        for status, secs, extra in pool.map(one, range(level.requests)):
            level.statuses[status] += 1
            if status == "error" or (status >= 500 and not (status == 503 and extra)):
                level.bad.append(f"{status} {extra or ''}".strip())
            elif 200 <= status < 300:
                level.latencies.append(secs)
    level.wall = time.perf_counter() - t0
    return level


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: with few samples, report a real one)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))] if s else float("nan")


def row(lv: Level) -> str:
    ok = len(lv.latencies)
    others = ", ".join(f"{k}×{v}" for k, v in sorted(lv.statuses.items(), key=str) if k != 200) or "none"
    fmt = lambda s: f"{s * 1000:,.0f}" if ok else "–"  # noqa: E731
    return (f"| {lv.name} | {lv.clients} | {lv.requests} | {ok} | {fmt(pct(lv.latencies, 50))} | "
            f"{fmt(pct(lv.latencies, 95))} | {fmt(max(lv.latencies) if ok else 0)} | {ok / lv.wall:.2f} | "
            f"{others} | {len(lv.bad)} |")


def table(levels: list[Level]) -> str:
    head = ("| endpoint | clients | requests | ok | p50 ms | p95 ms | max ms | ok req/s | non-200 | bad 5xx |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    return "\n".join([head] + [row(lv) for lv in levels])


def start_server(index_dir: str | None):
    """Serve the app with the real models in this process; return (server, base URL, notes)."""
    from indexer.embedders import load_embedder
    from indexer.store import build_index
    from indexer.versions import current_version
    from kbgate.config import load_config
    from kbgate.service import load_services
    from web import create_app
    from web.server import serve_in_thread

    cfg = load_config()
    idx = Path(index_dir) if index_dir else cfg.path(cfg.index.dir)
    if current_version(idx) is None:
        idx = Path(tempfile.mkdtemp(prefix="kbgate-bench-index-"))
        print(f"no index in {cfg.index.dir}: building one of kb/ in {idx} ...", file=sys.stderr, flush=True)
        build_index(cfg, cfg.path(cfg.index.kb_dir), idx, load_embedder(cfg), progress=False)
    services = load_services(cfg, idx)
    server, base = serve_in_thread(create_app(cfg, services=services), threads=cfg.server.threads)
    info = services.model_info()
    notes = (f"model {info['name']} on {info['device']} ({info['engine']}, {info['precision']}), "
             f"embedder {info['embedder']}; "
             f"waitress threads={cfg.server.threads}, max_pending={cfg.server.max_pending}, "
             f"max_new_tokens={cfg.answer.max_new_tokens}")
    return server, base, notes, services


def start_tight_server(services, max_pending: int = 2):
    """A second app over the same models with a short job queue and more threads than slots."""
    from kbgate.service import build
    from web import create_app
    from web.server import serve_in_thread

    cfg = services.cfg.replace(server={"max_pending": max_pending})
    return serve_in_thread(create_app(cfg, services=build(cfg, services.engine, services.retriever)), threads=16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="benchmark a running server instead of one started here")
    ap.add_argument("--index", help="index folder for the in-process server (default: config, else built)")
    ap.add_argument("--search", type=int, nargs=3, default=[6, 8, 16], metavar=("SEQ", "C4", "C16"),
                    help="/api/search requests at 1, 4 and 16 clients (real answers take ~20 s each)")
    ap.add_argument("--sentiment", type=int, nargs=3, default=[16, 32, 64], metavar=("SEQ", "C4", "C16"),
                    help="/api/sentiment requests (one text each) at 1, 4 and 16 clients")
    ap.add_argument("--overload", type=int, default=48, metavar="N",
                    help="in-process only: N sentiment requests at 16 clients against a queue of 2 (0 = skip)")
    ap.add_argument("--gate-only", action="store_true", help="only /api/sentiment: minutes faster")
    ap.add_argument("--timeout", type=float, default=1800, help="per-request client timeout, seconds")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" is the point here
    load = os.getloadavg()[0]
    server, notes, services = None, f"server at {args.url}", None
    base = args.url.rstrip("/") if args.url else None
    if base is None:
        server, base, notes, services = start_server(args.index)
    requests.get(base + "/readyz", timeout=30).raise_for_status()
    plan = [] if args.gate_only else [("/api/search", n, c) for n, c in zip(args.search, (1, 4, 16))]
    plan += [("/api/sentiment", n, c) for n, c in zip(args.sentiment, (1, 4, 16))]
    levels = []
    t0 = time.perf_counter()
    try:
        requests.post(base + "/api/sentiment", json={"texts": ["warm-up"]}, timeout=args.timeout)
        for path, n, c in plan:
            print(f"{path}: {n} requests from {c} clients ...", file=sys.stderr, flush=True)
            levels.append(run_level(base, Level(f"`{path}`", path, n, c), args.timeout))
            print(row(levels[-1]), file=sys.stderr, flush=True)
        if services is not None and args.overload:
            tight, tight_base = start_tight_server(services)
            print(f"queue full: {args.overload} /api/sentiment requests from 16 clients, max_pending=2 ...",
                  file=sys.stderr, flush=True)
            try:
                levels.append(run_level(tight_base, Level("`/api/sentiment`, queue of 2", "/api/sentiment",
                                                          args.overload, 16), args.timeout))
            finally:
                tight.close()
            print(row(levels[-1]), file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.close()
    bad = sum(len(lv.bad) for lv in levels)
    text = "\n".join([
        "## Service: `/api/search` and `/api/sentiment` on loopback (`bench/service.py`)", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} with {os.cpu_count()} cores, "
        f"load average {load:.1f} at the start: **a machine shared with other engineers' test runs**, so "
        f"absolute numbers are pessimistic and noisy. {notes}. Total {time.perf_counter() - t0:,.0f} s.", "",
        table(levels), "",
        "Latencies are of successful (200) requests, client side, nearest-rank percentiles (with fewer than 20 "
        "requests p95 is the slowest one). Answers share one "
        "model whose forward passes are serialized, so concurrent clients mostly queue (in waitress's task queue, "
        "as threads = max_pending): throughput stays flat while latency grows with the number of clients. The "
        "'queue of 2' row serves the same models with max_pending=2 and 16 threads, so the queue overflows: "
        "those requests are answered 503 with `Retry-After` at once, as a client should see; "
        f"'bad 5xx' counts anything else in the 5xx range or a dropped connection ({bad} in this run).",
    ])
    write_report("service", text, args.no_write)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
