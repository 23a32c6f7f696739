"""Run latency-bound work (one query) on fewer OpenMP threads, without touching anyone else's setting.

FAISS and torch share one OpenMP runtime, and its thread count is per calling
thread. One query is too small to gain from fan-out, and on a busy CPU the
spinning OpenMP workers collapse: measured on this 2-core box under load,
MiniLM on one query took 434 ms p50 with 2 threads and 25 ms with 1; an exact
FAISS search over 100k chunks 96 ms with 2 threads and 17 ms with 1.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def omp_threads(n: int):
    """Run the block with n OpenMP threads in this thread (0 = unchanged), then restore the old count."""
    if n <= 0:
        yield
        return
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
