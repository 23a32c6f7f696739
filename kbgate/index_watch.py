"""`kbgate index --watch`: index the wiki now, then again after each settled burst of page changes.

The folder is watched with `watchfiles` (inotify; set WATCHFILES_FORCE_POLLING=1 where
events do not arrive, e.g. some network or container mounts). Changes are grouped until
the wiki has been quiet for `[index] watch_debounce_s` (an editor saving several files, a
`git pull`), then one incremental build runs: only changed chunks are embedded, with the
embedder loaded once for the whole session, and a running service picks the new version up
(kbgate.reload). Changes made during a build are noticed and trigger the next one.

A failing build (a bad `_access.yml`, an emptied folder) is reported and the watch goes on;
the published version stays. Ctrl-C (KeyboardInterrupt) propagates to the caller: mid-build,
build_index has already removed the partial version.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from indexer.audience import ACCESS_FILE
from kbgate.errors import KBGateError


def is_wiki_file(path: str | Path, root: Path) -> bool:
    """A file that read_pages reads: `*.md` or `_access.yml`, outside hidden folders."""
    p = Path(path)
    try:
        parts = p.relative_to(root).parts
    except ValueError:
        return False
    if any(part.startswith(".") for part in parts):
        return False  # .git, editors' swap folders: never pages
    return p.suffix == ".md" or p.name == ACCESS_FILE


def describe_changes(paths: set[str], root: Path, shown: int = 3) -> str:
    """'it/vpn.md changed', '4 files changed (a.md, b.md, c.md, …)'."""
    rel = sorted(Path(p).relative_to(root).as_posix() for p in paths)
    if len(rel) == 1:
        return f"{rel[0]} changed"
    more = ", …" if len(rel) > shown else ""
    return f"{len(rel)} files changed ({', '.join(rel[:shown])}{more})"


def watch_wiki(cfg, kb_dir: Path, index_dir: Path, embedder, *, progress: bool = True,
               echo: Callable[..., None] | None = None, stop: threading.Event | None = None,
               debounce_s: float | None = None) -> int:
    """Index now, then after every settled batch of changes until `stop` is set; return the builds run."""
    import click
    import watchfiles

    from indexer.store import build_index

    echo = echo or click.echo  # echo(text, err=False)
    root = Path(kb_dir).resolve()
    quiet_ms = max(50, int(1000 * (cfg.index.watch_debounce_s if debounce_s is None else debounce_s)))

    def build(why: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        try:
            summary = build_index(cfg, root, index_dir, embedder, progress=progress)
        except KBGateError as e:  # the published version stays; the next change retries
            echo(f"{stamp} {why}: not indexed: {e.message} (still watching)", err=True)
            return
        for w in summary.warnings:
            echo(f"warning: {w}", err=True)
        echo(f"{stamp} {why}: {summary.describe()}")

    builds = 0
    # The watcher starts first and the first build runs at its first (timeout) yield: edits made
    # during that build, which takes minutes for a large wiki, are then seen and built next.
    # step: the quiet period that ends a burst; debounce: the longest a steady stream of saves is grouped.
    for changes in watchfiles.watch(root, watch_filter=lambda _change, path: is_wiki_file(path, root),
                                    step=quiet_ms, debounce=max(10 * quiet_ms, 1600), stop_event=stop,
                                    rust_timeout=500, yield_on_timeout=True, raise_interrupt=True):
        if builds == 0:
            build("start")
            echo(f"watching {root} for page changes (Ctrl-C stops) ...", err=True)
        elif not changes:
            continue  # the periodic timeout: nothing changed
        else:
            build(describe_changes({path for _change, path in changes}, root))
        builds += 1
    return builds
