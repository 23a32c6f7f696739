"""Shared by the benchmark scripts: machine description, percentiles, BENCHMARKS.md sections."""
from __future__ import annotations

import os
import platform
import re
import resource
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_FILE = ROOT / "BENCHMARKS.md"
M_START, M_END = "<!-- bench:machine -->", "<!-- /bench:machine -->"


def machine() -> str:
    """Describe the machine in one line of markdown."""
    import torch
    try:
        import faiss
        faiss_v = faiss.__version__
    except ImportError:
        faiss_v = "?"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return (f"Machine: {cpu}, {os.cpu_count()} cores, {mem / 2**20:.0f} GiB RAM, no GPU; Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"faiss {faiss_v}.")


def percentiles(seconds) -> tuple[float, float]:
    """(p50, p95) in milliseconds of a list of durations in seconds."""
    return float(np.percentile(seconds, 50) * 1000), float(np.percentile(seconds, 95) * 1000)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(rows, header=("measure", "result", "notes")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, text: str, no_write: bool = False) -> None:
    """Print a benchmark's table and, unless `no_write`, put it into BENCHMARKS.md as section `name`."""
    print("\n" + text)
    if not no_write:
        update_file(name, text)
        print(f"\nwritten to {BENCH_FILE}", file=sys.stderr)


def update_file(name: str, section: str) -> None:
    """Replace (or append) the section `name` (markdown, with its own heading) and refresh the
    machine line; other sections stay."""
    text = BENCH_FILE.read_text(encoding="utf-8") if BENCH_FILE.exists() else "# Benchmarks\n"
    head = f"{M_START}\n{machine()}\n{M_END}"
    if M_START in text:
        text = re.sub(re.escape(M_START) + r".*?" + re.escape(M_END), lambda _: head, text, flags=re.S)
    else:
        first, _, rest = text.partition("\n")
        text = f"{first}\n\n{head}\n{rest}" if first.startswith("# ") else f"{head}\n\n{text}"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{section.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    BENCH_FILE.write_text(text, encoding="utf-8")
