"""Shared by the hot-reload and index-crash tests: a wiki + config in a tmp folder, `kbgate index` as a
subprocess, a served app over the fake engine with hot reload on, and a client loop that records everything."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from fake_engine import FakeEngine
from index_fixtures import SMALL_KB, write_kb

ROOT = Path(__file__).resolve().parent.parent
REPLY = "See the wiki [1]."  # cited: the pipeline answers with its passages as sources


def make_wiki(folder: Path, check_s: float = 0.1, debounce_s: float = 0.3, extra: str = "") -> Path:
    """SMALL_KB under folder/kb and a config.toml (hash embedder, index in folder/.index); return the config."""
    write_kb(folder / "kb", SMALL_KB)
    path = folder / "config.toml"
    path.write_text(f'[index]\nkb_dir = "kb"\ndir = ".index"\nreload_check_s = {check_s}\n'
                    f'watch_debounce_s = {debounce_s}\n\n'
                    f'[embedder]\nname = "hash-64"\nbatch_size = 2\n\n'
                    f'[answer]\nmin_score = 0.0\nverify_citations = false\n{extra}', encoding="utf-8")
    return path


def kbgate_index(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`kbgate index` as an operator runs it: its own process, the real CLI."""
    return subprocess.run([sys.executable, "-m", "kbgate.cli", "--config", str(config), "index", "-q", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def load_served(config: Path, monkeypatch, reply: str = REPLY, delay: float = 0.0, **kw):
    """kbgate.service.load_services as `kbgate serve` calls it, the language model swapped for the fake one."""
    import kbgate.engines
    from kbgate.config import load_config
    from kbgate.service import load_services

    monkeypatch.setattr(kbgate.engines, "load_engine", lambda cfg: FakeEngine(reply, delay))
    return load_services(load_config(config), **kw)


def serve(services):
    """The app through a real waitress server in a thread: (server, base url)."""
    from web import create_app
    from web.server import serve_in_thread

    return serve_in_thread(create_app(services.cfg, services=services))


def served_version(base: str) -> str:
    return requests.get(base + "/readyz", timeout=10).json()["index"]["version"]


def wait_for(cond, timeout: float, what: str, every: float = 0.05):
    """Poll cond() until it is truthy (return it) or fail after timeout seconds naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def pages_found(base: str, query: str) -> list[str]:
    body = requests.post(base + "/api/search", json={"query": query}, timeout=30).json()
    return [s["page"] for s in body["sources"] + body["suggestions"]]


@dataclass
class Load:
    """Clients looping on /api/search and one poller of /readyz, until stop()."""
    base: str
    clients: int = 4
    queries: tuple = ("VPN 内网打不开", "annual leave Workday", "printer follow-me macOS", "zephyr quokka rota")
    results: list = field(default_factory=list)  # (start, end, status or exception text)
    versions: list = field(default_factory=list)  # (time, version) each time /readyz named a new one
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)

    def start(self) -> "Load":
        for n in range(self.clients):
            self._threads.append(threading.Thread(target=self._client, args=(n,), daemon=True))
        self._threads.append(threading.Thread(target=self._poll, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def _client(self, n: int) -> None:
        session, i = requests.Session(), n
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = session.post(self.base + "/api/search", json={"query": self.queries[i % len(self.queries)]},
                                 timeout=30)
                outcome = r.status_code if r.status_code != 200 or "answer" in r.json() else "no answer field"
            except (requests.RequestException, ValueError) as e:
                outcome = f"{type(e).__name__}: {e}"
            self.results.append((t0, time.monotonic(), outcome))
            i += 1

    def _poll(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                v = session.get(self.base + "/readyz", timeout=10).json()["index"]["version"]
            except (requests.RequestException, KeyError, ValueError) as e:
                v = f"error: {e}"
            if not self.versions or self.versions[-1][1] != v:
                self.versions.append((time.monotonic(), v))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def errors(self) -> list:
        return [r for r in self.results if r[2] != 200]
