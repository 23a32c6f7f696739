"""Read a folder of markdown pages (recursively) into `Page` values.

A page's id is its path under the folder without `.md`, with forward slashes
(`it/vpn`). YAML front matter between `---` lines gives `title`, `tags` and
`type`; `audience` (who may read it) with the folders' `_access.yml` defaults is
resolved by `indexer.audience`; the rest of it is kept in `meta`. Problems with
one file never stop the others: broken front matter -> the page is read without
it; a file that is not UTF-8 or cannot be read -> skipped. Each such case adds a
warning naming the file. Access problems are the exception: a bad audience, a
bad `_access.yml`, or broken front matter that sets an audience is a BadInput
(indexing it unrestricted would leak it).

Not handled: TOML (`+++`) front matter, setext (underlined) H1 titles, symlink loops.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from indexer.audience import folder_audience, folder_defaults, mentions_audience, parse_audience
from indexer.errors import BadInput

log = logging.getLogger("indexer")

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)
_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass(frozen=True)
class Page:
    id: str  # "it/vpn"
    path: str  # "it/vpn.md", relative to the wiki folder
    title: str
    tags: tuple[str, ...]
    type: str  # "troubleshooting" or ""
    text: str  # markdown body, front matter removed
    sha256: str  # of the file's bytes
    meta: dict = field(default_factory=dict, compare=False)  # the rest of the front matter (owner, updated...)
    audience: tuple[str, ...] = ()  # groups that may read it (any one suffices); () = unrestricted


def split_front_matter(raw: str) -> tuple[dict | None, str, str | None]:
    """Split `raw` into (front matter or None, body, problem or None)."""
    if not raw.startswith("---"):
        return None, raw, None
    m = _FRONT.match(raw)
    if not m:
        return None, raw, "front matter has no closing '---'"
    body = raw[m.end():]
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, body, f"front matter is not valid YAML ({first})"
    if data is None:
        return {}, body, None
    if not isinstance(data, dict):
        return None, body, "front matter is not a mapping of keys to values"
    return data, body, None


def _tags(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(t for t in (str(v).strip() for v in value) if t)


def parse_page(rel: str, data: bytes, default_audience: tuple[str, ...] = ()) -> tuple[Page, str | None]:
    """Build a Page from a file's bytes; return it with a warning or None (raises UnicodeDecodeError, BadInput)."""
    raw = data.decode("utf-8").lstrip("\ufeff")
    meta, body, problem = split_front_matter(raw)
    if problem and mentions_audience(raw[:len(raw) - len(body)] or raw):  # the front matter part
        raise BadInput(f"{rel}: {problem}, and it sets an audience: fix the front matter "
                       f"(the page is not indexed without its restriction)")
    meta = meta or {}
    audience = parse_audience(meta["audience"], rel) if "audience" in meta else tuple(default_audience)
    warning = f"{rel}: {problem}; indexed without front matter" if problem else None
    h1 = _H1.search(body)
    stem = rel.rsplit("/", 1)[-1][:-3]
    title = str(meta.get("title") or "").strip() or (h1.group(1).strip() if h1 else stem)
    page_type = str(meta.get("type") or "").strip().lower()
    rest = {k: v if isinstance(v, (str, int, float, bool, list)) or v is None else str(v)
            for k, v in meta.items() if k not in ("title", "tags", "type", "audience")}
    page = Page(id=rel[:-3], path=rel, title=title, tags=_tags(meta.get("tags")), type=page_type,
                text=body, sha256=hashlib.sha256(data).hexdigest(), meta=rest, audience=audience)
    return page, warning


def read_pages(kb_dir: str | Path) -> tuple[list[Page], list[str]]:
    """Read every `*.md` under kb_dir; return (pages sorted by id, warnings); BadInput if none."""
    root = Path(kb_dir)
    if not root.is_dir():
        raise BadInput(f"wiki folder {root} does not exist or is not a folder")
    defaults = folder_defaults(root)  # BadInput naming a bad _access.yml
    pages: list[Page] = []
    warnings: list[str] = []
    for f in sorted(root.rglob("*.md")):
        rel = f.relative_to(root).as_posix()
        if not f.is_file() or any(part.startswith(".") for part in Path(rel).parts):
            continue  # hidden folders (.git, editors' swap dirs) are not wiki pages
        try:
            page, warning = parse_page(rel, f.read_bytes(), folder_audience(defaults, rel))
        except UnicodeDecodeError as e:
            warnings.append(f"{rel}: not UTF-8 text (byte {e.start}); skipped")
            continue
        except OSError as e:
            warnings.append(f"{rel}: cannot be read ({e.strerror or e}); skipped")
            continue
        if warning:
            warnings.append(warning)
        pages.append(page)
    for w in warnings:
        log.warning("warning: %s", w)
    if not pages and warnings:
        raise BadInput(f"no readable markdown pages in {root}: {len(warnings)} skipped ({warnings[0]}"
                       + (", ..." if len(warnings) > 1 else "") + ")")
    if not pages:
        raise BadInput(f"no markdown pages (*.md) found in {root}")
    return pages, warnings
