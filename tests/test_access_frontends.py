"""Canary test over every front end: queries aimed at each restricted page of kb/, sent through
/api/search (JSON and SSE), the search page, /api/docs, /docs, the page lists, /v1 task=search (the
official openai client), Slack (signed with slack_sdk) and `kbgate ask`, as an anonymous caller,
as a signed-in caller outside the audience and with forged SSO headers: the page's canary and its
id never appear. A caller inside the audience (trusted proxy headers) does get them.
Fast: scripted replies over the real hash index of kb/ (the retrieval itself is leak-tested with
the real embedders in test_access_leaks.py)."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from openai import OpenAI

from kbgate.access import authenticated
from web import create_app
from web.server import serve_in_thread, stop
from test_access_leaks import CANARIES, WRITTEN
from test_slack import SECRET, Sink, signed, slash_body

TRUSTED, UNTRUSTED = "127.0.0.1", "203.0.113.7"
OUTSIDER = {"X-Forwarded-User": "mallory", "X-Forwarded-Email": "mallory@acme.example",
            "X-Forwarded-Groups": "eng,it,people,office"}  # signed in, none of the restricted groups
API_KEY = "kb-test-key-1"
MODES = {  # reply, config: sources shown / the wiki's fix steps quoted / suggestions only
    "answer": ("见 [1]。", {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 0.0}}),
    "troubleshooting": ("我理解你的心情 [1]。", {"gate": {"negative_threshold": 0.0}, "answer": {"min_score": 0.0}}),
    "suggestions": ("", {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 1.01}}),
}


def insider(audience) -> dict:
    return {"X-Forwarded-User": "ines", "X-Forwarded-Groups": f"eng,{audience[0]}"}


def canary_sentence(text: str, canary: str) -> str:
    """The sentence around the canary, canary removed: the closest a query gets without naming it."""
    line = next(x for x in text.splitlines() if canary in x)
    return re.sub(r"[*`#>|\[\]()]", " ", line.replace(canary, " ")).strip()[:200]


def queries(page) -> list[str]:
    """Title, written zh and en questions, the canary's own sentence; none holds the canary or the id."""
    qs = [page.title, WRITTEN[page.id][0], WRITTEN[page.id][2], canary_sentence(page.text, CANARIES[page.id])]
    out = [q.replace(CANARIES[page.id], " ").strip() for q in qs]  # the query is echoed back in the answer
    assert not any(page.id in q for q in out)
    return out


@pytest.fixture(scope="module")
def restricted(hash_retriever):
    pages = {pid: p for pid, p in hash_retriever.index.pages.items() if p.audience}
    assert set(pages) == set(CANARIES)
    return pages


