"""`kbgate serve` never runs half alive: with no index it builds one from [index] kb_dir (with progress),
with nothing to build from it exits non-zero with the hint, and a failed model load stops the server."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from index_fixtures import SMALL_KB, write_kb
from kbgate.config import load_config
from kbgate.errors import IndexUnavailable, ModelError
from indexer.versions import current_version

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, extra: str = "") -> Path:
    path = folder / "config.toml"
    path.write_text(f'[index]\nkb_dir = "kb"\ndir = ".index"\n\n[embedder]\nname = "hash-64"\n{extra}',
                    encoding="utf-8")
    return path


def kbgate(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kbgate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_serve_with_no_index_and_no_wiki_exits_with_the_hint(tmp_path):
    cfg = write_config(tmp_path)
    t0 = time.perf_counter()
    r = kbgate("--config", str(cfg), "serve", "--port", str(free_port()))
    assert r.returncode != 0 and time.perf_counter() - t0 < 60
    assert "there is no index in" in r.stderr and "[index] kb_dir" in r.stderr and "kbgate index" in r.stderr
    assert "Traceback" not in r.stderr and "serving on" not in r.stderr  # it never bound the port


def test_a_missing_index_is_built_from_kb_dir_with_progress(tmp_path, capsys):
    from kbgate.service import ensure_index

    write_kb(tmp_path / "kb", SMALL_KB)
    cfg = load_config(write_config(tmp_path))
    index_dir = ensure_index(cfg)
    assert index_dir == tmp_path / ".index" and current_version(index_dir) is not None
    err = capsys.readouterr().err
    assert "building it from" in err and "%|" in err  # the tqdm bar of the embedding pass
    ensure_index(cfg)  # present now: nothing is rebuilt
    assert "building" not in capsys.readouterr().err


def test_an_empty_wiki_folder_is_the_same_clear_error(tmp_path):
    from kbgate.service import ensure_index

    (tmp_path / "kb").mkdir()
    with pytest.raises(IndexUnavailable, match=r"no markdown pages in .*kb"):
        ensure_index(load_config(write_config(tmp_path)))


def test_a_failed_load_stops_the_server_instead_of_serving_503(tmp_path, monkeypatch):
    from kbgate import service
    from web.server import run

    def broken(cfg, index_dir=None):
        raise IndexUnavailable("the index version v1 is damaged; run `kbgate index`")
    monkeypatch.setattr(service, "load_services", broken)
    port, box = free_port(), {}

    def serve():
        try:
            run(load_config(write_config(tmp_path)), "127.0.0.1", port)
        except Exception as e:
            box["error"] = e
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the server kept running after its load failed"
    assert isinstance(box["error"], ModelError) and "damaged" in box["error"].message
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)


@pytest.mark.slow
def test_serve_builds_the_index_then_answers_with_the_real_model(tmp_path):
    write_kb(tmp_path / "kb", SMALL_KB)
    cfg = write_config(tmp_path, f'\n[model]\nmodels_dir = "{ROOT / ".models"}"\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kbgate.cli", "--config", str(cfg), "serve", "--port", str(port)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline, ready = time.monotonic() + 300, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        assert ready is not None and ready.status_code == 200, proc.poll()
        assert current_version(tmp_path / ".index") is not None
        r = requests.post(f"http://127.0.0.1:{port}/api/sentiment", json={"texts": ["thanks, it works!"]}, timeout=60)
        assert r.status_code == 200
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert "building it from" in err and "Traceback" not in err
