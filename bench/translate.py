"""The translated second pass for Chinese questions: recall@5 with and without it, and its cost.

For every Chinese question of the sets that have them (Debian FAQ zh, Debian FAQ zh
questions on English pages, kb/'s answers set), tune and held-out halves: the question's
own hybrid search, then the pipeline's second pass (kbgate.translate: the configured
model translates, the hits on English pages are fused in). Same retrievers and index
cache as bench/retrieval.py; the translation runs on the configured engine.

    python bench/translate.py [--no-write] [--sets kb-answers,debian-faq-zh2en]
"""
from __future__ import annotations

import argparse
import os
import time

from common import percentiles, table, write_report  # noqa: E402  (puts the repo on sys.path)
from retrieval import retriever_for, sets  # noqa: E402

from indexer.embedders import load_embedder  # noqa: E402
from kbgate.access import authenticated  # noqa: E402
from kbgate.config import load_config  # noqa: E402
from kbgate.engines import load_engine  # noqa: E402
from kbgate.eval.retrieval import _summary, read_queries  # noqa: E402
from kbgate.prompts import Prompts, prompt_folder  # noqa: E402
from kbgate.translate import QueryTranslator, fuse_hits, other_language  # noqa: E402

DEFAULT_SETS = ("debian-faq-zh", "debian-faq-zh2en", "kb-answers")


def run_set(r, queries, translator, caller, k: int = 5):
    """(recall/MRR alone, recall/MRR with the second pass, translated count, translation seconds)."""
    alone, fused, secs, used = [], [], [], 0
    for q in queries:
        t = time.perf_counter()
        english = translator.translate(q["query"])
        secs.append(time.perf_counter() - t)
        lists = r.search_many([q["query"]] + ([english] if english else []), k=3 * k, caller=caller)
        alone.append(list(dict.fromkeys(h.page for h in lists[0][:k])))
        hits = fuse_hits([lists[0][:k], other_language(r, lists[1], q["query"])[:k]], k) if english else lists[0][:k]
        fused.append(list(dict.fromkeys(h.page for h in hits)))
        used += bool(english)
    return _summary(queries, alone)["all"], _summary(queries, fused)["all"], used, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(DEFAULT_SETS), help="comma-separated set names")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    cfg = load_config()
    embedder, engine = load_embedder(cfg), load_engine(cfg)
    translator = QueryTranslator(engine, Prompts(prompt_folder(cfg)), ["zh"], cfg.retrieval.translate_max_tokens)
    want, rows, all_secs = args.sets.split(","), [], []
    load0 = os.getloadavg()[0]
    for name, pages, qfile in sets():
        if name not in want:
            continue
        r = retriever_for(cfg, embedder, name, pages)
        caller = authenticated("kbgate-bench") if name.startswith("kb") else None  # kb/: not the restricted pages
        qs = read_queries(qfile)
        for split in ("heldout", "tune"):
            sub = [q for q in qs if q["lang"] == "zh" and q.get("split") == split]
            if not sub:
                continue
            a, b, used, secs = run_set(r, sub, translator, caller)
            all_secs += secs
            rows.append((name, split, len(sub), f"{a['recall']:.3f} / {a['mrr']:.3f}",
                         f"{b['recall']:.3f} / {b['mrr']:.3f}", f"{used}/{len(sub)}"))
            print(rows[-1], flush=True)
    p50, p95 = percentiles(all_secs)
    info = engine.info()
    text = (f"## Chinese questions also searched in English (`bench/translate.py`, {time.strftime('%Y-%m-%d')})\n\n"
            f"Chinese questions only; recall@5 / MRR of the question's own hybrid search, then with the "
            f"translated pass fused in (kbgate.translate). Translation by {info.model} ({info.engine}, "
            f"{info.quantization}): p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(all_secs) * 1000:.0f} ms over "
            f"{len(all_secs)} questions; load average {load0:.1f} at the start.\n\n"
            + table(rows, ("set", "half", "questions", "alone", "with the English pass", "translated")))
    write_report("translate", text, args.no_write)


if __name__ == "__main__":
    main()
