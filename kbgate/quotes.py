"""Check a cited reply's values and yes/no verdicts against the passages, quoting the wiki's own line.

A sentence whose number, amount, date, duration, time or code (see `kbgate.values`) is
not in the passage it cites, nor in the question, is replaced by that passage's own
line holding the sentence's terms, or dropped. In a table the row the sentence names
(陪产假 | 10 个工作日) is what must hold its values, not some other row. A yes/no
question's verdict ("No.", "不需要") is never trusted from a 0.5B model: it becomes the
passage line that decides it, quoted.
"""
from __future__ import annotations

import re

from kbgate.values import asked_kinds, kind_fits, missing, normalise, stated, values

CITATION = re.compile(r"\[(\d{1,2})\]")
_CITED = re.compile(r"\s*\[\d{1,2}\]")
_SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=[.;；])(?=\s)")
_LIST_MARK = re.compile(r"^(\s*\d{1,2}[.)、]\s+)")
_MD = [(re.compile(r"<(https?://[^>\s]+)>"), r"\1"), (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),
       (re.compile(r"\*\*|__|<[^>]+>"), ""), (re.compile(r"`([^`]*)`"), r"\1")]
_RULE = re.compile(r"^\|?\s*:?-{2,}")
YES_NO_EN = re.compile(r"^(?:do|does|did|can|could|is|are|am|was|were|will|would|should|shall|may|must|"
                       r"have|has|need)\b", re.I)
YES_NO_ZH = re.compile(r"(吗|(?<![什怎那这多要])么)[？?。！!]*$|是否|能否|可否|要不要|需不需要|能不能|"
                       r"可不可以|是不是|有没有|用不用|会不会|算不算")
VERDICT = re.compile(r"^\s*(?:\d{1,2}[.)、]\s+)?(?:yes|no|yeah|nope|not|you (?:do|don't|do not|need|needn't|can|"
                     r"cannot|can't|must|should|will|won't)|是的|是|不是|不|不用|不需要|需要|可以|不可以|能|不能|"
                     r"会|不会|要|不要|没有|有|必须|无需|无须|对)(?![a-z])", re.I)
QUOTE = {"zh": "Wiki 原文：“{line}”", "en": 'The wiki says: "{line}"'}


def plain(line: str) -> str:
    for pattern, repl in _MD:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


def _cells(row: str) -> list[str]:
    return [plain(c) for c in row.strip().strip("|").split("|")]


def passage_lines(text: str) -> list[tuple[str, str]]:
    """(row key or "", quotable line) for each line of prose, list item and table row; code is left out.

    A table row reads "header: cell; header: cell" so the quote carries its column names.
    """
    out, header, fenced = [], None, False
    for raw in text.splitlines():
        s = raw.strip()
        if s.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or not s or s.startswith("#"):
            header = None if not s.startswith("|") else header
            continue
        if s.startswith("|"):
            if _RULE.match(s):
                continue
            cells = _cells(s)
            if header is None:
                header = cells
                continue
            pairs = [f"{h}: {c}" if h else c for h, c in zip(header, cells) if c]
            out.append((cells[0] if cells else "", "; ".join(pairs)))
            continue
        header = None
        line = plain(re.sub(r"^(?:[-*+>]\s+|\d{1,2}[.)、]\s+)", "", s))
        if line:
            out.append(("", line))
    return out


def _terms(text: str) -> set[str]:
    from indexer.tokenize import tokenize
    return set(tokenize(normalise(_CITED.sub("", text))))


_BELOW = re.compile(r"不满|under|less than|below|fewer than", re.I)
_UP_TO = re.compile(r"up to|以内|以下|or less|至多|不超过", re.I)
_ABOVE = re.compile(r"以上|or more|more than|over|at least|满|\+", re.I)
_SAME = {"workday": "day"}  # "three days" picks the "3 working days or more" row


def in_range(key: str, numbers: set) -> bool:
    """True when a table row's key (满 1 年不满 10 年, 3 working days or more) covers one of
    `numbers` ({(3.0, "year")}: the question's or sentence's quantities)."""
    own = sorted((float(v.text), _SAME.get(v.unit, v.unit)) for v in values(key) if v.kind == "num" and v.unit)
    if not own or len({u for _, u in own}) != 1:
        return False
    unit, bounds = own[0][1], [x for x, _ in own]
    for q, u in numbers:
        if _SAME.get(u, u) != unit:
            continue
        if len(bounds) >= 2:
            lo, hi = bounds[0], bounds[-1]
            if lo <= q < hi or (q == hi and not _BELOW.search(key)):
                return True
        elif _BELOW.search(key):
            if q < bounds[0]:
                return True
        elif _UP_TO.search(key):
            if q <= bounds[0]:
                return True
        elif _ABOVE.search(key) and q >= bounds[0]:
            return True
    return False