class FrontEnds:
    """One app over one Services: the test client (any peer address) plus a served copy for the openai client."""

    def __init__(self, services, monkeypatch, sink, auth: dict | None = None):
        self.services, self.monkeypatch, self.sink = services, monkeypatch, sink
        cfg = services.cfg.replace(auth={"trusted_proxies": [TRUSTED], **(auth or {})},
                                   slack={"allowed_response_hosts": ["127.0.0.1"], "allow_http": True})
        self.app = create_app(cfg, services=services)
        self.client = self.app.test_client()
        self.server, self.base = serve_in_thread(self.app)

    def close(self):
        stop(self.server)  # in the server's own loop thread: closing from here races its select()

    def http(self, query: str, headers: dict, peer: str = TRUSTED) -> dict[str, str]:
        """What /api/search (JSON, SSE) and the search page answer this caller."""
        env = {"REMOTE_ADDR": peer}
        c = self.client
        out = {"api": c.post("/api/search", json={"query": query}, headers=headers, environ_base=env),
               "sse": c.post("/api/search/stream", json={"query": query}, headers=headers, environ_base=env),
               "sse?stream": c.post("/api/search?stream=1", json={"query": query}, headers=headers, environ_base=env),
               "search page": c.get("/", headers=headers, environ_base=env)}
        for name, r in out.items():
            assert r.status_code == 200, (name, r.status_code, r.get_data(as_text=True)[:300])
        return {name: r.get_data(as_text=True) for name, r in out.items()}

    def pages(self, pid: str, headers: dict, peer: str = TRUSTED) -> dict[str, tuple[int, str]]:
        env = {"REMOTE_ADDR": peer}
        got = {path: self.client.get(path, headers=headers, environ_base=env)
               for path in (f"/api/docs/{pid}", f"/docs/{pid}", "/api/docs", "/docs")}
        return {path: (r.status_code, r.get_data(as_text=True)) for path, r in got.items()}

    def openai(self, query: str, key: str | None, headers: dict | None = None, env: bool = True) -> dict[str, str]:
        """/v1 task=search, plain and streamed, with the official client (SSO headers sent too: not read).

        `env`: `key` is made the one $KBGATE_API_KEYS for these calls (else: a tokens-file token).
        """
        if key and env:
            self.monkeypatch.setenv("KBGATE_API_KEYS", key)
        else:
            self.monkeypatch.delenv("KBGATE_API_KEYS", raising=False)
        oa = OpenAI(base_url=f"{self.base}/v1", api_key=key or "unused", max_retries=0, timeout=60,
                    default_headers=headers or {})
        msgs = [{"role": "user", "content": query}]
        r = oa.chat.completions.create(model="m", messages=msgs, extra_body={"task": "search"})
        chunks = list(oa.chat.completions.create(model="m", messages=msgs, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"task": "search"}))
        self.monkeypatch.delenv("KBGATE_API_KEYS", raising=False)  # set, it would make /api need a token too
        return {"v1": r.model_dump_json(), "v1 stream": json.dumps([c.model_dump() for c in chunks],
                                                                    ensure_ascii=False)}

    def slack(self, query: str, headers: dict | None = None) -> dict[str, str]:
        self.monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
        n = len(self.sink.posts)
        for public in (False, True):
            body = slash_body(("public " if public else "") + query, self.sink.url)
            ack = self.client.post("/slack/commands", data=body, headers={**signed(body), **(headers or {})})
            assert ack.status_code == 200, ack.get_data(as_text=True)
            self.sink.wait(n + 1 + public, timeout=60)
        return {"slack": json.dumps(self.sink.posts[n:], ensure_ascii=False)}

    def cli(self, query: str, *args: str) -> dict[str, str]:
        from kbgate import cli, service
        self.monkeypatch.setattr(service, "load_services", lambda cfg, index_dir=None: self.services)
        out = {}
        for extra in ((), ("--json",)):
            run = CliRunner().invoke(cli.main, ["ask", *args, *extra, query])
            assert run.exit_code == 0, run.output
            out["kbgate ask " + " ".join(args + extra)] = run.stdout + run.stderr
        return out


@pytest.fixture
def make_fronts(make_services, monkeypatch):
    made = []

    def make(mode: str, auth: dict | None = None) -> FrontEnds:
        reply, sections = MODES[mode]
        f = FrontEnds(make_services(reply, **sections), monkeypatch, Sink(), auth)
        f.mode = mode
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()
        f.sink.close()


@pytest.fixture(params=list(MODES))
def fronts(request, make_fronts):
    return make_fronts(request.param)


@pytest.fixture
def answering(make_fronts):
    return make_fronts("answer")


def leaks(texts: dict[str, str], hidden: dict) -> list[str]:
    """Every (front end, page, what) where a hidden page's canary or id shows."""
    return [f"{name}: {what} of {pid}" for name, text in texts.items() for pid, p in hidden.items()
            for what, s in (("canary", CANARIES[pid]), ("id", pid)) if s in text]


