"""The translated second pass: recall@5 with and without it, per question language, and its cost.

For every set, tune and held-out halves (sets without halves: all), and each direction asked
for ("zh": Chinese questions into English, "en": English questions into Chinese): the
question's own hybrid search, then the pipeline's second pass (kbgate.translate: the
configured model translates, the hits on pages in the other language are fused in). A set
with no page in the target language cannot change (only those hits are fused) and is not
translated. Same retrievers and index cache as bench/retrieval.py; the translation runs on
the configured engine.

    python bench/translate.py [--no-write] [--sets kb-answers,kb] [--languages zh,en]
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
from kbgate.translate import DIRECTIONS, QueryTranslator, fuse_hits, other_language  # noqa: E402

DEFAULT_SETS = ("debian-faq-zh", "debian-faq-zh2en", "kb-answers", "kb", "debian-faq-en", "python-faq-en")


def run_set(r, queries, translator, caller, k: int = 5):
    """(recall/MRR alone, recall/MRR with the second pass, translated count, translation seconds)."""
    alone, fused, secs, used = [], [], [], 0
    for q in queries:
        t = time.perf_counter()
        other = translator.translate(q["query"])
        secs.append(time.perf_counter() - t)
        lists = r.search_many([q["query"]] + ([other] if other else []), k=3 * k, caller=caller)
        alone.append(list(dict.fromkeys(h.page for h in lists[0][:k])))
        hits = fuse_hits([lists[0][:k], other_language(r, lists[1], q["query"])[:k]], k) if other else lists[0][:k]
        fused.append(list(dict.fromkeys(h.page for h in hits)))
        used += bool(other)
    return _summary(queries, alone)["all"], _summary(queries, fused)["all"], used, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(DEFAULT_SETS), help="comma-separated set names")
    ap.add_argument("--languages", default="zh,en", help="question languages to translate (kbgate.translate)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    cfg = load_config()
    langs = [x for x in args.languages.split(",") if x]
    embedder, engine = load_embedder(cfg), load_engine(cfg)
    translator = QueryTranslator(engine, Prompts(prompt_folder(cfg)), langs, cfg.retrieval.translate_max_tokens)
    want, rows, secs_by = args.sets.split(","), [], {lang: [] for lang in langs}
    load0 = os.getloadavg()[0]
    for name, pages, qfile in sets():
        if name not in want:
            continue
        r = retriever_for(cfg, embedder, name, pages)
        caller = authenticated("kbgate-bench") if name.startswith("kb") else None  # kb/: not the restricted pages
        qs, masks = read_queries(qfile), r.lang_masks()
        for lang in langs:
            target = DIRECTIONS[lang][0]
            for split in ("heldout", "tune", None):
                sub = [q for q in qs if q["lang"] == lang and q.get("split") == split]
                if not sub:
                    continue
                half = split or "all"
                if not masks[target].any():  # nothing the second pass may add: the rows are equal by construction
                    a = _summary(sub, [list(dict.fromkeys(h.page for h in hs)) for hs in
                                       r.search_many([q["query"] for q in sub], k=5, caller=caller)])["all"]
                    rows.append((name, lang, half, len(sub), f"{a['recall']:.3f} / {a['mrr']:.3f}",
                                 "(same)", f"— no {target} pages"))
                else:
                    a, b, used, secs = run_set(r, sub, translator, caller)
                    secs_by[lang] += secs
                    rows.append((name, lang, half, len(sub), f"{a['recall']:.3f} / {a['mrr']:.3f}",
                                 f"{b['recall']:.3f} / {b['mrr']:.3f}", f"{used}/{len(sub)}"))
                print(rows[-1], flush=True)
    info = engine.info()
    cost = []
    for lang, secs in secs_by.items():
        if secs:
            p50, p95 = percentiles(secs)
            cost.append(f"{lang} → {DIRECTIONS[lang][0]}: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max "
                        f"{max(secs) * 1000:.0f} ms over {len(secs)} questions")
    text = (f"## Questions also searched in the wiki's other language (`bench/translate.py`, "
            f"{time.strftime('%Y-%m-%d')})\n\n"
            f"recall@5 / MRR of the question's own hybrid search, then with the translated pass fused in "
            f"(kbgate.translate: only that pass's hits on pages in the other language). Translation by {info.model} "
            f"({info.engine}, {info.quantization}): {'; '.join(cost) or 'none run'}; load average {load0:.1f} at the "
            f"start. A set with no page in the target language is not translated (nothing could be fused).\n\n"
            + table(rows, ("set", "question language", "half", "questions", "alone", "with the translated pass",
                           "translated")))
    write_report("translate", text, args.no_write)


if __name__ == "__main__":
    main()
