"""Index build: incremental reuse, deletions, crash safety, manifest checks, bad input, CLI."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from index_fixtures import SMALL_KB, CountingEmbedder, write_kb

from kbgate.index_cli import index_cmd, search_cmd
from indexer.embedders import HashEmbedder
from indexer.index import load_index
from indexer.pages import read_pages
from indexer.store import build_index
from kbgate.errors import BadInput, IndexUnavailable, NotFound
from kbgate.retrieval import Retriever


def test_build_writes_a_complete_version(index_cfg, small_kb, tmp_path, hash_embedder):
    s = build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    assert (s.pages, s.embedded, s.reused, s.removed, s.up_to_date) == (3, s.chunks, 0, 0, False)
    vdir = tmp_path / "ix" / s.version
    assert (tmp_path / "ix" / "CURRENT").read_text().strip() == s.version
    assert {p.name for p in vdir.iterdir()} >= {"manifest.json", "chunks.jsonl", "pages.jsonl", "vectors.faiss", "bm25"}
    m = json.loads((vdir / "manifest.json").read_text())
    assert m["embedder"] == {"name": "hash-64", "dim": 64, "languages": ["en", "zh"]}
    assert m["chunk_count"] == s.chunks and set(m["pages"]) == {"it/vpn", "it/printers", "hr/leave"}
    ix = load_index(tmp_path / "ix", hash_embedder)
    assert ix.get_page("it/vpn").title == "VPN 远程访问指南" and ix.get_page("it/vpn").path == "it/vpn.md"
    assert "# VPN 远程访问指南" in ix.get_page("it/vpn").text
    assert [p.id for p in ix.page_list()] == ["hr/leave", "it/printers", "it/vpn"]
    with pytest.raises(NotFound):
        ix.get_page("nope")
    assert np.allclose(np.linalg.norm(ix.vectors(), axis=1), 1, atol=1e-5)


def test_unchanged_wiki_publishes_nothing(index_cfg, small_kb, tmp_path, hash_embedder):
    first = build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    counting = CountingEmbedder(hash_embedder)
    again = build_index(index_cfg, small_kb, tmp_path / "ix", counting, progress=False)
    assert again.up_to_date and again.version == first.version and counting.calls == 0
    assert "up to date" in again.describe()
    assert len(list((tmp_path / "ix").glob("v-*"))) == 1


def test_editing_one_page_embeds_only_its_changed_chunks(index_cfg, small_kb, tmp_path, hash_embedder):
    build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    vpn = small_kb / "it/vpn.md"
    vpn.write_text(vpn.read_text(encoding="utf-8").replace("检查 DNS 设置", "检查 DNS 和路由设置"), encoding="utf-8")
    counting = CountingEmbedder(hash_embedder)
    s = build_index(index_cfg, small_kb, tmp_path / "ix", counting, progress=False)
    assert s.embedded == 1 and len(counting.texts) == 1, (s, counting.texts)
    assert "检查 DNS 和路由设置" in counting.texts[0]
    assert (s.reused, s.removed) == (s.chunks - 1, 1)
    ix = load_index(tmp_path / "ix", hash_embedder)
    assert np.allclose(ix.vectors(), hash_embedder.embed([c.embed_text for c in ix.chunks]), atol=1e-6)


def test_deleted_page_leaves_the_index(index_cfg, small_kb, tmp_path, hash_embedder):
    before = build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    n_printers = sum(c.page == "it/printers" for c in load_index(tmp_path / "ix").chunks)
    (small_kb / "it/printers.md").unlink()
    s = build_index(index_cfg, small_kb, tmp_path / "ix", CountingEmbedder(hash_embedder), progress=False)
    assert (s.embedded, s.removed, s.chunks) == (0, n_printers, before.chunks - n_printers)
    ix = load_index(tmp_path / "ix", hash_embedder)
    assert all(c.page != "it/printers" for c in ix.chunks)
    assert [h.page for h in Retriever(ix, hash_embedder).search("printer follow-me", 5)].count("it/printers") == 0


def test_crash_mid_build_keeps_previous_version(index_cfg, small_kb, tmp_path, hash_embedder):
    ix_dir = tmp_path / "ix"
    first = build_index(index_cfg, small_kb, ix_dir, hash_embedder, progress=False)
    before = [h.chunk_id for h in Retriever(load_index(ix_dir, hash_embedder), hash_embedder).search("VPN 内网", 3)]
    write_kb(small_kb, {"it/new.md": "# New\n\n" + "\n\n".join(f"## S{i}\n\ntext {i}" for i in range(8))})
    crashing = CountingEmbedder(hash_embedder, fail_after_calls=2)  # batch_size 2: dies on the 3rd batch
    with pytest.raises(KeyboardInterrupt):
        build_index(index_cfg, small_kb, ix_dir, crashing, progress=False)
    assert crashing.calls == 2
    assert (ix_dir / "CURRENT").read_text().strip() == first.version
    assert [p.name for p in ix_dir.glob("v-*")] == [first.version]  # the partial folder is gone
    after = [h.chunk_id for h in Retriever(load_index(ix_dir, hash_embedder), hash_embedder).search("VPN 内网", 3)]
    assert after == before


def test_old_versions_are_pruned(index_cfg, small_kb, tmp_path, hash_embedder):
    cfg = index_cfg.replace(index={"keep_versions": 1})
    versions = []
    for i in range(4):
        write_kb(small_kb, {"hr/leave.md": SMALL_KB["hr/leave.md"] + f"\nrev {i}\n"})
        versions.append(build_index(cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False).version)
    assert sorted(p.name for p in (tmp_path / "ix").glob("v-*")) == sorted(versions[-2:])


@pytest.mark.parametrize("other", [HashEmbedder(dim=64, name="other-model"), HashEmbedder(dim=32, name="hash-64")])
def test_manifest_mismatch_is_refused_with_a_fix(index_cfg, small_kb, tmp_path, hash_embedder, other):
    build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    with pytest.raises(IndexUnavailable) as e:
        load_index(tmp_path / "ix", other)
    msg = str(e.value)
    assert "hash-64" in msg and "kbgate index" in msg and str(other.dim) in msg


def test_missing_index_says_what_to_run(tmp_path, hash_embedder):
    with pytest.raises(IndexUnavailable, match="no index in .*kbgate index"):
        load_index(tmp_path / "nothing", hash_embedder)


def test_other_format_version_is_refused(index_cfg, small_kb, tmp_path, hash_embedder):
    s = build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    mpath = tmp_path / "ix" / s.version / "manifest.json"
    mpath.write_text(json.dumps({**json.loads(mpath.read_text()), "format_version": 99}))
    with pytest.raises(IndexUnavailable, match="format version 99.*kbgate index"):
        load_index(tmp_path / "ix", hash_embedder)


def test_missing_or_empty_folder_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        read_pages(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not markdown")
    with pytest.raises(BadInput, match="no markdown pages"):
        read_pages(tmp_path / "empty")
    write_kb(tmp_path / "bad", {"a.md": b"\xff\xfe\x00junk"})
    with pytest.raises(BadInput, match=r"no readable markdown pages .*\(a.md: not UTF-8"):
        read_pages(tmp_path / "bad")


def test_bad_files_are_skipped_or_read_without_front_matter(index_cfg, small_kb, tmp_path, hash_embedder):
    write_kb(small_kb, {"it/latin1.md": "# Caf\xe9\n\nna\xefve".encode("latin-1"),
                        "it/broken.md": "---\ntitle: [unclosed\ntags: x\n---\n# Broken FM\n\nstill indexed\n"})
    s = build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    assert any("it/latin1.md" in w and "UTF-8" in w and "skipped" in w for w in s.warnings), s.warnings
    assert any("it/broken.md" in w and "front matter" in w for w in s.warnings), s.warnings
    ix = load_index(tmp_path / "ix", hash_embedder)
    assert "it/latin1" not in ix.pages and ix.get_page("it/broken").title == "Broken FM"
    assert any("still indexed" in c.text for c in ix.chunks)


def test_cli_index_and_search(index_cfg, small_kb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text('[embedder]\nname = "hash-64"\n')
    write_kb(small_kb, {"it/bad.md": b"\xff\xfe junk"})
    runner = CliRunner()
    r = runner.invoke(index_cmd, ["--kb", str(small_kb), "--index", "ix", "--config", "config.toml", "-q"])
    assert r.exit_code == 0, r.output
    assert "indexed 3 pages" in r.stdout and "it/bad.md" in r.stderr
    r = runner.invoke(index_cmd, ["--kb", str(small_kb), "--index", "ix", "--config", "config.toml", "-q"])
    assert r.exit_code == 0 and "up to date" in r.stdout
    r = runner.invoke(search_cmd, ["annual leave", "--index", "ix", "--config", "config.toml", "-k", "2"])
    assert r.exit_code == 0 and "hr/leave.md" in r.stdout


def test_cli_errors_are_one_clean_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text('[embedder]\nname = "hash-64"\n')
    runner = CliRunner()
    r = runner.invoke(index_cmd, ["--kb", "missing", "--index", "ix", "--config", "config.toml"])
    assert r.exit_code == 1 and "missing does not exist" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(search_cmd, ["vpn", "--index", "ix", "--config", "config.toml"])
    assert r.exit_code == 1 and "kbgate index" in r.stderr and "Traceback" not in r.output


def test_two_embedders_each_keep_and_reuse_their_own_vectors(index_cfg, small_kb, tmp_path, hash_embedder):
    from indexer.embedders import EmbedderSet
    second = HashEmbedder(dim=32, languages=("en",), name="hash-32")
    s = build_index(index_cfg, small_kb, tmp_path / "ix", EmbedderSet([hash_embedder, second]), progress=False)
    m = json.loads((tmp_path / "ix" / s.version / "manifest.json").read_text())
    assert [(e["name"], e["dim"], e["file"]) for e in m["embedders"]] == \
        [("hash-64", 64, "vectors.faiss"), ("hash-32", 32, "vectors-2.faiss")]
    assert m["embedder"]["name"] == "hash-64" and s.embedded == 2 * s.chunks
    vpn = small_kb / "it/vpn.md"
    vpn.write_text(vpn.read_text(encoding="utf-8").replace("检查 DNS 设置", "检查 DNS 和路由设置"), encoding="utf-8")
    a, b = CountingEmbedder(hash_embedder), CountingEmbedder(second)
    s2 = build_index(index_cfg, small_kb, tmp_path / "ix", EmbedderSet([a, b]), progress=False)
    assert (len(a.texts), len(b.texts), s2.embedded) == (1, 1, 2)
    ix = load_index(tmp_path / "ix", EmbedderSet([hash_embedder, second]))
    assert np.allclose(ix.vectors("hash-32"), second.embed([c.embed_text for c in ix.chunks]), atol=1e-6)
    # the index holds both: asking for only one of them is another vector space set-up, refused with the fix
    with pytest.raises(IndexUnavailable, match="hash-32.*kbgate index"):
        load_index(tmp_path / "ix", hash_embedder)
    # adding an embedder later embeds only for the new one
    third = CountingEmbedder(HashEmbedder(dim=16, name="hash-16"))
    s3 = build_index(index_cfg, small_kb, tmp_path / "ix", EmbedderSet([hash_embedder, second, third]),
                     progress=False)
    assert s3.embedded == len(third.texts) == s3.chunks


def test_configured_extra_embedders_make_an_embedder_set(index_cfg):
    from indexer.embedders import EmbedderSet, LazyEmbedder, load_embedder
    cfg = index_cfg.replace(embedder={"name": "hash-64", "extra": ["hash-32", "hash-64"]})
    e = load_embedder(cfg, lazy=True)
    assert isinstance(e, EmbedderSet) and [m.name for m in e.members] == ["hash-64", "hash-32"]
    assert all(isinstance(m, LazyEmbedder) and not m.loaded for m in e.members)
    assert e.members[1].dim == 32
    assert load_embedder(index_cfg.replace(embedder={"name": "hash-64", "extra": []})).name == "hash-64"
