"""Extractive passage compression: keep the lines of a chunk that matter for the query.

Prompt tokens are the price of time-to-first-token on a CPU (each costs a few ms of
prefill), so a passage is cut to a token budget by keeping the lines (or sentences
of long lines) that share the most terms with the query, topped up with the
chunk's other lines in document order, and printed in document order.

Not handled: paraphrase matching (a line that answers with other words ranks by
position only).
"""
from __future__ import annotations

import re
from typing import Callable

from indexer.tokenize import tokenize

_SENTENCE = re.compile(r"(?<=[。！？；!?;])|(?<=\.)\s+")


def units(text: str) -> list[str]:
    """Lines, with lines longer than 200 characters split into sentences; blank lines and fences dropped."""
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line.strip() or line.strip().startswith("```"):
            continue
        if len(line) > 200:
            out += [s.strip() for s in _SENTENCE.split(line) if s and s.strip()]
        else:
            out.append(line)
    return out


def compress(text: str, query: str, budget: int, count: Callable[[str], int]) -> str:
    """The lines of `text` most relevant to `query`, at most `budget` tokens by `count`."""
    parts = units(text)
    if count("\n".join(parts)) <= budget:
        return "\n".join(parts)
    terms = set(tokenize(query))
    scored = [(len(terms & set(tokenize(u))), -i) for i, u in enumerate(parts)]
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
