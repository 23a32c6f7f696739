"""Load the running service past what it can answer and check that it sheds instead of stalling.

Starts `kbgate serve` as its own process (the default engine and config, or --url for one
already running), then for a fixed time keeps N clients busy on an endpoint: 16 clients for
60 s on /api/sentiment, then 8 for 90 s on /api/search. A client that is refused waits
`BACKOFF_S` before it asks again (real clients honour Retry-After; this keeps the pressure on).
Counted per phase: 2xx, 503, 429, other 5xx, transport errors, refusals without Retry-After,
p50/p95/max of the admitted (2xx) requests, and the service's RSS (idle, and the most that
/proc/<pid>/status VmRSS showed during the phase, sampled every 0.2 s). The table goes to stdout and into BENCHMARKS.md between
`<!-- bench:load -->` and `<!-- /bench:load -->`. Exit status 1 on any 5xx other than 503
with Retry-After, a refusal without Retry-After, or a transport error.

    python bench/load.py                       # the full run (about 2.5 minutes of load)
    python bench/load.py --seconds 15          # both phases 15 s: a quick check
    python bench/load.py --url http://127.0.0.1:8080 --no-write
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from common import ROOT, percentiles, table, write_report  # noqa: E402  (puts the repo on sys.path)
from service import QUERIES  # the same mixed zh/en, frustrated/plain queries as bench/service.py

BACKOFF_S = 0.5
PHASES = [("/api/sentiment", 16, 60.0), ("/api/search", 8, 90.0)]  # (path, clients, seconds)


@dataclass
class Phase:
    path: str
    clients: int
    seconds: float
    latencies: list = field(default_factory=list)  # seconds, 2xx only
    statuses: Counter = field(default_factory=Counter)  # "2xx", 503, 429, "5xx", "error", other 4xx codes
    no_retry_after: int = 0  # refusals (503/429) without a Retry-After header
    errors: list = field(default_factory=list)
    peak_rss_mb: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def body_for(path: str, i: int) -> dict:
    q = QUERIES[i % len(QUERIES)]
    return {"texts": [q]} if path == "/api/sentiment" else {"query": q}


def client_loop(base: str, ph: Phase, n: int, stop_at: float, timeout: float) -> None:
    """One client: ask, record, ask again until the phase ends (a request in flight then still counts)."""
    i, session = n, requests.Session()
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            r = session.post(base + ph.path, json=body_for(ph.path, i), timeout=timeout)
            status, retry = r.status_code, r.headers.get("Retry-After")
        except requests.RequestException as e:
            status, retry = "error", None
            ph.errors.append(f"{type(e).__name__}: {str(e)[:120]}")
        took = time.perf_counter() - t0
        i += ph.clients
        with ph.lock:
            if status == "error":
                ph.statuses["error"] += 1
            elif 200 <= status < 300:
                ph.statuses["2xx"] += 1
                ph.latencies.append(took)
            elif status in (503, 429):
                ph.statuses[status] += 1
                ph.no_retry_after += not retry
            else:
                ph.statuses["5xx" if status >= 500 else status] += 1
        if status != "error" and not 200 <= status < 300:
            time.sleep(BACKOFF_S)


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak so far (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_phase(base: str, ph: Phase, timeout: float, pid: int | None) -> Phase:
    stop_at = time.monotonic() + ph.seconds
    threads = [threading.Thread(target=client_loop, args=(base, ph, n, stop_at, timeout), daemon=True)
               for n in range(ph.clients)]
    done = threading.Event()

    def sample():  # VmHWM would also hold the start-up peak (loading the model): sample the phase itself
        while not done.wait(0.2):
            ph.peak_rss_mb = max(ph.peak_rss_mb, rss_mb(pid))
    if pid:
        threading.Thread(target=sample, daemon=True).start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    return ph


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(index: str | None, ready_timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """`kbgate serve` in its own process (so its RSS is its own); wait until /readyz is 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "kbgate.cli", "serve", "--port", str(port)] + (["--index", index] if index else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain its log
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kbgate serve exited with status {proc.returncode} before it was ready")
        try:
            if requests.get(base + "/readyz", timeout=5).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        time.sleep(1)
    proc.kill()
    raise SystemExit(f"kbgate serve was not ready within {ready_timeout:.0f} s")


def wait_ready(base: str, proc: subprocess.Popen, limit: float) -> float | None:
    """Seconds until /readyz answers 200 (None if not within `limit` or the process died)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and proc.poll() is None:
        try:
            if requests.get(base + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return None


def kill_mid_answer(index: str | None) -> list:
    """kill -9 the service while it answers a search, start it again: how long until /readyz is 200."""
    proc, base = start_service(index)
    port = base.rsplit(":", 1)[1]
    def ask():
        try:
            requests.post(base + "/api/search", json={"query": QUERIES[3]}, timeout=60)
        except requests.RequestException:  # the kill cuts it off: that is the point
            pass
    threading.Thread(target=ask, daemon=True).start()
    time.sleep(2.0)  # the gate has run and the answer is decoding
    proc.kill()
    proc.wait(30)
    cmd = [sys.executable, "-m", "kbgate.cli", "serve", "--port", port] + (["--index", index] if index else [])
    t0 = time.monotonic()
    again = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        took = wait_ready(base, again, 120)
        ok = took is not None and requests.post(base + "/api/sentiment", json={"texts": ["ok"]},
                                                timeout=60).status_code == 200
    finally:
        again.terminate()
        again.wait(30)
    spawn = time.monotonic() - t0
    verdict = "**no: not ready in 120 s**" if took is None else ("yes" if took <= 10 else f"**no ({took:.1f} s)**")
    return ["kill -9 mid-answer, restart: /readyz 200", f"{took:.1f} s" if took else "–",
            f"≤ 10 s: {verdict}; a sentiment request then {'200' if ok else 'failed'} ({spawn:.1f} s in all)"]


def row(ph: Phase, deadline_s: float | None) -> list:
    p50, p95 = percentiles(ph.latencies) if ph.latencies else (float("nan"),) * 2
    s = ph.statuses
    refusals = s[503] + s[429]
    within = "–" if deadline_s is None or not ph.latencies else ("yes" if p95 <= deadline_s * 1000 else "**no**")
    return [f"`{ph.path}`", ph.clients, f"{ph.seconds:.0f}", s["2xx"], s[503], s[429], s["5xx"], s["error"],
            f"{refusals - ph.no_retry_after}/{refusals}", f"{p50:,.0f}", f"{p95:,.0f}",
            f"{max(ph.latencies) * 1000:,.0f}" if ph.latencies else "–", within,
            f"{ph.peak_rss_mb:,.0f}" if ph.peak_rss_mb else "–"]


HEADER = ("endpoint", "clients", "s", "2xx", "503", "429", "other 5xx", "errors", "Retry-After on refusals",
          "p50 ms", "p95 ms", "max ms", "p95 ≤ deadline", "peak RSS MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="load a running server instead of starting `kbgate serve` here (no RSS then)")
    ap.add_argument("--index", help="index folder for the started server (default: config; built if missing)")
    ap.add_argument("--seconds", type=float, help="length of every phase (default: 60 s sentiment, 90 s search)")
    ap.add_argument("--timeout", type=float, default=300, help="client timeout per request, seconds")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    ap.add_argument("--no-faults", action="store_true", help="skip kill -9 mid-answer and the restart")
    args = ap.parse_args(argv)

    from kbgate.config import load_config
    cfg = load_config()
    proc, base = (None, args.url.rstrip("/")) if args.url else start_service(args.index)
    load = os.getloadavg()[0]
    try:
        ready = requests.get(base + "/readyz", timeout=30).json()
        requests.post(base + "/api/sentiment", json={"texts": ["warm-up"]}, timeout=args.timeout)
        requests.post(base + "/api/search", json={"query": QUERIES[0]}, timeout=args.timeout)
        idle = rss_mb(proc.pid) if proc else None
        phases = []
        for path, clients, seconds in PHASES:
            ph = Phase(path, clients, args.seconds or seconds)
            print(f"{path}: {clients} clients for {ph.seconds:.0f} s ...", file=sys.stderr, flush=True)
            phases.append(run_phase(base, ph, args.timeout, proc.pid if proc else None))
            print(" | ".join(str(c) for c in row(ph, cfg.server.deadline_s)), file=sys.stderr, flush=True)
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
    faults = [] if args.url or args.no_faults else [kill_mid_answer(args.index)]
    bad = sum(ph.statuses["5xx"] + ph.statuses["error"] + ph.no_retry_after for ph in phases)
    peak = max((ph.peak_rss_mb for ph in phases), default=0.0)
    m, s = ready["model"], cfg.server
    rss = (f"Service RSS idle {idle:,.0f} MB (after one warm-up search), peak {peak:,.0f} MB under load: "
           f"{peak / idle:.2f}x idle (target ≤ 1.3x)." if idle else "RSS not measured (--url).")
    text = "\n".join([
        "## Load: shedding under overload (`bench/load.py`)", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average {load:.1f} at the start "
        f"(a shared machine: absolute latencies are pessimistic). `kbgate serve` with model {m['name']} "
        f"({m['engine']}, {m['precision']}), embedder {m['embedder']}; engine_slots={s.engine_slots}, "
        f"max_pending={s.max_pending}, deadline_s={s.deadline_s:g}; a refused client waits {BACKOFF_S} s before "
        f"it asks again." + ("" if not args.seconds else f" **Short run: {args.seconds:g} s per phase** "
                             "(the full run is 60 s sentiment, 90 s search)."), "",
        table([row(ph, s.deadline_s) for ph in phases], HEADER), "",
        f"{rss} Latencies are client side, of admitted (2xx) requests only. 'errors' are dropped connections "
        f"or client timeouts ({args.timeout:g} s); 'other 5xx' anything but 503 ({bad} bad in all).",
    ] + (["", table(faults, ("fault", "result", "notes"))] if faults else []))
    write_report("load", text, args.no_write)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
