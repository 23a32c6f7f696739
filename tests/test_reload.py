"""Index hot reload: a running service picks up what `kbgate index` publishes, under load, without an error;
a request in flight finishes on its version; a damaged version is refused and the old one kept;
`kbgate index --watch` rebuilds after an edit and stops cleanly on Ctrl-C."""
from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import requests

from index_fixtures import SMALL_KB, write_kb
from reload_helpers import ROOT, Load, kbgate_index, load_served, make_wiki, pages_found, serve, served_version, wait_for
from indexer.embedders import HashEmbedder
from indexer.index import load_index
from indexer.store import build_index
from indexer.versions import current_version, new_version_name, publish
from kbgate.config import load_config

QUOKKA = "# Quokka rota\n\n## Who is on call\n\nThe zephyr quokka rota is kept in the ops calendar.\n"
LEAVE_V2 = (SMALL_KB["hr/leave.md"].replace("25 days", "30 days")
            .replace("ask your manager to approve it manually", "file a ticket with HR operations"))


def test_hot_reload_under_load_serves_each_publish_without_an_error(tmp_path, monkeypatch):
    from web.server import stop

    config = make_wiki(tmp_path, check_s=0.1)
    index_dir = tmp_path / ".index"
    assert kbgate_index(config).returncode == 0
    v1 = current_version(index_dir)
    services = load_served(config, monkeypatch)  # as `kbgate serve` loads: hot reload on from config
    assert services.reloader is not None and services.reloader.check_s == 0.1
    server, base = serve(services)
    load = Load(base).start()
    try:
        wait_for(lambda: len(load.results) >= 20, 30, "20 answers before the first publish")
        assert served_version(base) == v1 and "ops/quokka" not in pages_found(base, "zephyr quokka rota")
        assert requests.get(base + "/api/docs/ops/quokka", timeout=10).status_code == 404

        write_kb(tmp_path / "kb", {"ops/quokka.md": QUOKKA, "hr/leave.md": LEAVE_V2})
        r = kbgate_index(config)
        assert r.returncode == 0 and "indexed 4 pages" in r.stdout, r.stderr
        v2 = current_version(index_dir)
        wait_for(lambda: served_version(base) == v2, 20, f"{v2} served")
        assert "ops/quokka" in pages_found(base, "zephyr quokka rota")  # the new page's text is findable
        assert requests.get(base + "/api/docs/ops/quokka", timeout=10).status_code == 200
        n = len(load.results)

        write_kb(tmp_path / "kb", {"ops/quokka.md": QUOKKA.replace("zephyr", "kestrel")})
        assert kbgate_index(config).returncode == 0
        v3 = current_version(index_dir)
        wait_for(lambda: served_version(base) == v3, 20, f"{v3} served")
        assert "ops/quokka" in pages_found(base, "kestrel quokka")
        wait_for(lambda: len(load.results) >= n + 20, 30, "20 more answers after the swaps")
    finally:
        load.stop()
        stop(server)
    assert len({v1, v2, v3}) == 3
    assert [v for _, v in load.versions] == [v1, v2, v3]  # /readyz named each once, in order
    assert load.errors() == [] and len(load.results) >= 60


@pytest.mark.parametrize("query,old,new", [
    ("how many days of annual leave", "25 days", "30 days"),  # the answer route
    ("Workday rejects my leave request again!!", "manager", "HR operations"),  # troubleshooting: fix steps looked up
])
def test_a_request_in_flight_finishes_on_the_version_it_started_with(tmp_path, monkeypatch, query, old, new):
    config = make_wiki(tmp_path, check_s=3600)  # checked by hand below
    cfg = load_config(config)
    build_index(cfg, tmp_path / "kb", tmp_path / ".index", HashEmbedder(64), progress=False)
    services = load_served(config, monkeypatch, reply="Everyone gets leave as the wiki says [1]. " * 2, delay=0.005)
    events = services.pipeline.ask(query, stream=True)
    for kind, data in events:
        if kind == "sources":
            break
    v2 = build_index(cfg, write_kb(tmp_path / "kb", {"hr/leave.md": LEAVE_V2}), tmp_path / ".index",
                     HashEmbedder(64), progress=False).version
    assert services.reloader.check_now().ok and services.retriever.index.version == v2
    fresh, touched = services.retriever, []
    for name in ("search", "search_many", "section_text", "steps_section"):  # record every use of the new version
        orig = getattr(fresh, name)
        monkeypatch.setattr(fresh, name, lambda *a, _o=orig, _n=name, **kw: touched.append(_n) or _o(*a, **kw))

    rest = list(events)  # the answer is decoded after the swap
    assert "token" in [k for k, _ in rest] and rest[-1][0] == "done"
    done = rest[-1][1]
    seen = " ".join([s.text for s in done.sources + done.suggestions] + [done.answer])
    assert touched == [] and old in seen and new not in seen
    again = services.pipeline.ask(query)
    seen = " ".join([s.text for s in again.sources + again.suggestions] + [again.answer])
    assert "search_many" in touched and new in seen and old not in seen