def _quantities(*texts: str) -> set:
    return {(float(v.text), v.unit) for t in texts for v in values(t) if v.kind == "num" and v.unit}


def named_rows(sentence: str, passage: str, query: str = "") -> list[str]:
    """The table rows the sentence or question names: by first cell (陪产假), or by a key whose
    range holds one of their quantities (工作三年 -> 满 1 年不满 10 年)."""
    low, nums = sentence.lower(), _quantities(sentence, query)
    return [line for key, line in passage_lines(passage)
            if key and ((len(key) >= 2 and key.lower() in low) or in_range(key, nums))]


def _best_line(want: set, passages: list, rows_of) -> tuple[int, str, int] | None:
    """(overlap, line, passage n) of the best line; the rows `rows_of(p)` names win over the rest."""
    best = None
    for p in passages:
        named = set(rows_of(p))
        for i, (_, line) in enumerate(passage_lines(p.text)):
            score = (line in named, len(want & _terms(line)), -i)
            if best is None or score > best[0]:
                best = (score, line, p.n)
    return (best[0][1] + 3 * best[0][0], best[1], best[2]) if best else None


def own_line(sentence: str, passage, query: str = "", min_overlap: int = 2, topic: bool = False) -> str | None:
    """The passage's line sharing most terms with the sentence and the query (None below `min_overlap`).

    A table row the sentence or the question names comes first; topic=True: only lines sharing a
    word with the question, and a row only the question names (the sentence may be off the subject).
    """
    want, words = _terms(sentence) | _terms(query), _topic(query)
    lines = passage_lines(passage.text)
    if topic:
        from types import SimpleNamespace
        kept = "\n".join(line for _, line in lines if words & _terms(line))
        passage = SimpleNamespace(n=passage.n, text=_rows_as_table(passage.text, kept))
    found = _best_line(want, [passage], lambda p: named_rows(query if topic else sentence, p.text, query))
    return found[1] if found and found[0] >= min_overlap else None


def _rows_as_table(text: str, kept: str) -> str:
    """The passage with only the lines (rendered as in passage_lines) that are in `kept`."""
    keep = set(kept.splitlines())
    out, header, fenced = [], None, False
    for raw in text.splitlines():
        s = raw.strip()
        if s.startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or not s.startswith("|"):
            header = None
            if any(plain(re.sub(r"^(?:[-*+>]\s+|\d{1,2}[.)、]\s+)", "", s)) == k for k in keep):
                out.append(raw)
            continue
        if _RULE.match(s):
            continue
        cells = _cells(s)
        if header is None:
            header = cells
            out += [raw, "|---|"]
            continue
        if "; ".join(f"{h}: {c}" if h else c for h, c in zip(header, cells) if c) in keep:
            out.append(raw)
    return "\n".join(out)


def is_yes_no(query: str) -> bool:
    """A question answered by yes or no: "Do I need ...?", "需要病假条吗？"."""
    q = normalise(query).strip()
    return bool(YES_NO_EN.match(q) or YES_NO_ZH.search(q))


def _split(text: str) -> list[list[str]]:
    return [[x for x in _SENTENCE_END.split(line)] for line in text.split("\n")]


def _quote(line: str, n: int, lang: str) -> str:
    return QUOTE["zh" if lang == "zh" else "en"].format(line=line.rstrip("。.;；")) + f" [{n}]"


def _topic(query: str) -> set[str]:
    return {t for t in _terms(query) if not t.replace(".", "").isdigit()}


def off_topic_values(sentence: str, pool: list, query: str) -> list:
    """Values of the sentence that no line of the passages states beside a word of the question:
    "每年 5 天" from the 育儿假 line does not answer "陪产假可以休几天？"."""
    topic = _topic(query)
    if not topic:
        return []
    lines = [line for p in pool for _, line in passage_lines(p.text) if topic & _terms(line)]
    near = values("\n".join(lines)) | values(query)
    return [v for v in values(sentence) if not stated(v, near)]


