"""Per-page audiences: the read rule, front matter and _access.yml defaults and their errors, the index
(stored per chunk and page, in the manifest, no re-embedding on an audience-only change), the CLI."""
import json

import pytest
from click.testing import CliRunner
from index_fixtures import SMALL_KB, CountingEmbedder, write_kb

from indexer.index import load_index
from indexer.pages import read_pages
from indexer.search import bm25_page_search, bm25_search, dense_search
from indexer.store import build_index
from kbgate.access import Caller, anonymous, authenticated, caller_for, parse_groups
from kbgate.config import Config, load_config
from kbgate.errors import BadInput, ConfigError, NotFound
from kbgate.index_cli import search_cmd
from kbgate.retrieval import Retriever

HR_ONLY = {"hr/confidential/_access.yml": "audience: [hr]\n",
           "hr/confidential/bands.md": "---\ntitle: Salary bands\n---\n\n# Salary bands\n\nP5 band 28000 to 44000.\n\n"
                                       "## Fix steps\n\n1. Open Workday.\n2. File a band exception.\n",
           "eng/breakglass.md": "---\ntitle: Break glass\naudience: [oncall, sre]\n---\n\n# Break glass\n\n"
                                "Check out bg-root-prod from the vault.\n"}


@pytest.fixture
def kb(tmp_path):
    return write_kb(tmp_path / "kb", {**SMALL_KB, **HR_ONLY})


def audiences(kb_dir) -> dict:
    return {p.id: p.audience for p in read_pages(kb_dir)[0]}


# --- the rule --------------------------------------------------------------------------------------

def test_who_may_read_what():
    alice, bob = authenticated("alice", ["hr"]), authenticated("bob", "eng, it")
    anon, denied = anonymous("public-only"), anonymous("deny")
    cases = {(): (True, True, True, False), ("hr",): (True, False, False, False),
             ("hr", "oncall"): (True, False, False, False), ("oncall",): (False, False, False, False)}
    for audience, want in cases.items():
        assert tuple(c.may_read(audience) for c in (alice, bob, anon, denied)) == want, audience
    assert bob.groups == {"eng", "it"} and alice.authenticated and not anon.authenticated


def test_a_channel_limits_to_the_exact_intersection_of_rights():
    asker = authenticated("alice", ["hr", "x"])
    channel = Caller("slack:C1", {"eng", "y"})
    both = asker.limited_to(channel)
    assert not both.may_read(("hr",)) and both.may_read(())  # an HR person asking in a public channel
    assert both.may_read(("x", "y"))  # each may read it through another group: the intersection of rights
    assert not asker.limited_to(anonymous("deny")).may_read(())
    assert "limited to slack:C1" in both.describe() and hash(both) == hash(asker.limited_to(channel))


def test_bad_callers_and_policies_are_clear_errors(tmp_path):
    with pytest.raises(BadInput, match="not a group name"):
        parse_groups("hr, bad group")
    with pytest.raises(BadInput, match="non-empty"):
        authenticated("  ")
    with pytest.raises(ConfigError, match=r"\[auth\] anonymous"):
        anonymous("everyone")
    (tmp_path / "c.toml").write_text('[auth]\nanonymous = "open"\n')
    with pytest.raises(ConfigError, match=r"\[auth\] anonymous must be one of 'public-only', 'deny', got 'open'"):
        load_config(tmp_path / "c.toml")
    cfg = Config()
    assert cfg.auth.anonymous == "public-only" and caller_for(cfg) == anonymous()
    assert caller_for(cfg.replace(auth={"anonymous": "deny"})).public is False
    assert caller_for(cfg, "bob", "hr").groups == {"hr"}
    with pytest.raises(BadInput, match="without a user"):
        caller_for(cfg, None, ["hr"])


# --- where an audience comes from ------------------------------------------------------------------

