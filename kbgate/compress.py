"""Extractive passage compression: keep the lines of a chunk that matter for the query.

Prompt tokens are the price of time-to-first-token on a CPU (each costs a few ms of
prefill), so a passage is cut to a token budget by keeping the lines (or sentences
of long lines) that share the most terms with the query, topped up with the
chunk's other lines in document order, and printed in document order.

A markdown table is one unit while it fits the budget: its rows rarely repeat the
query's words ("年假有多少天" against rows of years and days), so rows scored one by one
were dropped, and the header without its rows told the model nothing.

Not handled: paraphrase matching (a line that answers with other words ranks by
position only).
"""
from __future__ import annotations

import re
from typing import Callable

from indexer.tokenize import tokenize

_RULE = re.compile(r"^\s*\|?[\s:|-]+\|[\s:|-]*$")  # a table's header rule
_SENTENCE = re.compile(r"(?<=[。！？；!?;])|(?<=\.)\s+")


def units(text: str) -> list[str]:
    """Lines, with lines longer than 200 characters split into sentences, and the rows of a
    markdown table joined into one unit; blank lines and fences dropped."""
    out: list[str] = []
    in_table = False
    for line in text.splitlines():
        line = line.rstrip()
        if not line.strip() or line.strip().startswith("```"):
            in_table = False
            continue
        if line.lstrip().startswith("|"):
            if _RULE.match(line):
                continue  # '|---|---|' only costs tokens: the rows read the same without it
            if in_table:
                out[-1] += "\n" + line
            else:
                out.append(line)
            in_table = True
            continue
        in_table = False
        if len(line) > 200:
            out += [s.strip() for s in _SENTENCE.split(line) if s and s.strip()]
        else:
            out.append(line)
    return out


def _rows(parts: list[str], budget: int, count: Callable[[str], int]) -> list[str]:
    """Tables over the budget go back to one unit per row."""
    return [row for p in parts for row in (p.split("\n") if "\n" in p and count(p) > budget else [p])]


def compress(text: str, query: str, budget: int, count: Callable[[str], int]) -> str:
    """The lines of `text` most relevant to `query`, at most `budget` tokens by `count`."""
    parts = units(text)
    if count("\n".join(parts)) <= budget:
        return "\n".join(parts)
    parts = _rows(parts, budget, count)
    terms = set(tokenize(query))
    hits = [len(terms & set(tokenize(u))) for u in parts]
    # a table also scores its caption's terms (the line before it: "年假天数按工作年限计算：")
    hits = [h + (hits[i - 1] if i and parts[i].startswith("|") else 0) for i, h in enumerate(hits)]
    scored = [(h, -i) for i, h in enumerate(hits)]
    order = [-neg for score, neg in sorted(scored, reverse=True) if score > 0]
    order += [i for i in range(len(parts)) if i not in order]
    keep, used = [], 0
    for i in order:
        cost = count(parts[i]) + 1
        if used + cost <= budget:
            keep.append(i)
            used += cost
        elif not keep:  # the best unit alone is over budget: cut it
            keep.append(i)
            parts[i] = _cut(parts[i], budget, count)
            used = budget
    return "\n".join(parts[i] for i in sorted(keep))


def _cut(text: str, budget: int, count: Callable[[str], int]) -> str:
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix within budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(text[:mid]) <= budget else (lo, mid - 1)
    return text[:lo].rstrip() + " …"