def _damage(how: str, index_dir, v1, tmp_path) -> str:
    bad = new_version_name()
    if how == "another embedder":  # built complete and valid, but in another vector space
        other = tmp_path / "other"
        cfg = load_config(tmp_path / "config.toml")
        shutil.copytree(other / build_index(cfg, tmp_path / "kb", other, HashEmbedder(32, name="hash-64"),
                                            progress=False).version, index_dir / bad)
    else:
        shutil.copytree(index_dir / v1, index_dir / bad)
        if how == "truncated vectors":
            (index_dir / bad / "vectors.faiss").write_bytes(b"not a faiss index")
        else:
            (index_dir / bad / "chunks.jsonl").unlink()
    publish(index_dir, bad)
    return bad


@pytest.mark.parametrize("how", ["truncated vectors", "missing chunks", "another embedder"])
def test_a_damaged_version_keeps_the_old_one_served_and_logs_why(tmp_path, monkeypatch, caplog, how):
    from web import create_app

    config = make_wiki(tmp_path, check_s=3600)
    cfg, index_dir = load_config(config), tmp_path / ".index"
    v1 = build_index(cfg, tmp_path / "kb", index_dir, HashEmbedder(64), progress=False).version
    services = load_served(config, monkeypatch)
    bad = _damage(how, index_dir, v1, tmp_path)
    with caplog.at_level(logging.ERROR, logger="kbgate.reload"):
        out = services.reloader.check_now()
    assert not out.ok and out.version == bad and services.retriever.index.version == v1
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "kbgate.reload")
    assert f"index version {bad}" in logged and f"still serving {v1}" in logged and "kbgate index" in logged
    assert ("embedder" if how == "another embedder" else "damaged") in logged

    client = create_app(services.cfg, services=services).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200
    ix = ready.get_json()["index"]
    assert ix["version"] == v1 and ix["reload"]["published"] == bad
    assert ix["reload"]["last_reload"]["ok"] is False and bad not in ix["version"]
    assert client.post("/api/search", json={"query": "annual leave"}).status_code == 200
    assert services.reloader.check_now() is out  # not retried until CURRENT is written again

    # what the log says to run publishes a good version, even with no page edited (a damaged one is rebuilt;
    # "another embedder" here only differs in dimension, which the build does not check without loading a model)
    edits = {"ops/quokka.md": QUOKKA} if how == "another embedder" else {}
    s = build_index(cfg, write_kb(tmp_path / "kb", edits), index_dir, HashEmbedder(64), progress=False)
    v3 = s.version
    assert not s.up_to_date and v3 not in (v1, bad)
    assert services.reloader.check_now().ok and services.retriever.index.version == v3
    assert client.get("/readyz").get_json()["index"]["version"] == v3


def test_reload_check_s_0_is_off_and_checks_are_rate_limited(tmp_path, monkeypatch):
    import kbgate.reload

    config = make_wiki(tmp_path, check_s=0)
    cfg = load_config(config)
    v1 = build_index(cfg, tmp_path / "kb", tmp_path / ".index", HashEmbedder(64), progress=False).version
    services = load_served(config, monkeypatch)
    assert services.reloader is None and services.index_status()["reload"] == {"check_s": 0}
    services.watch_index(check_s=3600)
    build_index(cfg, write_kb(tmp_path / "kb", {"ops/quokka.md": QUOKKA}), tmp_path / ".index", HashEmbedder(64),
                progress=False)
    stats = []
    real_stat = kbgate.reload.os.stat
    monkeypatch.setattr(kbgate.reload.os, "stat", lambda p, *a, **kw: stats.append(p) or real_stat(p, *a, **kw))
    for _ in range(200):
        assert services.pipeline.retriever.index.version == v1
    assert stats == []  # not due for an hour: not even a stat
    services.reloader.check_now()
    assert stats == [tmp_path / ".index" / "CURRENT"] and services.retriever.index.version != v1


