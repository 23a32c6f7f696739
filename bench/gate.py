"""Benchmark the sentiment gate: latency per engine (over the cached prefix), throughput,
accuracy and confusion matrix on tests/data/sentiment_eval.jsonl, and how the routing
threshold trades negatives caught against plain questions misrouted.

The accuracy is reported on two sets: the helpdesk set the prompt was tuned on, and a
general set (reviews, social posts, news) written later as a check on generalisation.
Both are reported with and without the logit offsets of prompts/sentiment.labels.tsv.

Usage: python bench/gate.py [--rounds 20] [--engines llamacpp,transformers] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import time

from common import ROOT, percentiles, table, update_file

from kbgate.config import load_config
from kbgate.engines import load_engine
from kbgate.gate import LABELS, SentimentGate
from kbgate.prompts import Prompts, prompt_folder

EVAL = ROOT / "tests" / "data" / "sentiment_eval.jsonl"  # helpdesk queries; the prompt was tuned on it
GENERAL = ROOT / "tests" / "data" / "sentiment_general.jsonl"  # reviews, social posts, service messages, news


def latency(gate: SentimentGate, texts: list[str]) -> tuple[float, float]:
    times = []
    for t in texts:
        t0 = time.perf_counter()  # rendering and tokenizing count: the service pays for them too
        gate.classify([t])
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def accuracy(gate: SentimentGate, rows: list[dict]):
    t0 = time.perf_counter()
    res = gate.classify([r["text"] for r in rows])
    secs = time.perf_counter() - t0
    conf = {(a, b): 0 for a in LABELS for b in LABELS}
    for r, s in zip(rows, res):
        conf[(r["label"], s.label)] += 1
    acc = sum(conf[(a, a)] for a in LABELS) / len(rows)
    by_lang = {}
    for lang in ("zh", "en"):
        pairs = [(r, s) for r, s in zip(rows, res) if r["lang"] == lang]
        by_lang[lang] = sum(r["label"] == s.label for r, s in pairs) / max(1, len(pairs))
    return res, acc, conf, by_lang, secs


def load(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def by_kind(rows, res) -> str:
    kinds = sorted({r["kind"] for r in rows})
    return ", ".join(f"{k} {sum(r['label'] == s.label for r, s in zip(rows, res) if r['kind'] == k)}"
                     f"/{sum(r['kind'] == k for r in rows)}" for k in kinds)


def routing(rows, res, threshold: float) -> dict:
    routed = [s.probs["negative"] >= threshold for s in res]
    neg = [x for r, x in zip(rows, routed) if r["label"] == "negative"]
    plain = [x for r, x in zip(rows, routed) if r["kind"] in ("howto", "lookup")]
    other = [x for r, x in zip(rows, routed) if r["label"] != "negative"]
    return {"neg_recall": sum(neg) / len(neg), "howto_routed": sum(plain), "howto_n": len(plain),
            "non_negative_routed": sum(other), "non_negative_n": len(other)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="30-character queries timed per setting")
    ap.add_argument("--engines", default="", help="comma-separated engines to time (default: [model] engine); "
                                                  "accuracy is measured on the first")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cfg = load_config()
    prompts = Prompts(prompt_folder(cfg))
    rows = load(EVAL)
    thirty = [r["text"] for r in rows if 25 <= len(r["text"]) <= 35][: args.rounds]
    md_rows, gates = [], []
    for name in (args.engines or cfg.model.engine).split(","):
        engine = load_engine(cfg.replace(model={"engine": name}))
        info = engine.info()
        gate = SentimentGate(engine, prompts, cfg.gate)
        gate.classify(thirty[:2])  # warm-up
        p50, p95 = latency(gate, thirty)
        md_rows.append((f"gate latency, {name} ({info.quantization}, {info.threads} threads)",
                        f"p50 {p50:.0f} ms, p95 {p95:.0f} ms",
                        f"{len(thirty)} queries of 25-35 chars; cached prefix {gate.prefix_tokens} tokens"))
        gates.append(gate)
    gate = gates[0]
    res, acc, conf, by_lang, secs = accuracy(gate, rows)
    md_rows.append((f"throughput ({gate.engine.info().engine})", f"{len(rows) / secs:.1f} texts/s",
                    f"{len(rows)} texts in {secs:.1f} s"))
    general = load(GENERAL)
    g_res, g_acc, g_conf, g_lang, _ = accuracy(gate, general)
    offsets, gate.offsets = gate.offsets, [0.0] * len(gate.offsets)  # the same prompt without the logit offsets
    _, acc0, _, _, _ = accuracy(gate, rows)
    _, g_acc0, _, _, _ = accuracy(gate, general)
    gate.offsets = offsets
    for name, data, a, lang, a0 in (("helpdesk set (tuned on)", rows, acc, by_lang, acc0),
                                    ("general set (held out)", general, g_acc, g_lang, g_acc0)):
        md_rows.append((f"accuracy, {name}", f"{a:.1%}",
                        f"zh {lang['zh']:.1%}, en {lang['en']:.1%}; n={len(data)}; target 90%; "
                        f"{a0:.1%} without the label offsets"))
    md_rows.append(("per kind, helpdesk set", "", by_kind(rows, res)))
    md_rows.append(("per kind, general set", "", by_kind(general, g_res)))
    for t in (0.4, cfg.gate.negative_threshold, 0.6):
        r = routing(rows, res, t)
        md_rows.append((f"routing at P(negative) ≥ {t}",
                        f"negatives caught {r['neg_recall']:.0%}",
                        f"how-to/lookup misrouted {r['howto_routed']}/{r['howto_n']}, "
                        f"all non-negative misrouted {r['non_negative_routed']}/{r['non_negative_n']}"))
    matrices = "".join(
        f"\n\nConfusion matrix, {name} ({gate.engine.info().engine}):\n\n"
        + table([(a, *(c[(a, b)] for b in LABELS)) for a in LABELS], header=("true \\ predicted", *LABELS))
        for name, c in (("helpdesk set", conf), ("general set", g_conf)))
    body = table(md_rows) + matrices
    print(body)
    if not args.no_write:
        update_file("gate", f"## Sentiment gate (`bench/gate.py`, {time.strftime('%Y-%m-%d')})\n\n{body}")


if __name__ == "__main__":
    main()
