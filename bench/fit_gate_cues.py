"""Fit the gate's cue model (prompts/sentiment.cues.tsv) on the tune data; report it on held-out sets.

  collect  run the real gate once (cues off) over every text of every set below and cache each
           text's model label probabilities (JSON; minutes on 2 cores)
  fit      from that cache: choose the L2 strength by 10-fold CV on the tune rows only, report the
           CV against the model alone, fit on all tune rows, write the cues file (--no-write: don't)
  report   the shipped cues file against the model alone on every set, tune and held-out apart

Tune: tests/data/sentiment_eval.jsonl (the helpdesk set the prompt was tuned on) and the tune halves
of bench/data/answers.jsonl and offtopic.jsonl (frustrated = negative, plain = neutral). Held-out:
tests/data/sentiment_general.jsonl, the held-out halves, tests/data/sentiment_injection.jsonl.

Usage: python bench/fit_gate_cues.py collect|fit|report [--cache F] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from common import ROOT, table

from kbgate.gate_cues import FEATURES, CueModel, features, parse_cues
from kbgate.injection import without_instructions

DATA = ROOT / "tests" / "data"
CACHE = ROOT / ".cache" / "gate_model_probs.json"
CUES = ROOT / "prompts" / "sentiment.cues.tsv"
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # L2 on standardised weights, the log-loss summed
PLAIN_KINDS = ("howto", "lookup", "plain", "question")  # a plain question sent to troubleshooting is the bad failure


def _jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def _questions(name: str, split: str) -> list[dict]:
    """bench/data question sets as gate rows: frustrated = negative, plain = neutral (routing only)."""
    return [{"text": r["query"], "label": "negative" if r["kind"] == "frustrated" else "neutral",
             "kind": r["kind"], "lang": r["lang"], "routing_only": True}
            for r in _jsonl(ROOT / "bench" / "data" / name) if r["split"] == split]


def load_sets() -> dict[str, tuple[str, list[dict]]]:
    """name -> (tune | heldout, rows with text, label, kind, lang)."""
    return {
        "helpdesk": ("tune", _jsonl(DATA / "sentiment_eval.jsonl")),
        "answers tune": ("tune", _questions("answers.jsonl", "tune")),
        "offtopic tune": ("tune", _questions("offtopic.jsonl", "tune")),
        "general": ("heldout", _jsonl(DATA / "sentiment_general.jsonl")),
        "answers heldout": ("heldout", _questions("answers.jsonl", "heldout")),
        "offtopic heldout": ("heldout", _questions("offtopic.jsonl", "heldout")),
        "injection": ("heldout", _jsonl(DATA / "sentiment_injection.jsonl")),
    }


def collect(cache, threads: int) -> None:
    """Every text's model label probabilities from the real gate with the cues off."""
    from kbgate.config import load_config
    from kbgate.engines import load_engine
    from kbgate.gate import SentimentGate
    from kbgate.prompts import Prompts, prompt_folder
    from tqdm import tqdm

    cfg = load_config()
    if threads:
        cfg = cfg.replace(model={"threads": threads})
    t0 = time.perf_counter()
    engine = load_engine(cfg)
    gate = SentimentGate(engine, Prompts(prompt_folder(cfg)), cfg.replace(gate={"cues": False}).gate)
    texts = sorted({r["text"] for _, rows in load_sets().values() for r in rows})
    info = engine.info()
    meta = {"engine": info.engine, "model": info.model, "quantization": info.quantization, "threads": info.threads,
            "prompt": cfg.gate.prompt}
    # a cache of the same engine and prompt is extended, not redone: an interrupted run resumes
    old = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    same = {k: v for k, v in old.get("meta", {}).items() if k in meta} == meta
    probs = old.get("probs", {}) if same else {}
    cache.parent.mkdir(parents=True, exist_ok=True)

    def save():
        meta.update(texts=len(probs), seconds=round(time.perf_counter() - t0, 1),
                    when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        cache.write_text(json.dumps({"meta": meta, "probs": probs}, ensure_ascii=False, indent=0), encoding="utf-8")

    todo = [t for t in texts if t not in probs]
    for i, t in enumerate(tqdm(todo, desc="gate", unit="text"), 1):
        probs[t] = gate.classify([t])[0].probs
        if i % 50 == 0:
            save()
    save()
    print(f"{len(todo)} texts scored, {len(probs)} in {cache} ({meta['seconds']} s, {meta['engine']})")


def read_cache(cache) -> dict:
    if not cache.exists():
        sys.exit(f"no cache {cache}: run `python bench/fit_gate_cues.py collect --cache {cache}` first")
    return json.loads(cache.read_text(encoding="utf-8"))


def matrix(rows: list[dict], probs: dict) -> np.ndarray:
    """The feature rows, in FEATURES order, of the texts as the gate sees them (instructions taken out)."""
    out = []
    for r in rows:
        x = features(without_instructions(r["text"]), probs[r["text"]])
        out.append([x[f] for f in FEATURES])
    return np.array(out, dtype=float)


def fit_logistic(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, np.ndarray]:
    """L2 logistic regression by Newton's method on standardised columns; (bias, weights) on the raw scale."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    w = np.zeros(z.shape[1])
    reg = lam * np.eye(z.shape[1])
    reg[0, 0] = 0.0  # the bias is not shrunk
    for _ in range(100):
        p = 1 / (1 + np.exp(-z @ w))
        grad = z.T @ (p - y) + reg @ w
        hess = z.T @ (z * (p * (1 - p))[:, None]) + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    weights = w[1:] / sd
    return float(w[0] - weights @ mu), weights


def model_of(bias: float, weights: np.ndarray) -> CueModel:
    return CueModel(bias, dict(zip(FEATURES, map(float, weights))))


def folds(y: np.ndarray, k: int = 10, seed: int = 0) -> np.ndarray:
    """A fold number per row, stratified by the label."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(y), dtype=int)
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        out[idx] = np.arange(len(idx)) % k
    return out


def crossval(x, y, lam, fold) -> np.ndarray:
    """Out-of-fold P(negative) for every row."""
    p = np.zeros(len(y))
    for f in np.unique(fold):
        train = fold != f
        bias, w = fit_logistic(x[train], y[train], lam)
        p[~train] = 1 / (1 + np.exp(-(bias + x[~train] @ w)))
    return p


def combined(rows, probs, p_neg) -> list[dict]:
    """Label probabilities with a given P(negative), the model's ratio for the rest (as CueModel.combine)."""
    out = []
    for r, q in zip(rows, p_neg):
        m = probs[r["text"]]
        share = m["positive"] / max(m["positive"] + m["neutral"], 1e-300)
        out.append({"positive": (1 - q) * share, "neutral": (1 - q) * (1 - share), "negative": float(q)})
    return out


def scores(rows: list[dict], got: list[dict], threshold: float) -> dict:
    """Accuracy (labelled sets), negative recall, non-negative and plain questions routed, route right per kind."""
    routed = [p["negative"] >= threshold for p in got]
    neg = [x for r, x in zip(rows, routed) if r["label"] == "negative"]
    other = [x for r, x in zip(rows, routed) if r["label"] != "negative"]
    plain = [x for r, x in zip(rows, routed) if r["kind"] in PLAIN_KINDS]
    kinds = {}
    for r, x in zip(rows, routed):
        ok, n = kinds.get(r["kind"], (0, 0))
        kinds[r["kind"]] = (ok + (x == (r["label"] == "negative")), n + 1)
    labelled = not any(r.get("routing_only") for r in rows)
    acc = (sum(r["label"] == max(p, key=p.get) for r, p in zip(rows, got)) / len(rows)) if labelled else None
    return {"n": len(rows), "acc": acc, "neg": (sum(neg), len(neg)), "other": (sum(other), len(other)),
            "plain": (sum(plain), len(plain)), "kinds": kinds}


def frac(pair) -> str:
    return f"{pair[0]}/{pair[1]}" if pair[1] else "-"


def compare_rows(name: str, split: str, before: dict, after: dict) -> tuple:
    def acc(s):
        return "-" if s["acc"] is None else f"{s['acc']:.1%}"
    kinds = ", ".join(f"{k} {before['kinds'][k][0]}→{after['kinds'][k][0]}/{after['kinds'][k][1]}"
                      for k in sorted(after["kinds"]))
    return (name, split, before["n"], f"{acc(before)} → {acc(after)}", f"{frac(before['neg'])} → {frac(after['neg'])}",
            f"{frac(before['other'])} → {frac(after['other'])}", f"{frac(before['plain'])} → {frac(after['plain'])}", kinds)


COMPARE_HEADER = ("set", "split", "n", "accuracy", "negatives routed", "non-negative routed",
                  "plain questions routed", "route right per kind (model → with cues / n)")


def fit(cache, write: bool, threshold: float) -> None:
    data = read_cache(cache)
    probs = data["probs"]
    tune = [r for split, rows in load_sets().values() if split == "tune" for r in rows]
    x = matrix(tune, probs)
    y = np.array([r["label"] == "negative" for r in tune], dtype=float)
    fold = folds(y)
    losses = {}
    for lam in LAMBDAS:
        p = np.clip(crossval(x, y, lam, fold), 1e-9, 1 - 1e-9)
        losses[lam] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    lam = min(losses, key=losses.get)
    print("10-fold CV log-loss by L2 strength:", ", ".join(f"{k:g}: {v:.4f}" for k, v in losses.items()))
    model_p = np.clip([probs[r["text"]]["negative"] for r in tune], 1e-9, 1 - 1e-9)
    print(f"the model alone: {float(-np.mean(y * np.log(model_p) + (1 - y) * np.log(1 - model_p))):.4f}; chose {lam:g}")
    oof = crossval(x, y, lam, fold)
    before = scores(tune, [probs[r["text"]] for r in tune], threshold)
    after = scores(tune, combined(tune, probs, oof), threshold)
    cv_rows = [compare_rows("tune rows, 10-fold CV", "tune", before, after)]
    start = 0
    for name, (split, rows) in load_sets().items():
        if split == "tune":  # the same out-of-fold predictions, set by set
            part = slice(start, start + len(rows))
            start += len(rows)
            cv_rows.append(compare_rows(f"{name}, 10-fold CV", "tune", scores(rows, [probs[r["text"]] for r in rows], threshold),
                                        scores(rows, combined(rows, probs, oof[part]), threshold)))
    print(table(cv_rows, header=COMPARE_HEADER))
    for t in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7):
        s = scores(tune, combined(tune, probs, oof), t)
        print(f"  CV at {t}: negatives {frac(s['neg'])}, non-negative {frac(s['other'])}, plain {frac(s['plain'])}")
    bias, w = fit_logistic(x, y, lam)
    lines = ["# The gate's cue model (kbgate/gate_cues.py): P(negative) = sigmoid(bias + sum weight * feature).",
             f"# Fitted by bench/fit_gate_cues.py fit, {time.strftime('%Y-%m-%d')}, on {len(tune)} tune rows "
             f"(helpdesk set + tune halves of answers/offtopic), L2 {lam:g} by 10-fold CV;",
             f"# model probabilities: {data['meta']['engine']} {data['meta']['model']} {data['meta']['quantization']}.",
             f"# 10-fold CV on those rows at {threshold}: negatives routed {frac(before['neg'])} -> {frac(after['neg'])}, "
             f"non-negative routed {frac(before['other'])} -> {frac(after['other'])}.",
             "bias\t" + f"{bias:.4f}"] + [f"{f}\t{v:.4f}" for f, v in zip(FEATURES, w)]
    print("\n".join(lines))
    if write:
        CUES.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"written to {CUES}", file=sys.stderr)


