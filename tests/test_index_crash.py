"""kill -9 of `kbgate index` mid-build (while it embeds, and while it writes the version's files): the
running service keeps serving the previous version, that version still loads, and the next run completes
and is served. The build runs as its own process, as an operator runs it, slowed at one step so the
kill lands inside it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from index_fixtures import write_kb
from reload_helpers import ROOT, Load, kbgate_index, load_served, make_wiki, pages_found, serve, served_version, wait_for
from indexer.embedders import HashEmbedder
from indexer.index import load_index
from indexer.store import build_index
from indexer.versions import MANIFEST, current_version
from kbgate.config import load_config

# `kbgate index` with one step slowed: it prints MARK on stderr when the kill can land, then goes on slowly
SLOWED = r"""
import sys, time
from indexer import embedders, store
step, args = sys.argv[1], sys.argv[2:]
if step == "embedding":
    real = embedders.HashEmbedder.embed
    def embed(self, texts):
        print("MARK embedding", file=sys.stderr, flush=True)
        time.sleep(0.2)
        return real(self, texts)
    embedders.HashEmbedder.embed = embed
else:
    real = store.build_bm25
    def build_bm25(texts):
        print("MARK writing", file=sys.stderr, flush=True)
        time.sleep(5)  # long enough that the kill lands before the manifest is written
        return real(texts)
    store.build_bm25 = build_bm25
from kbgate.cli import main
main(args, prog_name="kbgate")
"""

NEW_PAGES = {f"ops/runbook-{i}.md": f"# Runbook {i}\n\n## Step\n\nRestart the walrus-{i} service.\n" for i in range(30)}


@pytest.mark.parametrize("step", ["embedding", "writing"])
def test_kill_9_mid_build_keeps_the_previous_version_served_and_a_rerun_completes(tmp_path, monkeypatch, step):
    from web.server import stop

    config = make_wiki(tmp_path, check_s=0.1)
    cfg, index_dir = load_config(config), tmp_path / ".index"
    v1 = build_index(cfg, tmp_path / "kb", index_dir, HashEmbedder(64), progress=False).version
    services = load_served(config, monkeypatch)
    server, base = serve(services)
    load = Load(base, clients=2).start()
    try:
        write_kb(tmp_path / "kb", NEW_PAGES)
        proc = subprocess.Popen([sys.executable, "-c", SLOWED, step, "--config", str(config), "index"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
        reader.start()
        wait_for(lambda: any(f"MARK {step}" in x for x in err), 60, f"the build to reach {step} ({err})")
        if step == "embedding":
            wait_for(lambda: any("embedding (hash-64)" in x for x in err), 10, "its progress bar")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        reader.join(10)

        partial = [p for p in index_dir.glob("v-*") if p.name != v1]
        assert len(partial) == 1 and not (partial[0] / MANIFEST).exists()  # killed inside the build, truly
        assert current_version(index_dir) == v1
        assert load_index(index_dir, HashEmbedder(64)).version == v1  # still loadable
        n = len(load.results)
        wait_for(lambda: len(load.results) >= n + 10, 30, "answers after the kill")
        assert served_version(base) == v1 and services.reloader.last is None  # nothing was swapped in

        r = kbgate_index(config)  # the re-run: the lock the killed build held is gone with it
        assert r.returncode == 0 and "indexed 33 pages" in r.stdout, r.stderr
        v2 = current_version(index_dir)
        assert v2 != v1 and not partial[0].exists()  # its leftover is pruned
        wait_for(lambda: served_version(base) == v2, 20, f"{v2} served")
        assert "ops/runbook-7" in pages_found(base, "restart the walrus-7 service")
    finally:
        load.stop()
        stop(server)
    assert load.errors() == []
    assert [v for _, v in load.versions] == [v1, v2]
