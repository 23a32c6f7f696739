"""Measure whole answers on a question set: route, cited page, fix steps, expected value, per query and in total.

Input rows: {"query", "kind": "frustrated" | "plain", "pages": [expected page ids]}, optionally
"value" (what a right answer must state) with "value_alternatives", "id", "lang", "split".
A row without pages (or with "pages": []) is off-topic: the right reply is "no answer".

A frustrated question passes when it reaches troubleshooting with at least two numbered
steps cited from a fix section (解决步骤 / Fix) of an expected page; a plain one when an
expected page is cited; a value when the answer states it (numbers compared with their
units, so "30 分钟" states "30 minutes"); an off-topic one when it gets no answer.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import urllib.error
import urllib.request

from kbgate.errors import BadInput, KBGateError
from kbgate.retrieval import is_steps_section
from kbgate.values import normalise, stated, values

KINDS = ("frustrated", "plain")
_STEP = re.compile(r"^\s*\d{1,2}[.)、]\s+\S")
_CITE = re.compile(r"\[(\d{1,2})\]")


def check_rows(rows: list[dict], path) -> None:
    """Raise BadInput naming the first line with a bad kind, pages or value."""
    for r in rows:
        where = f"{path}:{r['_line']}"
        if r.get("kind") not in KINDS:
            raise BadInput(f"{where}: kind must be one of {', '.join(KINDS)}, got {r.get('kind')!r}")
        pages = r.get("pages", [])
        if not isinstance(pages, list) or not all(isinstance(p, str) and p for p in pages):
            raise BadInput(f"{where}: pages must be a list of page ids such as [\"it/vpn\"], got {pages!r}")
        if r.get("value") is not None and not (isinstance(r["value"], str) and r["value"].strip()):
            raise BadInput(f"{where}: value must be a non-empty string or null, got {r['value']!r}")
        if r.get("value") is not None and not pages:
            raise BadInput(f"{where}: a value needs the pages that state it")


def states(answer: str, value: str, alternatives=()) -> bool:
    """True when the answer states the value or one of its alternatives."""
    have = values(answer)
    flat = " ".join(normalise(answer).casefold().split())
    for v in [value, *alternatives]:
        want = values(v)
        if want and all(stated(x, have) for x in want):
            return True
        if " ".join(normalise(v).casefold().split()) in flat:
            return True
    return False


def fix_steps_from(answer: str, sources: list[dict], pages: list[str]) -> int:
    """Numbered lines citing a fix section of one of `pages`."""
    ok = {s["n"] for s in sources if s["page"] in pages and is_steps_section(s["heading"])}
    return sum(1 for line in answer.splitlines()
               if _STEP.match(line) and {int(n) for n in _CITE.findall(line)} & ok)


def judge(row: dict, res: dict) -> dict:
    """One query's verdict from the pipeline's (or the API's) result dict."""
    pages = row.get("pages") or []
    cited = list(dict.fromkeys(s["page"] for s in res["sources"] if s.get("cited")))
    right = any(p in pages for p in cited)
    kind = row["kind"] if pages else "offtopic"
    steps = fix_steps_from(res["answer"], res["sources"], pages) if pages else 0
    value = row.get("value")
    value_ok = states(res["answer"], value, row.get("value_alternatives") or []) if value else None
    ok = {"frustrated": res["route"] == "troubleshooting" and steps >= 2,
          "plain": res["route"] != "no_answer" and right,
          "offtopic": res["route"] == "no_answer"}[kind]
    return {"id": row.get("id", row["_line"]), "line": row["_line"], "query": row["query"], "kind": kind,
            "lang": row.get("lang"), "route": res["route"], "cited": cited, "right_page": right,
            "fix_steps": steps, "value": value, "value_ok": value_ok, "ok": ok,
            "ms": (res.get("timings_ms") or {}).get("total"), "answer": res["answer"]}


def local_runner(services, max_new_tokens: int | None = None, caller=None):
    """Answer through the loaded pipeline, as `caller` (default: a signed-in employee in no group,
    who reads every page without an audience, as the search page would show them)."""
    from kbgate.access import authenticated
    who = caller or authenticated("kbgate-eval")
    return lambda q: services.pipeline.ask(q, max_new_tokens=max_new_tokens, caller=who).as_dict()


def http_runner(url: str, timeout: float = 300.0):
    """Answer through a running server's POST /api/search."""
    endpoint = url.rstrip("/") + "/api/search"

    def ask(q: str) -> dict:
        req = urllib.request.Request(endpoint, json.dumps({"query": q}).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")[:300]
            raise KBGateError(f"{endpoint} answered {e.code} for {q!r}: {body}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise KBGateError(f"cannot reach {endpoint} ({getattr(e, 'reason', e)}); is `kbgate serve` running "
                              "there?") from None
    return ask


def evaluate_answers(ask, rows: list[dict], progress: bool = True) -> dict:
    """{"queries": [verdict, ...], "totals": {...}} for every row, answered one by one."""
    from tqdm import tqdm
    verdicts = [judge(r, ask(r["query"])) for r in tqdm(rows, desc="answers", unit="q", disable=not progress,
                                                          file=sys.stderr)]
    return {"queries": verdicts, "totals": totals(verdicts)}


def totals(verdicts: list[dict]) -> dict:
    def part(kind):
        xs = [v for v in verdicts if v["kind"] == kind]
        return xs, sum(v["ok"] for v in xs)
    fr, fr_ok = part("frustrated")
    pl, pl_ok = part("plain")
    off, off_ok = part("offtopic")
    valued = [v for v in verdicts if v["value"]]
    answered_valued = [v for v in valued if v["route"] != "no_answer"]
    ms = [v["ms"] for v in verdicts if v["ms"] is not None]
    return {"frustrated": {"n": len(fr), "ok": fr_ok,
                           "troubleshooting": sum(v["route"] == "troubleshooting" for v in fr)},
            "plain": {"n": len(pl), "ok": pl_ok, "answered": sum(v["route"] != "no_answer" for v in pl),
                      "misrouted": sum(v["route"] == "troubleshooting" for v in pl)},
            "values": {"n": len(valued), "stated": sum(bool(v["value_ok"]) for v in valued),
                       "answered": len(answered_valued), "stated_when_answered": sum(bool(v["value_ok"])
                                                                                      for v in answered_valued)},
            "offtopic": {"n": len(off), "answered": len(off) - off_ok},
            "ms_p50": statistics.median(ms) if ms else None}


def answers_report(res: dict) -> str:
    """Per-query and total figures as markdown tables."""
    from kbgate.eval import pct, table
    t = res["totals"]
    rows = [(v["id"], v["kind"], v["route"], ", ".join(v["cited"]) or "-", "yes" if v["right_page"] else "no",
             v["fix_steps"], "-" if v["value_ok"] is None else ("yes" if v["value_ok"] else f"no ({v['value']})"),
             "PASS" if v["ok"] else "fail", v["query"][:50]) for v in res["queries"]]
    summary = [
        ("frustrated: troubleshooting with ≥ 2 fix steps from the right page",
         pct(t["frustrated"]["ok"], t["frustrated"]["n"]),
         f"reached troubleshooting {t['frustrated']['troubleshooting']}"),
        ("plain: answered from the right page", pct(t["plain"]["ok"], t["plain"]["n"]),
         f"answered {t['plain']['answered']}, misrouted to troubleshooting {t['plain']['misrouted']}"),
        ("expected value stated", pct(t["values"]["stated"], t["values"]["n"]),
         f"of those answered: {pct(t['values']['stated_when_answered'], t['values']['answered'])}"),
        ("off-topic answered", pct(t["offtopic"]["answered"], t["offtopic"]["n"]), "should be refused"),
        ("answer time p50", f"{t['ms_p50'] / 1000:.1f} s" if t["ms_p50"] else "-", ""),
    ]
    summary = [s for s in summary if not s[1] == "-" or s[0].startswith("answer time")]
    return (table(summary, ("measure", "result", "notes")) + "\n\n"
            + table(rows, ("id", "kind", "route", "cited", "right page", "fix steps", "value", "", "query")))