def test_front_matter_then_the_nearest_access_file_then_everyone(kb):
    write_kb(kb, {"hr/confidential/open/_access.yml": "audience: staff\n",
                  "hr/confidential/open/handbook.md": "# Handbook\n\nFor all staff.\n",
                  "hr/confidential/own.md": "---\naudience: hr-leads, payroll\n---\n# Own\n\nOwn audience.\n"})
    got = audiences(kb)
    assert got["hr/confidential/bands"] == ("hr",)  # its folder's default
    assert got["eng/breakglass"] == ("oncall", "sre")  # front matter
    assert got["hr/confidential/open/handbook"] == ("staff",)  # the nearest _access.yml wins
    assert got["hr/confidential/own"] == ("hr-leads", "payroll")  # front matter replaces the folder's default
    assert got["it/vpn"] == () and got["hr/leave"] == ()  # none: unrestricted
    page = next(p for p in read_pages(kb)[0] if p.id == "eng/breakglass")
    assert "audience" not in page.meta


@pytest.mark.parametrize("body, message", [
    ("audience: [hr", "not valid YAML"),
    ("audiance: [hr]\n", "must be a mapping with the key `audience`"),
    ("audience: [hr]\nowner: x\n", "unknown key(s) owner"),
    ("- hr\n", "must be a mapping"),
    ("audience: []\n", "audience is empty"),
    ("audience:\n", "audience is empty"),
    ("audience: [hr, 7]\n", "audience entry 7 is not a group name"),
    ("audience: {hr: true}\n", "must be a group name or a list"),
    ("audience: [the hr team]\n", "'the hr team' is not a group name"),
])
def test_a_bad_access_file_stops_the_build_naming_it(kb, tmp_path, index_cfg, hash_embedder, body, message):
    build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    before = (tmp_path / "ix" / "CURRENT").read_text()
    write_kb(kb, {"hr/confidential/_access.yml": body})
    with pytest.raises(BadInput) as e:
        build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    assert e.value.message.startswith("hr/confidential/_access.yml: ") and message in e.value.message
    assert (tmp_path / "ix" / "CURRENT").read_text() == before  # the old version stays published


@pytest.mark.parametrize("front, message", [
    ("audience: 5", "must be a group name or a list"),
    ("audience: []", "audience is empty"),
    ("audience: [hr, '']", "audience entry '' is not a group name"),
    ("audience: [hr\ntitle: x", "it sets an audience"),  # broken YAML that tries to restrict: never indexed open
])
def test_a_bad_audience_in_front_matter_names_the_page(kb, front, message):
    write_kb(kb, {"hr/secret.md": f"---\n{front}\n---\n# Secret\n\ntext\n"})
    with pytest.raises(BadInput) as e:
        read_pages(kb)
    assert e.value.message.startswith("hr/secret.md: ") and message in e.value.message


def test_broken_front_matter_without_an_audience_is_still_only_a_warning(kb):
    write_kb(kb, {"it/broken.md": "---\ntitle: [oops\n---\n# Broken\n\ntext\n"})
    pages, warnings = read_pages(kb)
    assert any(w.startswith("it/broken.md:") for w in warnings) and "it/broken" in {p.id for p in pages}


# --- the index carries it --------------------------------------------------------------------------

def test_chunks_pages_and_manifest_record_the_audience(kb, tmp_path, index_cfg, hash_embedder):
    s = build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    assert s.restricted == 2 and "(2 restricted)" in s.describe()
    ix = load_index(tmp_path / "ix", hash_embedder)
    assert {c.page: c.audience for c in ix.chunks if c.audience} == {"hr/confidential/bands": ("hr",),
                                                                      "eng/breakglass": ("oncall", "sre")}
    assert ix.get_page("eng/breakglass").audience == ("oncall", "sre")
    vdir = tmp_path / "ix" / s.version
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["audience"]["hr/confidential/bands"] == ["hr"]
    assert manifest["audience"]["it/vpn"] == [] and set(manifest["audience"]) == set(manifest["pages"])
    rows = [json.loads(line) for line in (vdir / "chunks.jsonl").read_text().splitlines()]
    assert {r["page"]: r["audience"] for r in rows if r["audience"]} == {"hr/confidential/bands": ["hr"],
                                                                          "eng/breakglass": ["oncall", "sre"]}