def test_no_front_end_shows_a_restricted_page_to_a_caller_outside_its_audience(fronts, restricted):
    found, checked = [], 0
    for pid, page in restricted.items():
        for q in queries(page):
            texts = {}
            for who, headers, peer in (("anonymous", {}, TRUSTED), ("outsider", OUTSIDER, TRUSTED),
                                       ("forged", insider(page.audience), UNTRUSTED)):
                texts |= {f"{who} {k}": v for k, v in fronts.http(q, headers, peer).items()}
            texts |= {f"anonymous {k}": v for k, v in fronts.openai(q, None, insider(page.audience)).items()}
            texts |= {f"key {k}": v for k, v in fronts.openai(q, API_KEY, insider(page.audience)).items()}
            if fronts.mode != "suggestions":  # Slack is slow to wait on; one mode of each reply path is enough
                texts |= fronts.slack(q, insider(page.audience))
            texts |= fronts.cli(q, "--anonymous") | fronts.cli(q, "--as", "mallory", "--groups", "eng,it")
            checked += len(texts)
            found += [f"{q!r} {x}" for x in leaks(texts, restricted)]
    assert checked >= 5 * 4 * 20 and found == []


def test_restricted_pages_are_404_and_unlisted_outside_the_audience(answering, restricted):
    fronts = answering
    missing = fronts.pages("hr/no-such-page", {})["/api/docs/hr/no-such-page"]
    for pid, page in restricted.items():
        for who, headers, peer in (("anonymous", {}, TRUSTED), ("outsider", OUTSIDER, TRUSTED),
                                   ("forged", insider(page.audience), UNTRUSTED)):
            got = fronts.pages(pid, headers, peer)
            status, body = got[f"/api/docs/{pid}"]
            # the same 404 as a page that does not exist: only the id asked for differs
            assert status == 404 and body == missing[1].replace("hr/no-such-page", pid), (who, pid)
            assert got[f"/docs/{pid}"][0] == 404 and CANARIES[pid] not in got[f"/docs/{pid}"][1], (who, pid)
            lists = {path: got[path][1] for path in ("/api/docs", "/docs")}
            assert all(got[p][0] == 200 for p in lists) and leaks(lists, restricted) == [], (who, pid)


def test_a_caller_inside_the_audience_gets_the_page(fronts, restricted):
    """The positive control: the same front ends do show the pages, so the leak test could fail."""
    for pid, page in restricted.items():
        ins = insider(page.audience)
        got = fronts.pages(pid, ins)
        assert got[f"/api/docs/{pid}"][0] == 200 and CANARIES[pid] in json.loads(got[f"/api/docs/{pid}"][1])["markdown"]
        assert got[f"/docs/{pid}"][0] == 200 and CANARIES[pid] in got[f"/docs/{pid}"][1]
        assert pid in {p["id"] for p in json.loads(got["/api/docs"][1])["pages"]} and f'href="/docs/{pid}"' in got["/docs"][1]
        if fronts.mode == "answer":  # the query on the canary's own sentence brings the canary back
            texts = fronts.http(canary_sentence(page.text, CANARIES[pid]), ins)
            assert all(CANARIES[pid] in texts[k] for k in ("api", "sse", "sse?stream")), pid
            cli = fronts.cli(canary_sentence(page.text, CANARIES[pid]), "--as", "ines", "--groups", page.audience[0])
            assert all(pid in v for v in cli.values()), pid
        if fronts.mode == "suggestions":  # suggested by title to the insider, never to the others
            texts = fronts.http(page.title, ins)
            assert pid in [s["page"] for s in json.loads(texts["api"])["suggestions"]], pid
    if fronts.mode == "troubleshooting":  # the fix steps quoted from the restricted runbook
        bg = restricted["eng/break-glass"]
        answer = json.loads(fronts.http(bg.title, insider(bg.audience))["api"])["answer"]
        assert CANARIES["eng/break-glass"] in answer
        outside = json.loads(fronts.http(bg.title, OUTSIDER)["api"])["answer"]
        assert CANARIES["eng/break-glass"] not in outside


