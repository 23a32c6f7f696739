"""`kbgate eval`: measure retrieval, the sentiment gate and whole answers on labelled JSON-lines files.

Shared here: reading such a file with a clear error naming the line, and a plain table.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path

from kbgate.errors import BadInput


def read_jsonl(path: str | Path, required: dict[str, type | tuple], split: str | None = None) -> list[dict]:
    """Rows of a JSON-lines file, each an object holding `required` {field: type}; only `split`'s rows if given.

    Raises BadInput naming the file and line for invalid JSON, a missing or mistyped field,
    or an empty file (blank lines are skipped). Each row gets "_line", its line number.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise BadInput(f"{path}:{i}: each line must be a JSON object, got {type(row).__name__}")
        for field, typ in required.items():
            if field not in row:
                raise BadInput(f"{path}:{i}: missing field {field!r} (each line needs {', '.join(required)})")
            if not isinstance(row[field], typ) or isinstance(row[field], str) and not row[field].strip():
                want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
                raise BadInput(f"{path}:{i}: field {field!r} must be a non-empty {want}, got {row[field]!r}")
        row["_line"] = i
        rows.append(row)
    if not rows:
        raise BadInput(f"{path}: the file has no rows")
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise BadInput(f"{path}: no row has \"split\": {split!r}")
    return rows


def check_pages(rows: list[dict], known: set[str], path, field: str = "pages") -> None:
    """Raise BadInput naming the first line whose expected page is not in the wiki."""
    for r in rows:
        pages = r.get(field) or []
        for p in [pages] if isinstance(pages, str) else pages:
            if p not in known:
                close = difflib.get_close_matches(p, sorted(known), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise BadInput(f"{path}:{r['_line']}: unknown page id {p!r} (not in the wiki's index){hint}")


def pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.0f}%)" if d else "-"


def table(rows, header) -> str:
    """A markdown table (pipes in cells escaped)."""
    cell = lambda c: str(c).replace("|", "/").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])
