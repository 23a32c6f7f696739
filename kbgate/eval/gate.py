"""Measure the sentiment gate on labelled texts: accuracy, confusion matrix, routing at the threshold.

Input rows: {"text", "label"} (label positive / neutral / negative), optionally "kind"
(howto, lookup, question: plain questions that must not reach troubleshooting).
"""
from __future__ import annotations

LABELS = ("positive", "neutral", "negative")
PLAIN_KINDS = ("howto", "lookup", "question")


def check_labels(rows: list[dict], path) -> None:
    from kbgate.errors import BadInput
    for r in rows:
        if r["label"] not in LABELS:
            raise BadInput(f"{path}:{r['_line']}: label must be one of {', '.join(LABELS)}, got {r['label']!r}")


def evaluate_gate(gate, rows: list[dict], threshold: float) -> dict:
    """{"n", "accuracy", "per_label", "confusion": {true: {predicted: n}}, "routing": {...}, "errors": [...]}."""
    results = gate.classify([r["text"] for r in rows])
    confusion = {t: {p: 0 for p in LABELS} for t in LABELS}
    errors = []
    routed = {"negative": 0, "negative_routed": 0, "other": 0, "other_routed": 0, "plain": 0, "plain_routed": 0}
    for r, s in zip(rows, results):
        confusion[r["label"]][s.label] += 1
        to_trouble = s.probs["negative"] >= threshold
        side = "negative" if r["label"] == "negative" else "other"
        routed[side] += 1
        routed[f"{side}_routed"] += to_trouble
        if r.get("kind") in PLAIN_KINDS:
            routed["plain"] += 1
            routed["plain_routed"] += to_trouble
        if s.label != r["label"]:
            errors.append({"line": r["_line"], "text": r["text"], "label": r["label"], "predicted": s.label,
                           "p_negative": round(s.probs["negative"], 3)})
    n = len(rows)
    per_label = {t: (confusion[t][t] / sum(confusion[t].values()) if sum(confusion[t].values()) else None)
                 for t in LABELS}
    return {"n": n, "threshold": threshold, "accuracy": sum(confusion[t][t] for t in LABELS) / n,
            "per_label": per_label, "confusion": confusion, "routing": routed, "errors": errors}


def gate_report(res: dict) -> str:
    """The gate's figures as markdown tables."""
    from kbgate.eval import pct, table
    c, r = res["confusion"], res["routing"]
    acc = sum(c[t][t] for t in LABELS)
    lines = [f"accuracy {pct(acc, res['n'])}; per label: " + ", ".join(
        f"{t} {v:.0%}" for t, v in res["per_label"].items() if v is not None), "",
        table([[t] + [c[t][p] for p in LABELS] for t in LABELS], ("true \\ predicted", *LABELS)), "",
        f"routing at P(negative) ≥ {res['threshold']}: negatives to troubleshooting "
        f"{pct(r['negative_routed'], r['negative'])}; others misrouted {pct(r['other_routed'], r['other'])}"
        + (f"; plain questions misrouted {pct(r['plain_routed'], r['plain'])}" if r["plain"] else "")]
    if res["errors"]:
        lines += ["", table([(e["line"], e["text"][:60], e["label"], e["predicted"], e["p_negative"])
                             for e in res["errors"]], ("line", "text", "label", "predicted", "P(neg)"))]
    return "\n".join(lines)
