"""Bearer tokens for /api and /v1 ([auth] tokens_file, `kbgate token add`, $KBGATE_API_KEYS): the file's
format and its errors by line, 401s with WWW-Authenticate on every route, the token's groups in what
the search shows (canary counting as in test_access_frontends.py, through the official openai client
for /v1), a rate bucket per token user, and the file read again when it changes (failing closed).
Fast: scripted replies over the real hash index of kb/."""
from __future__ import annotations

import json
import os
import stat

import openai
import pytest
import requests
from click.testing import CliRunner

from kbgate import cli
from kbgate.access import authenticated
from kbgate.errors import BadInput, ConfigError
from kbgate.tokens import TokenFile, add_token, digest, parse_tokens
from test_access_frontends import MODES, TRUSTED, UNTRUSTED, canary_sentence, insider, leaks, queries
from test_access_frontends import make_fronts, restricted  # noqa: F401 (fixtures)
from test_access_leaks import CANARIES
from web import create_app
from web.server import serve_in_thread, stop

HR_PAGES = ("hr/confidential/salary-bands", "hr/confidential/performance-improvement-plans")


@pytest.fixture
def tokens(tmp_path):
    """A tokens file with hana (hr; two tokens) and omar (eng, it: none of the restricted groups)."""
    path = tmp_path / "tokens.txt"
    made = {"hana": add_token(path, "hana", "hr"), "hana2": add_token(path, "hana", ["hr"]),
            "omar": add_token(path, "omar", "eng,it")}
    made["path"] = path
    return made


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ---- the file ------------------------------------------------------------------------------------
def test_token_add_stores_only_the_hash_and_the_file_maps_it_to_the_caller(tokens):
    path = tokens["path"]
    text = path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for name in ("hana", "hana2", "omar"):
        assert tokens[name].startswith("kbg_") and len(tokens[name]) > 40
        assert tokens[name] not in text and digest(tokens[name]) in text
    assert len({tokens["hana"], tokens["hana2"], tokens["omar"]}) == 3
    f = TokenFile(path)
    assert f.lookup(tokens["hana"]) == f.lookup(tokens["hana2"]) == authenticated("hana", ["hr"])
    assert f.lookup(tokens["omar"]) == authenticated("omar", ["eng", "it"])
    assert f.lookup("kbg_" + "x" * 43) is None and f.lookup(tokens["hana"][:-1]) is None
    assert f.lookup(digest(tokens["hana"])) is None  # the stored hash is no token itself


DIG = "sha256:" + "ab" * 32


@pytest.mark.parametrize("line,message", [
    ("kbg_plainSECRETtoken hana hr", "the first field is not 'sha256:' and 64 lowercase hex digits; tokens are "
                                      "stored hashed, never in plain text"),
    ("sha256:" + "AB" * 32 + " hana", "the first field is not 'sha256:' and 64 lowercase hex digits"),
    ("sha256:" + "ab" * 31 + " hana", "the first field is not 'sha256:'"),
    (DIG, "expected 'sha256:<64 hex digits> USER [GROUP,GROUP...]', got 1 field(s)"),
    (DIG + " hana hr oncall", "got 4 field(s)"),
    (DIG + " hana hr,/hr", "group '/hr' is not a group name"),
    (DIG + " hänа hr", "is not a user name for the tokens file"),
])
def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "tokens.txt"
    path.write_text(f"# kbgate tokens\n\n{line}\n{digest('kbg_ok')} ok\n")
    with pytest.raises(ConfigError) as e:
        TokenFile(path)
    assert f"tokens file {path} line 3: " in e.value.message and message in e.value.message
    assert "plainSECRET" not in e.value.message  # a pasted plain token is not echoed into logs
    cfg = create_app_cfg(tmp_path, tokens_file=str(path))
    with pytest.raises(ConfigError, match="line 3"):  # the server does not start
        create_app(cfg, services=None)


def create_app_cfg(tmp_path, **auth):
    from kbgate.config import load_config
    return load_config().replace(auth=auth)