def test_the_v1_and_slack_front_ends_ignore_sso_headers(answering, restricted):
    """/v1 reads tokens, Slack its users file: an insider's SSO headers sent there read public pages only."""
    fronts = answering
    bg = restricted["eng/break-glass"]
    q = canary_sentence(bg.text, CANARIES[bg.id])
    assert CANARIES[bg.id] in fronts.http(q, insider(bg.audience))["api"]  # the same query does find it via /api
    texts = fronts.openai(q, API_KEY, insider(bg.audience)) | fronts.slack(q, insider(bg.audience))
    assert leaks(texts, restricted) == []


def test_the_caller_is_what_the_pipeline_gets(answering, monkeypatch):
    """Each front end hands the pipeline a Caller, never None (None = unrestricted)."""
    fronts = answering
    seen = []
    real = fronts.services.pipeline.ask
    monkeypatch.setattr(fronts.services.pipeline, "ask", lambda *a, **kw: seen.append(kw.get("caller")) or real(*a, **kw))
    q = "How do I connect to the VPN?"
    fronts.http(q, OUTSIDER)
    fronts.http(q, OUTSIDER, UNTRUSTED)
    fronts.http(q, {})
    fronts.openai(q, None)
    fronts.openai(q, API_KEY)
    fronts.slack(q)
    assert None not in seen and len(seen) == 3 * 3 + 2 * 2 + 2
    assert seen[0] == authenticated("mallory", ["eng", "it", "people", "office"])
    assert {c.user for c in seen[3:9]} == {None}  # forged (untrusted peer) and no headers: anonymous
    assert seen[-3].user.startswith("api-key:") and API_KEY not in seen[-3].user and not seen[-3].groups


# ---- identity: deny, trusted proxies, config, CLI options ------------------------------------------
@pytest.fixture
def deny_app(make_services):
    s = make_services("见 [1]。", **MODES["answer"][1])
    cfg = s.cfg.replace(auth={"anonymous": "deny", "trusted_proxies": ["10.0.0.0/8", "::1"]},
                        slack={"allowed_response_hosts": ["127.0.0.1"], "allow_http": True})
    return create_app(cfg, services=s)


@pytest.mark.parametrize("peer", ["10.1.2.3", "::1", "::ffff:10.9.9.9"])
def test_sso_headers_from_a_trusted_proxy_are_the_caller(deny_app, peer):
    c = deny_app.test_client()
    env = {"REMOTE_ADDR": peer}
    r = c.post("/api/search", json={"query": "VPN"}, headers=OUTSIDER, environ_base=env)
    assert r.status_code == 200 and r.get_json()["sources"]
    assert c.get("/docs/it/vpn", headers={"X-Forwarded-Email": "a@acme.example"}, environ_base=env).status_code == 200
    r = c.get("/api/docs/eng/break-glass", headers={"X-Forwarded-User": "ops", "X-Forwarded-Groups": " oncall , /x "},
              environ_base=env)  # spaces trimmed; '/x' is no group name and is dropped, not an error
    assert r.status_code == 200 and CANARIES["eng/break-glass"] in r.get_json()["markdown"]


@pytest.mark.parametrize("path,method", [("/api/search", "post"), ("/api/search/stream", "post"),
                                         ("/api/docs", "get"), ("/api/docs/it/vpn", "get")])
def test_deny_answers_anonymous_api_callers_401_naming_what_is_missing(deny_app, path, method):
    c = deny_app.test_client()
    kw = {"json": {"query": "VPN"}} if method == "post" else {}
    r = getattr(c, method)(path, environ_base={"REMOTE_ADDR": "10.0.0.5"}, **kw)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthenticated"
    assert 'anonymous = "deny"' in r.get_json()["error"]["message"] and "X-Forwarded-User" in r.get_json()["error"]["message"]
    # forged from a peer that is no proxy: the message says why they were ignored
    r = getattr(c, method)(path, headers=insider(["oncall"]), environ_base={"REMOTE_ADDR": UNTRUSTED}, **kw)
    msg = r.get_json()["error"]["message"]
    assert r.status_code == 401 and UNTRUSTED in msg and "trusted_proxies" in msg