def report(cache, threshold: float) -> list[tuple]:
    """The shipped cues file against the model alone on every set."""
    probs = read_cache(cache)["probs"]
    cues = parse_cues(CUES.read_text(encoding="utf-8"), CUES.name)
    out = []
    for name, (split, rows) in load_sets().items():
        raw = [probs[r["text"]] for r in rows]
        with_cues = [cues.combine(without_instructions(r["text"]), p) for r, p in zip(rows, raw)]
        out.append(compare_rows(name, split, scores(rows, raw, threshold), scores(rows, with_cues, threshold)))
    print(table(out, header=COMPARE_HEADER))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("collect", "fit", "report"))
    ap.add_argument("--cache", default=str(CACHE), help="JSON of each text's model label probabilities")
    ap.add_argument("--threshold", type=float, default=0.5, help="P(negative) that routes to troubleshooting")
    ap.add_argument("--threads", type=int, default=0, help="collect: engine threads (0: [model] threads); "
                                                         "1 is faster on a crowded machine")
    ap.add_argument("--no-write", action="store_true", help="fit: print the weights, don't write the cues file")
    args = ap.parse_args()
    from pathlib import Path
    cache = Path(args.cache)
    if args.step == "collect":
        collect(cache, args.threads)
    elif args.step == "fit":
        fit(cache, not args.no_write, args.threshold)
    else:
        report(cache, args.threshold)


if __name__ == "__main__":
    main()
