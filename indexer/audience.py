"""Who may read a page: its front matter `audience`, else the nearest folder's `_access.yml`, else everyone.

    kb/hr/confidential/_access.yml     audience: [hr]
    kb/eng/break-glass.md              ---
                                       audience: [oncall, sre]
                                       ---

A page's audience is a sorted tuple of group names; any listed group may read
it; () means no restriction. The page's own `audience` replaces its folder's
default (it is not merged); the nearest `_access.yml` (the page's folder, then
each parent up to the wiki folder) gives the default. What a caller with no
groups or no identity may read is the application's rule (its caller type).

Fail closed: a malformed audience value or `_access.yml`, an unknown key in
`_access.yml` (a typo like `audiance` would open the folder), or broken front
matter that mentions `audience` is a `BadInput` naming the file, never a page
indexed without its restriction.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import yaml

from indexer.errors import BadInput

ACCESS_FILE = "_access.yml"
GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")
_HINT = "write e.g. `audience: [hr, oncall]` (group names: letters, digits, _ . @ : -)"


def parse_audience(value, where: str) -> tuple[str, ...]:
    """Validate an audience (one group name, 'a, b', or a list of names) into a sorted tuple; BadInput naming `where`."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list):
        items = value
    elif value is None:
        items = []
    else:
        raise BadInput(f"{where}: audience must be a group name or a list of group names, "
                       f"got {type(value).__name__} {value!r}; {_HINT}")
    groups = []
    for item in items:
        name = item.strip() if isinstance(item, str) else item
        if not isinstance(name, str) or not GROUP.match(name):
            raise BadInput(f"{where}: audience entry {item!r} is not a group name; {_HINT}")
        groups.append(name)
    if not groups:
        raise BadInput(f"{where}: audience is empty; list at least one group, or remove the key "
                       f"(then the folder's {ACCESS_FILE}, if any, decides); {_HINT}")
    return tuple(sorted(set(groups)))


def read_access_file(path: Path, rel: str) -> tuple[str, ...]:
    """Read one `_access.yml` (a mapping with the single key `audience`); BadInput naming `rel`."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{rel}: cannot be read ({e}); fix or delete it") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"{rel}: not valid YAML ({first}); {_HINT}") from None
    if not isinstance(data, dict) or "audience" not in data:
        raise BadInput(f"{rel}: must be a mapping with the key `audience`; {_HINT}")
    unknown = sorted(str(k) for k in data if k != "audience")
    if unknown:
        raise BadInput(f"{rel}: unknown key(s) {', '.join(unknown)} (only `audience` is read); {_HINT}")
    return parse_audience(data["audience"], rel)


def folder_defaults(root: Path) -> dict[str, tuple[str, ...]]:
    """Every `_access.yml` under root: {folder relative to root ("" = root itself): audience}."""
    out = {}
    for f in sorted(root.rglob(ACCESS_FILE)):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not any(part.startswith(".") for part in PurePosixPath(rel).parts):
            folder = PurePosixPath(rel).parent.as_posix()
            out["" if folder == "." else folder] = read_access_file(f, rel)
    return out


def folder_audience(defaults: dict[str, tuple[str, ...]], page_rel: str) -> tuple[str, ...]:
    """The default audience of a page at `page_rel` ("hr/confidential/x.md"): the nearest folder's, else ()."""
    for folder in PurePosixPath(page_rel).parents:
        key = "" if folder.as_posix() == "." else folder.as_posix()
        if key in defaults:
            return defaults[key]
    return ()


_MENTIONS = re.compile(r"^[ \t]*audience[ \t]*:", re.MULTILINE)


def mentions_audience(front: str) -> bool:
    """Whether unparseable front matter text tries to set an audience (then the page must not go in unrestricted)."""
    return _MENTIONS.search(front) is not None