def test_changing_only_who_may_read_a_page_embeds_nothing(kb, tmp_path, index_cfg, hash_embedder):
    build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    bob = authenticated("bob", ["oncall"])
    assert load_index(tmp_path / "ix").may_read("eng/breakglass", bob)
    page = kb / "eng/breakglass.md"
    page.write_text(page.read_text().replace("audience: [oncall, sre]", "audience: [sre]"))  # front matter
    counting = CountingEmbedder(hash_embedder)
    s = build_index(index_cfg, kb, tmp_path / "ix", counting, progress=False)
    assert not s.up_to_date and (s.embedded, counting.calls, s.reused) == (0, 0, s.chunks)
    ix = load_index(tmp_path / "ix", hash_embedder)
    assert not ix.may_read("eng/breakglass", bob) and ix.get_page("eng/breakglass").audience == ("sre",)

    (kb / "hr/confidential/_access.yml").write_text("audience: [hr, finance]\n")  # a folder default: no page changed
    s = build_index(index_cfg, kb, tmp_path / "ix", counting, progress=False)
    assert not s.up_to_date and (s.embedded, counting.calls) == (0, 0)
    assert load_index(tmp_path / "ix").get_page("hr/confidential/bands").audience == ("finance", "hr")
    assert build_index(index_cfg, kb, tmp_path / "ix", counting, progress=False).up_to_date


def test_a_page_moved_into_a_restricted_folder_is_restricted_at_the_next_build(kb, tmp_path, index_cfg,
                                                                                hash_embedder):
    build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    (kb / "hr/leave.md").rename(kb / "hr/confidential/leave.md")
    counting = CountingEmbedder(hash_embedder)
    s = build_index(index_cfg, kb, tmp_path / "ix", counting, progress=False)
    assert (s.embedded, counting.calls) == (0, 0)
    ix = load_index(tmp_path / "ix", hash_embedder)
    bob = authenticated("bob", ["eng"])
    assert ix.get_page("hr/confidential/leave").audience == ("hr",) and "hr/leave" not in ix.pages
    assert all(h.page != "hr/confidential/leave" for h in Retriever(ix, hash_embedder).search("annual leave Workday",
                                                                                              10, caller=bob))


