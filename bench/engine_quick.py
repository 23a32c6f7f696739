"""Quick in-process engine check: load time, gate p50/p95 (20 calls), decode speed, peak RSS.

Usage: python bench/engine_quick.py [llamacpp|transformers|openai] (default: the configured engine).
The fuller bench/engines.py did not complete a run on the shared machine; BENCHMARKS.md's
"Engines, idle machine" section comes from this script.
"""
import resource
import statistics
import sys
import time

from common import ROOT  # noqa: F401  (puts the repository on sys.path)

from kbgate.config import load_config
from kbgate.engines import load_engine
from kbgate.gate import SentimentGate
from kbgate.prompts import Prompts

QUERIES = ["VPN 又连不上了，烦死了，怎么办啊？？", "How do I book a meeting room for Friday?",
           "打印机卡纸了，气死我了", "报销单被退回了，原因写的是发票抬头不对"]


def main() -> None:
    cfg = load_config()
    if len(sys.argv) > 1:
        cfg = cfg.replace(model={"engine": sys.argv[1]})
    t0 = time.perf_counter()
    engine = load_engine(cfg)
    load_s = time.perf_counter() - t0
    gate = SentimentGate(engine, Prompts(cfg.path(cfg.prompts.dir)), cfg.gate)
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
    decode = (pieces - 1) / (time.perf_counter() - first)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"engine {engine.info().engine}: load {load_s:.2f} s; gate p50 {statistics.median(ms):.0f} ms, "
          f"p95 {sorted(ms)[int(0.95 * len(ms)) - 1]:.0f} ms; decode {decode:.1f} pieces/s over {pieces}; "
          f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