def test_a_batch_run_loads_one_version_for_good(tmp_path, monkeypatch):
    config = make_wiki(tmp_path, check_s=2)
    build_index(load_config(config), tmp_path / "kb", tmp_path / ".index", HashEmbedder(64), progress=False)
    assert load_served(config, monkeypatch).reloader.check_s == 2  # the service default
    assert load_served(config, monkeypatch, reload=False).reloader is None  # e.g. an evaluation run


def test_watch_rebuilds_once_per_burst_of_edits(tmp_path):
    from kbgate.index_watch import watch_wiki

    config = make_wiki(tmp_path)
    cfg, kb, index_dir = load_config(config), tmp_path / "kb", tmp_path / ".index"
    # the folder exists before the watch starts: a file created in a folder made a moment earlier can beat
    # inotify's watch on that folder, and is then indexed (the build scans the wiki) but missing from the
    # change line (seen here 3 times in 5 full runs)
    (kb / "ops").mkdir()
    lines, stop, box = [], threading.Event(), {}
    t = threading.Thread(target=lambda: box.update(builds=watch_wiki(
        cfg, kb, index_dir, HashEmbedder(64), progress=False, echo=lambda m, err=False: lines.append(m), stop=stop,
        debounce_s=1.5)), daemon=True)  # a loaded machine can space one burst's writes by tenths of a second
    t.start()
    try:
        wait_for(lambda: any("watching" in x for x in lines), 30, "the watch to start")
        v1 = current_version(index_dir)
        assert v1 is not None
        for i in range(3):  # an editor saving one page three times, then a new page: one burst
            write_kb(kb, {"hr/leave.md": SMALL_KB["hr/leave.md"] + f"\nrev {i}\n"})
        write_kb(kb, {"ops/quokka.md": QUOKKA, "ops/notes.txt": "not a page"})
        v2 = wait_for(lambda: current_version(index_dir) != v1 and current_version(index_dir), 30, "a rebuild")
        wait_for(lambda: len(lines) >= 3, 5, "the rebuild's line")
        ix = load_index(index_dir)
        assert ix.version == v2 and "ops/quokka" in ix.pages and "rev 2" in ix.pages["hr/leave"].text
        write_kb(kb, {"ops/notes.txt": "still not a page"})  # ignored: no build
        threading.Event().wait(3.0)  # past the debounce: a build would have started
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and box["builds"] == 2, lines
    built = [x for x in lines if "indexed" in x]
    assert len(built) == 2 and "start" in built[0]
    assert "2 files changed (hr/leave.md, ops/quokka.md)" in built[1] and "reused" in built[1]
    assert current_version(index_dir) == v2


def test_kbgate_index_watch_rebuilds_after_an_edit_and_ctrl_c_exits_cleanly(tmp_path):
    config = make_wiki(tmp_path, debounce_s=0.2)
    proc = subprocess.Popen([sys.executable, "-m", "kbgate.cli", "--config", str(config), "index", "--watch", "-q"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, acc=acc: acc.extend(s), daemon=True)
               for s, acc in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    try:
        wait_for(lambda: any("watching" in x for x in err), 60, f"'watching' on stderr ({err})")
        v1 = current_version(tmp_path / ".index")
        write_kb(tmp_path / "kb", {"hr/leave.md": LEAVE_V2})
        wait_for(lambda: any("hr/leave.md changed" in x for x in out), 30, f"the rebuild line ({out}, {err})")
        assert current_version(tmp_path / ".index") not in (None, v1)
        assert "30 days" in load_index(tmp_path / ".index").pages["hr/leave"].text
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
        for r in readers:
            r.join(10)
    text = "".join(err)
    assert rc == 0 and "stopped watching (Ctrl-C)" in text and "Traceback" not in text, text
    assert sum("indexed" in x for x in out) == 2 and "embedded" in out[-1]