def test_a_format_2_index_loads_with_front_matter_audiences_and_is_upgraded_without_embedding(
        kb, tmp_path, index_cfg, hash_embedder):
    s = build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    vdir = tmp_path / "ix" / s.version
    m = json.loads((vdir / "manifest.json").read_text())
    del m["audience"]
    (vdir / "manifest.json").write_text(json.dumps({**m, "format_version": 2}))
    for name in ("chunks.jsonl", "pages.jsonl"):  # as the format-2 builder wrote them: front matter kept in meta
        rows = [json.loads(line) for line in (vdir / name).read_text().splitlines()]
        for r in rows:
            if r.pop("audience", None) and name == "pages.jsonl" and r["id"] == "eng/breakglass":
                r["meta"]["audience"] = ["oncall", "sre"]
        (vdir / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    old = load_index(tmp_path / "ix", hash_embedder)
    assert {c.page for c in old.chunks if c.audience} == {"eng/breakglass"}  # _access.yml was not known then
    counting = CountingEmbedder(hash_embedder)
    s = build_index(index_cfg, kb, tmp_path / "ix", counting, progress=False)
    assert not s.up_to_date and counting.calls == 0
    assert load_index(tmp_path / "ix").get_page("hr/confidential/bands").audience == ("hr",)


def test_page_lookups_and_masks_follow_the_caller(kb, tmp_path, index_cfg, hash_embedder):
    build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    ix = load_index(tmp_path / "ix", hash_embedder)
    bob, hr = authenticated("bob", ["eng"]), authenticated("hana", ["hr"])
    with pytest.raises(NotFound) as hidden:
        ix.readable("hr/confidential/bands", bob)
    with pytest.raises(NotFound) as missing:
        ix.readable("hr/confidential/nope", bob)
    assert str(hidden.value).replace("bands", "X") == str(missing.value).replace("nope", "X")  # existence hidden
    assert ix.readable("hr/confidential/bands", hr).title == "Salary bands"
    assert ix.readable("hr/confidential/bands", None).id == "hr/confidential/bands"
    assert "hr/confidential/bands" not in {p.id for p in ix.page_list(bob)}
    assert {p.id for p in ix.page_list(hr)} == set(ix.pages) - {"eng/breakglass"}
    assert ix.mask(None) is None and ix.mask(authenticated("root", ["hr", "sre"])) is None  # reads all: no mask
    m = ix.mask(anonymous())
    assert m.dtype == bool and len(m) == len(ix)
    assert [c.page for c, ok in zip(ix.chunks, m) if not ok] == [c.page for c in ix.chunks if c.audience]
    assert ix.mask(anonymous("deny")).sum() == 0 and ix.mask(anonymous()) is m  # cached per caller


@pytest.mark.parametrize("ivf_min_chunks", [0, 1], ids=["exact", "ivf"])
def test_the_search_primitives_never_return_a_masked_row(kb, tmp_path, index_cfg, hash_embedder, ivf_min_chunks):
    build_index(index_cfg.replace(index={"ivf_min_chunks": ivf_min_chunks}), kb, tmp_path / "ix", hash_embedder,
                progress=False)
    ix = load_index(tmp_path / "ix", hash_embedder)
    assert hasattr(ix.faiss, "nprobe") == bool(ivf_min_chunks)
    allowed = ix.mask(authenticated("bob", ["eng"]))
    q = hash_embedder.embed(["Salary bands P5 band break glass vault"])[0]
    tokens = ["salary", "bands", "p5", "band", "break", "glass", "vault", "workday", "leave"]
    for rows in (dense_search(ix, q, 50, allowed)[0], bm25_search(ix, tokens, 50, allowed)[0],
                 bm25_page_search(ix, tokens, 50, allowed)[0]):
        assert len(rows) and allowed[rows].all()
    assert not allowed[bm25_search(ix, tokens, 50)[0][:1]].all()  # unmasked, a restricted chunk ranks first


def test_retriever_hides_restricted_sections_steps_and_text(kb, tmp_path, index_cfg, hash_embedder):
    build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    r = Retriever(load_index(tmp_path / "ix", hash_embedder), hash_embedder)
    bob, hr = authenticated("bob", ["eng"]), authenticated("hana", ["hr"])
    top = r.search("salary bands P5 band exception", 3, caller=hr)
    assert top[0].page == "hr/confidential/bands" and "band exception" in r.section_text(top[0], hr)
    with pytest.raises(NotFound):
        r.section_text(top[0], bob)
    assert r.steps_section("hr/confidential/bands", hr).heading.endswith("Fix steps")
    assert r.steps_section("hr/confidential/bands", bob) is None
    hits = r.search("salary bands P5 band exception", 3, caller=bob, prefer_troubleshooting=True)
    assert len(hits) == 3 and "hr/confidential/bands" not in {h.page for h in hits}  # the slots go to others
    assert r.search("salary bands", 3, caller=bob, tags=["hr"]) == r.search("salary bands", 3, tags=["hr"],
                                                                          caller=anonymous())
    assert r.search_many(["salary bands", "break glass"], 5, caller=anonymous("deny")) == [[], []]


# --- the CLI -----------------------------------------------------------------------------------------

def test_cli_search_as_a_user_shows_what_they_see(kb, tmp_path, monkeypatch, index_cfg, hash_embedder):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text('[embedder]\nname = "hash-64"\n')
    build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    run = CliRunner().invoke
    base = ["salary bands P5", "--index", "ix", "--config", "config.toml", "-k", "3"]
    r = run(search_cmd, base + ["--as", "hana", "--groups", "hr"])
    assert r.exit_code == 0 and "as hana (groups: hr)" in r.stdout and "hr/confidential/bands.md" in r.stdout
    for who in (["--as", "bob", "--groups", "eng,it"], ["--as", "bob"], ["--anonymous"]):
        r = run(search_cmd, base + who)
        assert r.exit_code == 0 and "3 result(s)" in r.stdout and "confidential" not in r.stdout, who
    r = run(search_cmd, base + ["--as", "bob", "--groups", "eng", "--json"])
    out = json.loads(r.stdout)
    assert out["caller"]["user"] == "bob" and all(h["page"] != "hr/confidential/bands" for h in out["hits"])
    r = run(search_cmd, ["-", "--index", "ix", "--config", "config.toml", "--as", "bob"], input="salary bands\n")
    assert r.exit_code == 0 and "confidential" not in r.stdout and json.loads(r.stdout)["caller"]["groups"] == []
    for bad, msg in ((["--groups", "hr"], "--groups needs --as USER"),
                     (["--anonymous", "--as", "bob"], "cannot be combined"),
                     (["--as", "bob", "--groups", "h r"], "not a group name")):
        r = run(search_cmd, base + bad)
        assert r.exit_code == 1 and msg in r.stderr and "Traceback" not in r.output, bad