def test_duplicate_and_missing_files_are_start_up_errors(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(f"{DIG} hana hr\n# a comment\n{DIG}  omar\n")
    with pytest.raises(ConfigError, match=r"line 3: the same token as line 1"):
        parse_tokens(path.read_text(), str(path))
    with pytest.raises(ConfigError, match=r"\[auth\] tokens_file .*nope.txt does not exist; create it with `kbgate token add"):
        create_app(create_app_cfg(tmp_path, tokens_file=str(tmp_path / "nope.txt")), services=None)
    assert parse_tokens("# only comments\n\n", "x") == ()


def test_kbgate_token_add(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text('[auth]\ntokens_file = "secrets/tokens.txt"\n')
    monkeypatch.setenv("KBGATE_CONFIG", str(tmp_path / "config.toml"))
    r = CliRunner().invoke(cli.main, ["token", "add", "hana", "--groups", "hr,people-managers"])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    path = tmp_path / "secrets" / "tokens.txt"  # relative to the config file's folder
    assert token.startswith("kbg_") and "\n" not in token and "shown only this once" in r.stderr
    assert token not in path.read_text()
    assert TokenFile(path).lookup(token) == authenticated("hana", ["hr", "people-managers"])
    other = tmp_path / "other.txt"
    r2 = CliRunner().invoke(cli.main, ["token", "add", "ci-bot", "--file", str(other)])
    assert r2.exit_code == 0 and "note: the server reads [auth] tokens_file" in r2.stderr
    assert TokenFile(other).lookup(r2.stdout.strip()) == authenticated("ci-bot")
    for args, msg in ((["token", "add", "ha na"], "is not a user name"),
                      (["token", "add", "x", "--groups", "h r"], "is not a group name")):
        bad = CliRunner().invoke(cli.main, args)
        assert bad.exit_code != 0 and msg in bad.output, bad.output
    before = path.read_text()
    path.write_text(before + "hana-plain-token hana\n")
    bad = CliRunner().invoke(cli.main, ["token", "add", "zoe"])
    assert bad.exit_code != 0 and f"{path} line 3" in bad.output and path.read_text().count("\n") == 3
    monkeypatch.delenv("KBGATE_CONFIG")
    (tmp_path / "config.toml").write_text("")
    none = CliRunner().invoke(cli.main, ["--config", str(tmp_path / "config.toml"), "token", "add", "zoe"])
    assert none.exit_code != 0 and "pass --file FILE, or set [auth] tokens_file" in none.output


def test_add_token_refuses_bad_names():
    with pytest.raises(BadInput):
        add_token("/nonexistent/never-written", "has space", "")


# ---- the routes ----------------------------------------------------------------------------------
API_ROUTES = [("post", "/api/search", {"query": "VPN"}), ("post", "/api/search/stream", {"query": "VPN"}),
              ("post", "/api/sentiment", {"texts": ["VPN"]}), ("get", "/api/docs", None),
              ("get", "/api/docs/it/vpn", None)]


@pytest.fixture
def token_app(make_services, tokens):
    s = make_services("见 [1]。", **MODES["answer"][1])
    cfg = s.cfg.replace(auth={"tokens_file": str(tokens["path"]), "trusted_proxies": [TRUSTED]})
    return create_app(cfg, services=s)


@pytest.mark.parametrize("method,path,body", API_ROUTES)
def test_api_routes_need_a_valid_token_or_the_sso_proxy(token_app, tokens, method, path, body):
    c = token_app.test_client()

    def call(headers=None, peer=UNTRUSTED):
        kw = {"json": body} if body else {}
        return getattr(c, method)(path, headers=headers or {}, environ_base={"REMOTE_ADDR": peer}, **kw)
    for headers, code, words in ((None, "missing_token", "missing bearer token: send Authorization: Bearer"),
                                 (bearer("kbg_wrong"), "invalid_token", "invalid bearer token"),
                                 ({"Authorization": "Basic aGFuYTpocg=="}, "missing_token", "missing bearer token"),
                                 ({**insider(["hr"])}, "missing_token", "or come through the SSO proxy")):
        r = call(headers)  # the last: SSO headers from a peer that is no proxy are no identity
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (headers, r.status_code)
        err = r.get_json()["error"]
        assert err["code"] == code and words in err["message"], err
    for ok in (call(bearer(tokens["omar"])), call({"X-Forwarded-User": "ann"}, TRUSTED)):  # the search page behind SSO still works
        assert ok.status_code == 200 and ok.get_data()  # read: a stream gives its job slot back


def test_pages_take_a_token_but_need_none(token_app, tokens):
    c = token_app.test_client()
    assert c.get("/docs/it/vpn").status_code == 200 and c.get("/").status_code == 200  # browsers send no token
    assert c.get("/docs/hr/confidential/salary-bands").status_code == 404
    r = c.get("/docs/hr/confidential/salary-bands", headers=bearer(tokens["hana"]))
    assert r.status_code == 200 and CANARIES["hr/confidential/salary-bands"] in r.get_data(as_text=True)
    r = c.get("/docs/it/vpn", headers=bearer("kbg_wrong"))
    assert r.status_code == 401 and r.mimetype == "text/html" and r.headers["WWW-Authenticate"] == "Bearer"


def test_without_tokens_configured_api_keeps_its_rules(make_services, monkeypatch):
    monkeypatch.delenv("KBGATE_API_KEYS", raising=False)
    s = make_services("见 [1]。", **MODES["answer"][1])
    c = create_app(s.cfg, services=s).test_client()
    assert c.post("/api/search", json={"query": "VPN"}, headers=bearer("anything")).status_code == 200  # not read
    monkeypatch.setenv("KBGATE_API_KEYS", "kb-key-1")  # the simple case: a valid key is a signed-in caller
    assert c.post("/api/search", json={"query": "VPN"}, headers=bearer("kb-key-1")).status_code == 200
    r = c.post("/api/search", json={"query": "VPN"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "missing_token"


def test_v1_with_the_openai_client(token_app, tokens):
    server, base = serve_in_thread(token_app)
    try:
        msgs = [{"role": "user", "content": "VPN"}]
        for key in ("kbg_wrong", tokens["hana"][:-2]):
            with pytest.raises(openai.AuthenticationError) as e:
                openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0).chat.completions.create(
                    model="m", messages=msgs, extra_body={"task": "search"})
            assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
            assert e.value.body["message"] == "invalid API key" and e.value.response.headers["WWW-Authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError) as e:  # the client always sends a key: a bare "Bearer" stands for none
            openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0,
                          default_headers={"Authorization": "Bearer"}).chat.completions.create(model="m", messages=msgs)
        assert e.value.body["message"].startswith("missing API key: send Authorization: Bearer")
        r = requests.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": msgs}, timeout=30)  # no header
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["message"].startswith("missing API key") and r.json()["error"]["type"] == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="kbg_wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=f"{base}/v1", api_key=tokens["omar"], max_retries=0)
        assert ok.chat.completions.create(model="m", messages=msgs, extra_body={"task": "search"}).model_extra["kbgate"]["sources"]
    finally:
        stop(server)


# ---- what each token's caller reads ------------------------------------------------------------------
@pytest.fixture(params=list(MODES))
def token_fronts(request, make_fronts, tokens):
    return make_fronts(request.param, auth={"tokens_file": str(tokens["path"])})


def test_token_callers_read_what_their_groups_allow_and_nothing_else(token_fronts, tokens, restricted, monkeypatch):
    fronts = token_fronts
    callers = {"omar": authenticated("omar", ["eng", "it"]), "hana": authenticated("hana", ["hr"])}
    checked, found = 0, []
    for pid, page in restricted.items():
        for q in queries(page):
            for name, caller in callers.items():
                hidden = {p: restricted[p] for p in restricted if not caller.may_read(restricted[p].audience)}
                # forged SSO headers from a peer that is no proxy ride along: the token's groups count, not theirs
                headers = {**bearer(tokens[name]), **insider(page.audience)}
                texts = {f"{name} {k}": v for k, v in fronts.http(q, headers, UNTRUSTED).items()}
                texts |= {f"{name} {k}": v for k, v in fronts.openai(q, tokens[name], env=False).items()}
                checked += len(texts)
                found += [f"{q!r} {x}" for x in leaks(texts, hidden)]
    for name, caller in callers.items():
        for pid in restricted:
            got = fronts.pages(pid, bearer(tokens[name]), UNTRUSTED)
            lists = {path: got[path][1] for path in ("/api/docs", "/docs")}
            hidden = {p: restricted[p] for p in restricted if not caller.may_read(restricted[p].audience)}
            checked += 4
            if pid in hidden:
                assert got[f"/api/docs/{pid}"][0] == 404 and got[f"/docs/{pid}"][0] == 404, (name, pid)
            found += [f"{name} {x}" for x in leaks(lists, hidden)]
    assert checked >= 5 * 4 * 2 * 6 and found == [], found[:10]
    # the positive control: hana's token reads both HR pages, on /api/docs, /api/search and /v1 search
    for pid in HR_PAGES:
        got = fronts.pages(pid, bearer(tokens["hana2"]), UNTRUSTED)
        assert got[f"/api/docs/{pid}"][0] == 200 and CANARIES[pid] in json.loads(got[f"/api/docs/{pid}"][1])["markdown"]
        assert pid in {p["id"] for p in json.loads(got["/api/docs"][1])["pages"]}
        if fronts.mode == "answer":
            q = canary_sentence(restricted[pid].text, CANARIES[pid])
            texts = fronts.http(q, bearer(tokens["hana"]), UNTRUSTED) | fronts.openai(q, tokens["hana"], env=False)
            assert all(CANARIES[pid] in texts[k] for k in ("api", "sse", "v1", "v1 stream")), pid
            assert CANARIES[pid] not in json.dumps(fronts.http(q, bearer(tokens["omar"]), UNTRUSTED))


def test_the_pipeline_gets_the_token_caller(make_fronts, tokens, monkeypatch):
    fronts = make_fronts("answer", auth={"tokens_file": str(tokens["path"])})
    seen = []
    real = fronts.services.pipeline.ask
    monkeypatch.setattr(fronts.services.pipeline, "ask", lambda *a, **kw: seen.append(kw.get("caller")) or real(*a, **kw))
    fronts.http("VPN", bearer(tokens["hana"]), UNTRUSTED)
    fronts.openai("VPN", tokens["omar"], env=False)
    assert seen == [authenticated("hana", ["hr"])] * 3 + [authenticated("omar", ["eng", "it"])] * 2


# ---- rate limits and a changing file -------------------------------------------------------------------
def test_two_tokens_of_one_user_share_a_rate_bucket(make_services, tokens):
    s = make_services("见 [1]。", server={"rate_per_minute": 1}, **MODES["answer"][1])
    cfg = s.cfg.replace(auth={"tokens_file": str(tokens["path"])})
    c = create_app(cfg, services=s).test_client()
    ask = lambda name: c.post("/api/search", json={"query": "VPN"}, headers=bearer(tokens[name]))  # noqa: E731
    first, second, other = ask("hana"), ask("hana2"), ask("omar")
    assert (first.status_code, second.status_code, other.status_code) == (200, 429, 200)
    assert second.get_json()["error"]["code"] == "rate_limited" and 1 <= int(second.headers["Retry-After"]) <= 60
    server, base = serve_in_thread(create_app(cfg, services=s))  # a fresh app: fresh buckets, on /v1
    try:
        client = lambda name: openai.OpenAI(base_url=f"{base}/v1", api_key=tokens[name], max_retries=0)  # noqa: E731
        msgs = [{"role": "user", "content": "VPN"}]
        client("hana2").chat.completions.create(model="m", messages=msgs, extra_body={"task": "sentiment"})
        with pytest.raises(openai.RateLimitError) as e:
            client("hana").chat.completions.create(model="m", messages=msgs, extra_body={"task": "sentiment"})
        assert int(e.value.response.headers["Retry-After"]) >= 1
        assert client("omar").chat.completions.create(model="m", messages=msgs, extra_body={"task": "sentiment"})
    finally:
        stop(server)


def test_the_file_is_read_again_when_it_changes_and_a_bad_edit_fails_closed(token_app, tokens):
    c = token_app.test_client()
    ask = lambda tok: c.post("/api/search", json={"query": "VPN"}, headers=bearer(tok))  # noqa: E731
    zoe = add_token(tokens["path"], "zoe", "")
    assert ask(zoe).status_code == 200  # no restart
    good = tokens["path"].read_text()
    tokens["path"].write_text(good + "not-a-hash zoe\n")
    r = ask(tokens["hana"])
    assert r.status_code == 503 and "tokens file is broken" in r.get_json()["error"]["message"]
    assert str(tokens["path"]) not in r.get_data(as_text=True)  # the details go to the server log only
    tokens["path"].write_text("\n".join(x for x in good.splitlines() if "zoe" not in x) + "\n")  # zoe revoked
    assert ask(tokens["hana"]).status_code == 200 and ask(zoe).status_code == 401
