"""Index hot reload: notice a newly published version, load it beside the served one, swap one reference.

`IndexReloader.poll()` is called as requests read the services (kbgate.service.Services):
at most every `[index] reload_check_s` seconds it stats `<index>/CURRENT` (a few µs). When
the pointer changed, one background thread loads that version with the embedders already
loaded (never a second copy of the models), runs one search and one section lookup on it
(so the first request pays no lazy set-up and a version that cannot search is never
served), and hands the new Retriever to `swap` -- a single reference assignment.

A request takes its pipeline (and so its retriever) once, when it starts, and finishes on
that version; the old Index is freed when the last such request ends. Index files are read
into memory at load, so `kbgate index` pruning an old version folder never breaks a
request on it. A version that fails to load (damaged, another embedder) is logged with
why, the served one stays, and nothing is retried until CURRENT is written again.

Not handled: a CURRENT that disappears (the served version stays); several processes
(each reloads on its own check).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from indexer.versions import POINTER, current_version

log = logging.getLogger("kbgate.reload")


@dataclass(frozen=True)
class Outcome:
    """What the last reload attempt did (for /readyz and logs)."""
    version: str  # the version it tried
    ok: bool
    seconds: float  # load + warm-up
    at: float  # time.time() when it finished
    error: str = ""


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class IndexReloader:
    """Watch one index folder's CURRENT pointer and swap a freshly loaded retriever in when it moves."""

    def __init__(self, index_dir: Path, served: Callable[[], object], load: Callable[[], object],
                 swap: Callable[[object], None], check_s: float):
        self.index_dir, self.pointer = Path(index_dir), Path(index_dir) / POINTER
        self.served, self.load, self.swap = served, load, swap  # served(): the Retriever in use now
        self.check_s = check_s
        self.last: Outcome | None = None
        self.published: str | None = current_version(self.index_dir)  # what CURRENT named at the last check
        self._sig = self._stat()
        self._next = time.monotonic() + check_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _stat(self):
        try:
            st = os.stat(self.pointer)
        except FileNotFoundError:
            return None
        # publish() replaces the file (os.replace), so every publish is a new inode
        return st.st_ino, st.st_mtime_ns, st.st_size

    def poll(self) -> None:
        """Cheap, on every request: start a background load when CURRENT moved (checked every check_s)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.check_s  # unlocked: two threads passing at once is harmless (the lock below)
        sig = self._stat()
        if sig is None or sig == self._sig:
            return
        with self._lock:
            if self._thread is not None or sig == self._sig:
                return
            self._thread = threading.Thread(target=self._reload, args=(sig,), name="kbgate-index-reload",
                                            daemon=True)
        self._thread.start()

    def check_now(self, timeout: float = 60.0) -> Outcome | None:
        """Check at once and wait for the load it starts (tests, `kill -HUP`-style callers); the last outcome."""
        self._next = 0.0
        self.poll()
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self.last

    def _reload(self, sig) -> None:
        t0 = time.perf_counter()
        name = current_version(self.index_dir)
        try:
            self.published = name
            old = self.served()
            if name is None or name == old.index.version:
                return
            fresh = self.load()
            _warm(fresh)
            self.swap(fresh)
            took = time.perf_counter() - t0
            self.last = Outcome(fresh.index.version, True, took, time.time())
            log.info("index reloaded: %s -> %s (%d pages, %d chunks) in %.2f s", old.index.version,
                     fresh.index.version, len(fresh.index.pages), len(fresh.index), took)
        except Exception as e:  # noqa: BLE001 -- whatever broke, the served version must stay; logged with why
            self.last = Outcome(name or "?", False, time.perf_counter() - t0, time.time(), _why(e))
            log.error("index version %s in %s was not loaded, still serving %s: %s", name, self.index_dir,
                      self.served().index.version, self.last.error, exc_info=not _known(e))
        finally:
            self._sig = sig
            with self._lock:
                self._thread = None

    def status(self) -> dict:
        """The reload part of /readyz: published version, check interval, last attempt."""
        out = {"published": self.published, "check_s": self.check_s}
        if self.last is not None:
            out["last_reload"] = {"version": self.last.version, "ok": self.last.ok,
                                  "seconds": round(self.last.seconds, 3), "at": _utc(self.last.at),
                                  **({"error": self.last.error} if self.last.error else {})}
        return out


def _known(e: Exception) -> bool:
    from kbgate.errors import KBGateError
    return isinstance(e, KBGateError)


def _why(e: Exception) -> str:
    return e.message if _known(e) else f"{type(e).__name__}: {e}"


def _warm(retriever) -> None:
    """Search the new version once (lazy masks, section table): a version that cannot search is not served."""
    index = retriever.index
    page = next(iter(index.pages.values()), None)
    if page is None:
        return
    retriever.search(page.title or page.id, k=1)
    retriever.steps_section(page.id)
