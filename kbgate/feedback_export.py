"""`kbgate feedback export`: every vote with its answer, as CSV or JSON lines.

One row per vote: answer_id, voted_at, rating, comment, voter, query, route, label,
pages (the answer's cited pages), asked_at, asker. Times are UTC ISO 8601. In CSV the
pages are joined with "; ", and a text cell starting with = + - @ gets a leading ' so a
spreadsheet shows it rather than running it as a formula; JSON lines keep the text as is.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime, timezone

from kbgate.feedback import Vote

COLUMNS = ("answer_id", "voted_at", "rating", "comment", "voter", "query", "route", "label", "pages", "asked_at",
           "asker")
FORMATS = ("csv", "jsonl")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def row(v: Vote) -> dict:
    """One vote as a plain dict in COLUMNS order."""
    return {"answer_id": v.answer_id, "voted_at": _iso(v.voted_at), "rating": v.rating, "comment": v.comment,
            "voter": v.voter, "query": v.query, "route": v.route, "label": v.label, "pages": list(v.pages),
            "asked_at": _iso(v.asked_at), "asker": v.asker}


def _cell(value) -> str:
    text = "; ".join(value) if isinstance(value, list) else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write(votes, fmt: str, out) -> int:
    """Write `votes` to the text stream `out` as csv or jsonl; return how many."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    n = 0
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(COLUMNS)
        for v in votes:
            w.writerow([_cell(x) for x in row(v).values()])
            n += 1
    else:
        for v in votes:
            out.write(json.dumps(row(v), ensure_ascii=False) + "\n")
            n += 1
    return n
