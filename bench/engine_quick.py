"""Quick in-process engine check: load time, gate p50/p95 (20 calls), decode speed, peak RSS.

Usage: python bench/engine_quick.py [ENGINE ...] [--service] [--write]
  ENGINE   llamacpp, transformers or openai (default: the configured engine); each in a process of its own,
           so each peak RSS is that engine's alone
  --service  register every role's prefix as `kbgate serve` does (gate, answer roles, chat, translate),
           not the gate's alone: the gate then shares the engine with them, as in the service
  --write  put the table into BENCHMARKS.md (section engine-quick); do it only from a quiet machine
The fuller bench/engines.py did not complete a run on the shared machine; BENCHMARKS.md's
"Engines, idle machine" section comes from this script.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from common import ROOT, write_report

QUERIES = ["VPN 又连不上了，烦死了，怎么办啊？？", "How do I book a meeting room for Friday?",
           "打印机卡纸了，气死我了", "报销单被退回了，原因写的是发票抬头不对"]


def measure(engine_name: str | None, service: bool) -> dict:
    """Load one engine and time it (in this process)."""
    from kbgate.config import load_config
    from kbgate.engines import load_engine
    from kbgate.gate import SentimentGate
    from kbgate.prompts import Prompts

    cfg = load_config()
    if engine_name:
        cfg = cfg.replace(model={"engine": engine_name})
    t0 = time.perf_counter()
    engine = load_engine(cfg)
    load_s = time.perf_counter() - t0
    if service:
        from kbgate.service import build

        gate = build(cfg, engine).gate
    else:
        gate = SentimentGate(engine, Prompts(cfg.path(cfg.prompts.dir)), cfg.gate)
    gate.classify(QUERIES[:1])  # warm-up: the first call pays one-off costs
    ms = []
    for q in QUERIES * 5:
        t0 = time.perf_counter()
        gate.classify([q])
        ms.append((time.perf_counter() - t0) * 1000)
    pieces, first = 0, None
    for piece in engine.stream([{"role": "user", "content": "Write a long paragraph about computer networks."}],
                               max_tokens=128):
        if isinstance(piece, str):
            pieces += 1
            first = first or time.perf_counter()
    ms.sort()
    info = engine.info()
    return {"engine": info.engine, "quantization": info.quantization, "load_s": load_s,
            "gate_p50": statistics.median(ms), "gate_p95": ms[int(0.95 * len(ms)) - 1],
            "decode": (pieces - 1) / (time.perf_counter() - first), "pieces": pieces,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def line(r: dict) -> str:
    return (f"engine {r['engine']}: load {r['load_s']:.2f} s; gate p50 {r['gate_p50']:.0f} ms, "
            f"p95 {r['gate_p95']:.0f} ms; decode {r['decode']:.1f} pieces/s over {r['pieces']}; "
            f"peak RSS {r['rss_mb']:.0f} MB")


def report(results: list[dict], service: bool, load: tuple) -> str:
    ref = next((r for r in results if r["engine"] == "transformers"), None)
    head = ["measure"] + [f"{r['engine']} ({r['quantization']})" for r in results]
    rows = [("load", "{:.2f} s", "load_s"), ("gate p50", "{:.0f} ms", "gate_p50"), ("gate p95", "{:.0f} ms", "gate_p95"),
            ("decode", "{:.1f} tok/s", "decode"), ("peak RSS (its process)", "{:,.0f} MB", "rss_mb")]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, fmt, key in rows:
        cells = []
        for r in results:
            cell = fmt.format(r[key])
            if ref is not None and r is not ref:
                cell += f" ({r[key] / ref[key]:.2f}×)"
            cells.append(cell)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    feats = next((w for w in ("avx512_bf16", "avx512f", "avx2") if w in open("/proc/cpuinfo").read()), "none")
    return (f"## Engines, idle machine (`bench/engine_quick.py`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)\n\n"
            f"{os.cpu_count()} cores ({feats}), load average {load[0]:.2f} before and {load[1]:.2f} after. 20 gate "
            f"calls on 4 queries of 15-40 characters after one warm-up call, "
            f"{'every role prefix registered as `kbgate serve` does' if service else 'only the gate prefix registered'}; "
            "then 128 greedy tokens of a free-text reply (decode counts streamed pieces per second, about one "
            "token each). In brackets the ratio to transformers. Each engine in a process of its own.\n\n"
            + "\n".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engines", nargs="*", help="llamacpp, transformers, openai (default: the configured one)")
    ap.add_argument("--service", action="store_true", help="register every role prefix, as kbgate serve does")
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(measure(a.child or None, a.service)))
        return
    load0 = os.getloadavg()[0]
    results = []
    for name in a.engines or [""]:
        cmd = [sys.executable, __file__, "--child", name] + (["--service"] if a.service else [])
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if run.returncode != 0:
            sys.exit(f"engine {name or '(configured)'} failed:\n{run.stderr[-3000:]}")
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(line(results[-1]), flush=True)
    text = report(results, a.service, (load0, os.getloadavg()[0]))
    write_report("engine-quick", text, no_write=not a.write)


if __name__ == "__main__":
    main()
