"""Cut a markdown body into headings and atomic blocks (paragraph, list item, code, table).

Pure and line-based, just enough for chunking: a fenced code block (``` or ~~~,
indented or not, up to its closing fence) and a table (consecutive `|` lines)
are single blocks, so a `# comment` inside a fence is never a heading. Other
blocks end at blank lines or where a new list item starts.

Not handled: setext headings (`===` underlines), indented (4-space) code blocks
without fences, HTML blocks (they pass through as paragraphs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$|^ {0,3}(#{1,6})[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+")
_TABLE = re.compile(r"^[ \t]*\|")
_SENTENCE = re.compile(r"(?<=[。！？；!?;])|(?<=[.:])(?=\s)")


@dataclass(frozen=True)
class Heading:
    level: int  # 1..6
    text: str  # as written, trailing #s removed


@dataclass(frozen=True)
class Block:
    kind: str  # "para" | "item" | "code" | "table"
    text: str

    @property
    def splittable(self) -> bool:
        """Prose may be cut at sentence ends; code and tables never."""
        return self.kind in ("para", "item")


def parse(body: str) -> list[Heading | Block]:
    """Return the headings and blocks of a markdown body, in order."""
    lines = body.splitlines()
    out: list[Heading | Block] = []
    buf: list[str] = []
    kind = "para"

    def flush():
        nonlocal buf
        text = "\n".join(buf).strip("\n")
        if text.strip():
            out.append(Block(kind, text))
        buf = []

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            flush()
            mark = fence.group(1)
            j = i + 1
            close = re.compile(rf"^[ \t]*{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
            while j < len(lines) and not close.match(lines[j]):
                j += 1
            kind, buf = "code", lines[i:j + 1]  # an unclosed fence runs to the end, as in CommonMark
            flush()
            kind, i = "para", j + 1
            continue
        if _TABLE.match(line):
            flush()
            j = i
            while j < len(lines) and _TABLE.match(lines[j]):
                j += 1
            kind, buf = "table", lines[i:j]
            flush()
            kind, i = "para", j
            continue
        h = _HEADING.match(line)
        if h:
            flush()
            out.append(Heading(len(h.group(1) or h.group(3)), (h.group(2) or "").strip()))
        elif not line.strip():
            flush()
            kind = "para"
        elif _ITEM.match(line) and not (kind == "item" and line[:1] in " \t" and buf and _indent(line) > _indent(buf[0])):
            flush()
            kind, buf = "item", [line]
        else:
            buf.append(line)
        i += 1
    flush()
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def sentences(text: str) -> list[str]:
    """Split prose after sentence-ending punctuation (Chinese or Latin); pieces rejoin to `text`."""
    return [s for s in _SENTENCE.split(text) if s]