def test_deny_on_pages_v1_and_slack(deny_app, monkeypatch):
    c = deny_app.test_client()
    for path in ("/docs", "/docs/it/vpn"):
        r = c.get(path)
        assert r.status_code == 401 and r.mimetype == "text/html" and "trusted_proxies" not in r.get_data(as_text=True)
    assert c.get("/").status_code == 200  # the search page itself shows no wiki text
    server, base = serve_in_thread(deny_app)
    sink = Sink()
    try:
        monkeypatch.delenv("KBGATE_API_KEYS", raising=False)
        oa = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
        with pytest.raises(Exception) as e:
            oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "VPN"}],
                                       extra_body={"task": "search"})
        assert getattr(e.value, "status_code", None) == 401 and "KBGATE_API_KEYS" in str(e.value)
        monkeypatch.setenv("KBGATE_API_KEYS", API_KEY)  # a valid key is an identity: public pages
        oa = OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=30)
        r = oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "VPN"}],
                                       extra_body={"task": "search"})
        assert r.model_extra["kbgate"]["sources"]
        monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
        body = slash_body("VPN", sink.url)
        r = c.post("/slack/commands", data=body, headers=signed(body))  # an unlisted Slack user: told at once
        assert r.status_code == 200 and r.get_json()["response_type"] == "ephemeral"
        assert "T0001:U2147483697 is not in this server's [auth] slack_users_file" in r.get_json()["text"]
        assert deny_app.extensions["slack"].accepted == 0 and sink.posts == []
    finally:
        stop(server)
        sink.close()


def test_a_bad_trusted_proxy_is_a_config_error_naming_it():
    from kbgate.config import load_config
    from kbgate.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[auth\] trusted_proxies: 'proxy.local' is not an IP address"):
        load_config().replace(auth={"trusted_proxies": ["127.0.0.1", "proxy.local"]})
    assert load_config().auth.trusted_proxies == []  # the default trusts no headers at all


def test_kbgate_ask_caller_options(make_services, monkeypatch, restricted):
    from kbgate import cli, service

    s = make_services("见 [1]。", **MODES["answer"][1])
    monkeypatch.setattr(service, "load_services", lambda cfg, index_dir=None: s)
    bg = restricted["eng/break-glass"]
    q = canary_sentence(bg.text, CANARIES[bg.id])
    run = lambda *a: CliRunner().invoke(cli.main, ["ask", *a, q])  # noqa: E731
    as_sre = run("--as", "sam", "--groups", "sre", "--json")
    assert as_sre.exit_code == 0 and json.loads(as_sre.stdout)["caller"] == {
        "user": "sam", "groups": ["sre"], "public": True, "within": []}
    assert bg.id in {x["page"] for x in json.loads(as_sre.stdout)["sources"]}
    assert bg.id in run().stdout  # no option: an in-process tool, every page
    plain = run("--as", "mallory")
    assert plain.exit_code == 0 and "as mallory (groups: none)" in plain.stderr and bg.id not in plain.stdout
    for bad, msg in ((("--groups", "hr"), "--groups needs --as USER"),
                     (("--anonymous", "--as", "x"), "--anonymous cannot be combined"),
                     (("--as", "x", "--groups", "h r"), "is not a group name")):
        r = run(*bad)
        assert r.exit_code != 0 and msg in r.output, r.output


def test_the_rate_limit_is_per_sso_user_and_forged_users_share_the_address(make_services):
    s = make_services("见 [1]。", server={"rate_per_minute": 1}, **MODES["answer"][1])
    c = create_app(s.cfg.replace(auth={"trusted_proxies": [TRUSTED]}), services=s).test_client()

    def ask(user, peer=TRUSTED):
        return c.post("/api/search", json={"query": "VPN"}, headers={"X-Forwarded-User": user},
                      environ_base={"REMOTE_ADDR": peer}).status_code
    assert [ask("ann"), ask("bob"), ask("ann")] == [200, 200, 429]  # one proxy address, a bucket per user
    assert [ask("eve1", UNTRUSTED), ask("eve2", UNTRUSTED)] == [200, 429]  # forged names: one bucket (the address)
