"""Hot reload under load: clients on /api/search while `kbgate index` publishes new versions.

Copies kb/ and the published index version (`[index] dir`) into a temporary folder (brought up
to date there first), serves the app in-process through waitress with the configured embedders
and hot reload on (`--check-s`, default `[index] reload_check_s`), and keeps `--clients` clients
on /api/search and one poller on /readyz. After a warm-up it adds a new page and runs `kbgate
index` as its own process (the real CLI; it loads its own embedders, as an operator's run
does), `--publishes` times. The language model is the scripted
fake engine of tests/fake_engine.py unless --real-engine: a swap touches retrieval only, and the
0.5B model's ~20 s answers would hide it.

Reported: requests, errors (any non-200 or dropped connection), latency p50/p95/max before any
publish, while `kbgate index` runs beside the service, and of requests in flight during a swap
(from the publish, CURRENT's mtime, to /readyz naming the version + 0.5 s), publish -> served
per publish, the background load and warm-up time, and whether a search finds the new page.
The table goes to stdout and into BENCHMARKS.md between `<!-- bench:reload -->` and
`<!-- /bench:reload -->`; exit status 1 on any error or a version never served.

    python bench/reload.py                      # 4 clients, 2 publishes
    python bench/reload.py --publishes 3 --no-write
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from common import ROOT, table, write_report  # noqa: E402  (puts the repo on sys.path)
from service import QUERIES


def prepare(cfg, embedder, work: Path) -> tuple[Path, Path]:
    """kb/ and the published version copied under work, brought up to date: (kb copy, index copy)."""
    from indexer.store import build_index
    from indexer.versions import current_version, publish

    kb, index = work / "kb", work / "index"
    shutil.copytree(cfg.path(cfg.index.kb_dir), kb)
    index.mkdir()
    src = cfg.path(cfg.index.dir)
    name = current_version(src)
    if name:
        shutil.copytree(src / name, index / name)
        publish(index, name)
    print(f"bringing the index copy up to date in {index} ...", file=sys.stderr, flush=True)
    print(build_index(cfg, kb, index, embedder, progress=True).describe(), file=sys.stderr, flush=True)
    return kb, index


def start(cfg, index: Path, check_s: float, real_engine: bool):
    from kbgate.service import build, load_retriever, load_services
    from web import create_app
    from web.server import serve_in_thread

    if real_engine:
        services = load_services(cfg, index)
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from fake_engine import FakeEngine
        services = build(cfg, FakeEngine("See the wiki [1]."), load_retriever(cfg, index))
    services.watch_index(check_s)
    server, base = serve_in_thread(create_app(cfg, services=services), threads=cfg.server.threads)
    return services, server, base


class Clients:
    """`n` clients looping on /api/search and a /readyz poller; times are time.time() (CURRENT's mtime clock)."""

    def __init__(self, base: str, n: int):
        self.base, self.n = base, n
        self.results: list[tuple[float, float, object]] = []  # (start, end, status or error)
        self.seen: dict[str, float] = {}  # version -> when /readyz first named it
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(n)]
        self.threads.append(threading.Thread(target=self.poll, daemon=True))
        for t in self.threads:
            t.start()

    def client(self, i: int) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            t0 = time.time()
            try:
                status = session.post(self.base + "/api/search", json={"query": QUERIES[i % len(QUERIES)]},
                                      timeout=600).status_code
            except requests.RequestException as e:
                status = f"{type(e).__name__}: {str(e)[:100]}"
            self.results.append((t0, time.time(), status))
            i += self.n

    def poll(self) -> None:
        session = requests.Session()
        while not self.stop.wait(0.02):
            try:
                v = session.get(self.base + "/readyz", timeout=30).json()["index"]["version"]
            except (requests.RequestException, KeyError, ValueError):
                continue
            self.seen.setdefault(v, time.time())

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def publish_once(config: Path, kb: Path, index: Path, i: int) -> tuple[str, float, float, float, str]:
    """Add a new page, run `kbgate index`: (version, index start, publish time (CURRENT's mtime), wall s, page id)."""
    from indexer.versions import POINTER, current_version

    page = f"ops/reload-check-{i}"
    (kb / "ops").mkdir(exist_ok=True)
    (kb / f"{page}.md").write_text(f"# Watering the office quokka ({i})\n\n## Steps\n\nWater the office quokka "
                                   f"every Tuesday with the blue can {i}.\n", encoding="utf-8")
    t0, start = time.perf_counter(), time.time()
    r = subprocess.run([sys.executable, "-m", "kbgate.cli", "--config", str(config), "index", "--kb", str(kb),
                        "--index", str(index), "-q"], capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"kbgate index failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    print(f"  kbgate index: {r.stdout.strip()}", file=sys.stderr, flush=True)
    return current_version(index), start, os.stat(index / POINTER).st_mtime, took, page


def ms(xs) -> str:
    if not xs:
        return "–"
    a = np.array(xs) * 1000
    return f"{np.percentile(a, 50):.0f} / {np.percentile(a, 95):.0f} / {a.max():.0f}"


def main(argv=None) -> int:
    from indexer.embedders import load_embedder
    from kbgate.config import load_config
    from web.server import stop

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4, help="concurrent /api/search clients")
    ap.add_argument("--publishes", type=int, default=2, help="versions `kbgate index` publishes under load")
    ap.add_argument("--check-s", type=float, default=None, help="reload check interval [config: index.reload_check_s]")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the first publish")
    ap.add_argument("--real-engine", action="store_true", help="the configured language model, not the fake one")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)

    cfg = load_config()
    check_s = cfg.index.reload_check_s if args.check_s is None else args.check_s
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="kbgate-bench-reload-"))
    try:
        kb, index = prepare(cfg, load_embedder(cfg), work)
        services, server, base = start(cfg, index, check_s, args.real_engine)
        logging.getLogger("kbgate.requests").setLevel(logging.WARNING)  # its JSON line per request: counted here
        pages = sorted(kb.rglob("*.md"))
        for q in QUERIES:  # the served version's lazy tables and the query embedders, before anything is timed
            requests.post(base + "/api/search", json={"query": q}, timeout=600).raise_for_status()
        clients = Clients(base, args.clients)
        pubs, found = [], []
        try:
            time.sleep(args.warmup)
            for i in range(args.publishes):
                print(f"publish {i + 1}: a new page, `kbgate index` ...", file=sys.stderr, flush=True)
                version, started, at, took, page = publish_once(ROOT / "config.toml", kb, index, i)
                deadline = time.time() + 60
                while version not in clients.seen and time.time() < deadline:
                    time.sleep(0.02)
                served = clients.seen.get(version)
                last = (services.reloader.last if services.reloader else None)
                pubs.append((version, started, at, served, took, last.seconds if last and last.version == version
                             else None))
                body = requests.post(base + "/api/search", json={"query": f"how often do I water the office quokka "
                                                                          f"with the blue can {i}?"}, timeout=600).json()
                found.append(page in [s["page"] for s in body["sources"] + body["suggestions"]])
                time.sleep(2.0)
        finally:
            clients.close()
            stop(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    t_first = pubs[0][1] if pubs else float("inf")
    indexing = [(started, at) for _, started, at, _, _, _ in pubs]  # `kbgate index` running, old version served
    swaps = [(at, (served or at + 60) + 0.5) for _, _, at, served, _, _ in pubs]
    ok = [(s, e) for s, e, st in clients.results if st == 200]

    def overlaps(s, e, spans):
        return any(s < b and e > a for a, b in spans)
    before = [e - s for s, e in ok if e < t_first]
    during_index = [e - s for s, e in ok if overlaps(s, e, indexing) and not overlaps(s, e, swaps)]
    during_swap = [e - s for s, e in ok if overlaps(s, e, swaps)]
    errors = [st for _, _, st in clients.results if st != 200]
    rows = [("requests (all clients)", f"{len(clients.results)}", f"{args.clients} clients on /api/search, "
             f"{args.publishes} publishes, check every {check_s:g} s"),
            ("errors (non-200, dropped)", f"{len(errors)}", ", ".join(sorted({str(e) for e in errors}))[:200] or "–"),
            ("latency before any publish, p50 / p95 / max ms", ms(before), f"{len(before)} requests"),
            ("latency while `kbgate index` runs beside, p50 / p95 / max ms", ms(during_index),
             f"{len(during_index)} requests (the build's own process loads the embedders and embeds)"),
            ("latency in flight during a swap, p50 / p95 / max ms", ms(during_swap),
             f"{len(during_swap)} requests overlapping publish → served + 0.5 s")]
    for n, (version, started, at, served, took, loaded) in enumerate(pubs, 1):
        rows.append((f"publish {n}: publish → served", f"{served - at:.2f} s" if served else "never",
                     f"`kbgate index` (a new page, own process) {took:.1f} s; background load + warm-up "
                     + (f"{loaded:.2f} s" if loaded is not None else "–")
                     + f"; the new page found by a search: {'yes' if found[n - 1] else 'no'}"))
    engine = "the configured engine" if args.real_engine else "the fake engine (retrieval is real)"
    text = "\n".join([
        "## Index hot reload under load (`bench/reload.py`)", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, load average {load:.1f} at the start (a shared machine). "
        f"kb/ ({len(pages)} pages) with the configured embedders ({cfg.embedder.name}"
        f"{' + ' + ', '.join(cfg.embedder.extra) if cfg.embedder.extra else ''}), {engine}, waitress in process.", "",
        table(rows), "",
        "A publish is CURRENT's mtime (written by `kbgate index` when the version is complete); served is the first "
        "/readyz naming it (polled every 20 ms). It includes up to one check interval, the load of the version "
        "beside the served one and one warm-up search on it; the swap itself is one reference assignment. Latencies are "
        "client-side and dominated by sharing 2 cores (4 clients, two query embedders, and other work on the "
        "machine): compare the rows with each other, not with an idle machine.",
    ])
    write_report("reload", text, args.no_write)
    return 1 if errors or any(p[3] is None for p in pubs) else 0


if __name__ == "__main__":
    sys.exit(main())