def check_values(text: str, passages: list, query: str, lang: str, topic: bool = False) -> tuple[str, list[str]]:
    """Replace or drop each sentence stating a value its cited passage lacks; return (text, notes).

    topic=True (plain answers): a value must also sit on a line that shares a word with the
    question, and the replacing line is looked for in every passage. Across languages (an
    English question on a Chinese page) no line shares a word with the question: there the
    sentence's values must stand together on one line of the cited passage instead.
    notes: one line per change.
    """
    from indexer.tokenize import detect_lang

    by_n = {p.n: p for p in passages}
    notes, used = [], set()
    lines = []
    for sentences in _split(text):
        kept = []
        for s in sentences:
            cited = [int(n) for n in CITATION.findall(s) if int(n) in by_n] or list(by_n)
            pool = [by_n[n] for n in cited]
            said = values(s)
            table = values("\n".join(line for p in pool for key, line in passage_lines(p.text) if key))
            # a sentence quoting a table must take its values from the row it (or the question) names
            # (plain answers: a row the question names counts too: "周末值班多少补贴" holds "200 元" to the 周末 row)
            named = _CITED.sub("", s) + (" " + query if topic else "")
            rows = ([r for p in pool for r in named_rows(named, p.text, query)]
                    if any(stated(v, table) for v in said) else [])
            gone = missing(s, "\n".join(rows) if rows else "\n".join(p.text for p in pool), query)
            if topic and not gone:
                gone = off_topic_values(s, pool, query)
                if gone and all(detect_lang(p.text) != detect_lang(query) for p in pool):
                    bare = _CITED.sub("", s)
                    if any(not missing(bare, line, query) for p in pool for _, line in passage_lines(p.text)):
                        gone = []
            if not gone:
                kept.append(s)
                continue
            # plain answers: a passage whose table row the question names goes first
            order = (sorted(passages, key=lambda p: not named_rows(query, p.text)) if topic else pool)
            found = next(((line, p.n) for p in order if (line := own_line(s, p, query, topic=topic))), None)
            if found and topic and not answers_kind(found[0], query):
                found = None  # "4 employees" is not answered by the line with "4 hours": the sentence goes
            shown = ", ".join(map(str, gone))
            if found and found[0] not in used:
                used.add(found[0])
                mark = _LIST_MARK.match(s)
                # a step stays a step (the wiki's line, cited); prose becomes a marked quote
                kept.append(f"{mark.group(1)}{found[0]} [{found[1]}]" if mark else
                            _quote(found[0], found[1], lang) + ("。" if lang == "zh" else ". "))
                notes.append(f"{shown} not in passage {found[1]}: its own line quoted")
            else:
                notes.append(f"{shown} not in the cited passage: sentence dropped")
        if kept or not "".join(sentences).strip():
            lines.append("".join(kept).rstrip())  # a blank line stays; a line emptied by drops goes
    out = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", out).strip(), notes


def answers_kind(line: str, query: str) -> bool:
    """Whether a line holds a value of the kind the question asks for (any line, when it asks for no kind)."""
    kinds = asked_kinds(query)
    return not kinds or kind_fits(values(line) - values(query), line, kinds)


def deciding_line(query: str, passages: list) -> tuple[str, int] | None:
    """The passage line that decides a question: a row it names, else most shared terms; and its passage."""
    found = _best_line(_terms(query), passages, lambda p: named_rows(query, p.text))
    return (found[1], found[2]) if found and found[0] >= 2 else None


def quote_verdict(text: str, passages: list, query: str, lang: str) -> tuple[str, bool]:
    """For a yes/no question: the model's verdict sentences give way to the deciding line, quoted.

    Returns (text, changed). Passages should be the cited ones, best first.
    """
    if not is_yes_no(query) or not passages:
        return text, False
    found = deciding_line(query, passages)
    if not found:
        return text, False
    line, n = found
    quote = _quote(line, n, lang)
    out, placed = [], False
    for sentences in _split(text):
        kept = []
        for s in sentences:
            if VERDICT.match(_CITED.sub("", s)):
                if not placed:
                    kept.append(quote + ("。" if lang == "zh" else ". "))
                    placed = True
                continue  # a second verdict adds nothing the quote does not say
            kept.append(s)
        out.append("".join(kept).rstrip())
    text = "\n".join(x for x in out if x.strip())
    if not placed and line not in text:
        text = quote + ("。" if lang == "zh" else ".") + "\n" + text
    return text.strip(), True
