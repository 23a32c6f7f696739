"""Benchmark the sentiment gate: latency per engine (over the cached prefix), throughput, the
cues' added time, accuracy and routing with and without the lexical cues ([gate] cues,
prompts/sentiment.cues.tsv), on the tune sets and the held-out sets apart.

Tune (the prompt and the cue weights were fitted on them): tests/data/sentiment_eval.jsonl and
the tune halves of bench/data/answers.jsonl and offtopic.jsonl. Held out: tests/data/
sentiment_general.jsonl, the held-out halves, tests/data/sentiment_injection.jsonl
(bench/fit_gate_cues.py load_sets). One pass of the real gate per text with the cues on gives
both columns: `Sentiment.model_probs` is exactly what the gate says with the cues off.

Usage: python bench/gate.py [--rounds 20] [--engines llamacpp,transformers] [--threads N] [--offsets] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import time

from common import percentiles, table, update_file
from fit_gate_cues import COMPARE_HEADER, compare_rows, load_sets, scores
from tqdm import tqdm

from kbgate.config import load_config
from kbgate.engines import load_engine
from kbgate.gate import LABELS, SentimentGate
from kbgate.injection import without_instructions
from kbgate.prompts import Prompts, prompt_folder


def latency(gate: SentimentGate, texts: list[str]) -> tuple[float, float]:
    times = []
    for t in texts:
        t0 = time.perf_counter()  # rendering and tokenizing count: the service pays for them too
        gate.classify([t])
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def cue_cost(gate: SentimentGate, texts: list[str], probs: list[dict]) -> tuple[float, float]:
    """p50/p95 in microseconds of what the cues add per text: the features and the combination."""
    times = []
    for t, p in zip(texts, probs):
        t0 = time.perf_counter()
        gate.cues.combine(without_instructions(t), p)
        times.append(time.perf_counter() - t0)
    p50, p95 = percentiles(times)
    return p50 * 1000, p95 * 1000


def confusion(rows, got) -> str:
    conf = {(a, b): 0 for a in LABELS for b in LABELS}
    for r, p in zip(rows, got):
        conf[(r["label"], max(p, key=p.get))] += 1
    return table([(a, *(conf[(a, b)] for b in LABELS)) for a in LABELS], header=("true \\ predicted", *LABELS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="30-character queries timed per setting")
    ap.add_argument("--engines", default="", help="comma-separated engines to time (default: [model] engine); "
                                                  "accuracy is measured on the first")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: [model] threads)")
    ap.add_argument("--offsets", action="store_true", help="also the model alone without the label offsets "
                                                            "(410 more passes)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cfg = load_config()
    cfg = cfg.replace(gate={"cues": True})  # the model-only column comes from model_probs
    if args.threads:
        cfg = cfg.replace(model={"threads": args.threads})
    prompts = Prompts(prompt_folder(cfg))
    sets = load_sets()
    helpdesk = sets["helpdesk"][1]
    thirty = [r["text"] for r in helpdesk if 25 <= len(r["text"]) <= 35][: args.rounds]
    md_rows, gates = [], []
    load0 = os.getloadavg()
    for name in (args.engines or cfg.model.engine).split(","):
        engine = load_engine(cfg.replace(model={"engine": name}))
        info = engine.info()
        gate = SentimentGate(engine, prompts, cfg.gate)
        gate.classify(thirty[:2])  # warm-up
        p50, p95 = latency(gate, thirty)
        md_rows.append((f"gate latency with cues, {name} ({info.quantization}, {info.threads} threads)",
                        f"p50 {p50:.0f} ms, p95 {p95:.0f} ms",
                        f"{len(thirty)} queries of 25-35 chars; cached prefix {gate.prefix_tokens} tokens"))
        gates.append(gate)
    gate = gates[0]
    engine_name = gate.engine.info().engine
    t0 = time.perf_counter()
    got = {}
    for set_name, (_, rows) in sets.items():
        got[set_name] = [gate.classify([r["text"]])[0] for r in tqdm(rows, desc=set_name, unit="text")]
    secs = time.perf_counter() - t0
    n_texts = sum(len(v) for v in got.values())
    md_rows.append((f"throughput ({engine_name})", f"{n_texts / secs:.1f} texts/s", f"{n_texts} texts in {secs:.1f} s"))
    every = [(r["text"], s.model_probs) for k, (_, rows) in sets.items() for r, s in zip(rows, got[k])]
    c50, c95 = cue_cost(gate, [t for t, _ in every], [p for _, p in every])
    md_rows.append(("cues' added time", f"p50 {c50:.0f} µs, p95 {c95:.0f} µs",
                    f"features + combination per text, {len(every)} texts (jieba already loaded)"))
    if args.offsets:
        offsets, gate.offsets = gate.offsets, [0.0] * len(gate.offsets)  # the same prompt without the logit offsets
        for k in ("helpdesk", "general"):
            rows = sets[k][1]
            acc0 = scores(rows, [s.model_probs for s in gate.classify([r["text"] for r in rows])], 2.0)["acc"]
            md_rows.append((f"model alone without the label offsets, {k}", f"{acc0:.1%}", f"n={len(rows)}"))
        gate.offsets = offsets
    load1 = os.getloadavg()
    threshold = cfg.gate.negative_threshold
    cmp_rows = []
    for k, (split, rows) in sets.items():
        before = scores(rows, [s.model_probs for s in got[k]], threshold)
        after = scores(rows, [s.probs for s in got[k]], threshold)
        cmp_rows.append(compare_rows(k, split, before, after))
    thresholds = []
    for split in ("tune", "heldout"):
        rows = [r for k, (sp, rs) in sets.items() if sp == split for r in rs]
        res = [s for k, (sp, _) in sets.items() if sp == split for s in got[k]]
        for t in (0.4, threshold, 0.6):
            b, a = (scores(rows, [getattr(s, f) for s in res], t) for f in ("model_probs", "probs"))
            thresholds.append((split, t, f"{b['neg'][0]}/{b['neg'][1]} → {a['neg'][0]}/{a['neg'][1]}",
                               f"{b['other'][0]}/{b['other'][1]} → {a['other'][0]}/{a['other'][1]}",
                               f"{b['plain'][0]}/{b['plain'][1]} → {a['plain'][0]}/{a['plain'][1]}"))
    matrices = "".join(
        f"\n\nConfusion matrix, {k} set, model alone → with cues ({engine_name}):\n\n"
        + confusion(sets[k][1], [s.model_probs for s in got[k]]) + "\n\n"
        + confusion(sets[k][1], [s.probs for s in got[k]])
        for k in ("helpdesk", "general"))
    weights = ", ".join(f"{f} {w:+.2f}" for f, w in gate.cues.weights.items())
    body = (f"Load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end (2 cores, shared). "
            f"Route = P(negative) ≥ {threshold}. Cue weights (prompts/sentiment.cues.tsv, bench/fit_gate_cues.py, "
            f"fitted on the tune rows only): bias {gate.cues.bias:+.2f}, {weights}.\n\n"
            + table(md_rows) + "\n\nModel alone → with cues (`[gate] cues`), per set:\n\n"
            + table(cmp_rows, header=COMPARE_HEADER) + "\n\nRouting by threshold, model alone → with cues:\n\n"
            + table(thresholds, header=("split", "P(negative) ≥", "negatives routed", "non-negative routed",
                                        "plain questions routed")) + matrices)
    print(body)
    if not args.no_write:
        update_file("gate", f"## Sentiment gate (`bench/gate.py`, {time.strftime('%Y-%m-%d')})\n\n{body}")


if __name__ == "__main__":
    main()
