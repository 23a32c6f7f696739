"""One JSON line per request on stderr: its fields, the X-Request-Id round trip, streams logged when they
end, the query text only when the operator opts in, and no secret ever (a Slack signing secret and an API
key sent the ways clients send them, through a real server, captured at the file-descriptor level)."""
from __future__ import annotations

import json
import re
import time

import requests

from web import create_app
from web.server import serve_in_thread
from test_slack import Sink, signed, slash_body

ANSWER = "在家连 VPN 先安装客户端 [1]，然后用 SSO 登录 [2]。"
ROUTE = {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 0.0}}
QUERY = "在家怎么连公司内网"
SLACK_SECRET = "5ec12e7-slack-signing-0000-feedbeefcafe"
API_KEY = "sk-kbgate-4f1d9c2b7e8a11ef"


def lines(err: str) -> list[dict]:
    """The request lines among everything written to stderr."""
    out = []
    for raw in err.splitlines():
        try:
            d = json.loads(raw)
        except ValueError:
            continue  # another logger's plain text
        if isinstance(d, dict) and d.get("logger") == "kbgate.requests":
            out.append(d)
    return out


def post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def test_one_line_per_request_with_its_fields(make_services, capsys):
    s = make_services(ANSWER, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    capsys.readouterr()
    r = post(client, "/api/search", {"query": QUERY}, headers={"X-Request-Id": "req-7f3a.42"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "req-7f3a.42"
    body = r.get_json()
    assert post(client, "/api/search", {"query": ""}).status_code == 400
    assert client.get("/healthz").status_code == 200  # a probe: quiet unless it fails
    assert client.get("/no/such/thing").status_code == 404
    got = lines(capsys.readouterr().err)
    assert [(x["endpoint"], x["status"]) for x in got] == [("/api/search", 200), ("/api/search", 400),
                                                         ("<unmatched>", 404)]
    ok = got[0]
    assert ok["request_id"] == "req-7f3a.42" and ok["method"] == "POST" and ok["path"] == "/api/search"
    assert ok["level"] == "INFO" and ok["message"] == "request" and re.match(r"\d{4}-\d\d-\d\dT", ok["time"])
    assert ok["route"] == body["route"] == "answer" and ok["label"] == body["sentiment"]["label"]
    assert ok["timings_ms"] == body["timings_ms"] and ok["engine"] == "fake"
    assert ok["tokens"] == -(-len(ANSWER) // 3) and ok.get("answer_id") == body.get("answer_id")
    assert ok["duration_ms"] >= body["timings_ms"]["total"] and ok["remote_addr"] == "127.0.0.1"
    assert "query" not in ok and QUERY not in json.dumps(got, ensure_ascii=False)  # not unless opted in
    assert "route" not in got[1] and re.fullmatch(r"[0-9a-f]{32}", got[1]["request_id"])  # a fresh id


def test_insane_request_ids_are_replaced(make_services, capsys):
    s = make_services(ANSWER, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    capsys.readouterr()
    for bad in ("a b", "x" * 129, "id\", \"status\": 500", "ü-id"):
        r = client.get("/api/docs", headers={"X-Request-Id": bad})
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"]), bad
    got = lines(capsys.readouterr().err)
    assert len(got) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", x["request_id"]) for x in got)
    assert len({x["request_id"] for x in got}) == 4


def test_the_query_is_logged_only_when_opted_in(make_services, capsys):
    s = make_services(ANSWER, **ROUTE, logging={"queries": True})
    client = create_app(s.cfg, services=s).test_client()
    capsys.readouterr()
    assert post(client, "/api/search", {"query": QUERY}).status_code == 200
    (line,) = lines(capsys.readouterr().err)
    assert line["query"] == QUERY  # as UTF-8 text, not \\u escapes
    s = make_services(ANSWER, **ROUTE, logging={"requests": False})
    client = create_app(s.cfg, services=s).test_client()
    assert post(client, "/api/search", {"query": QUERY}).status_code == 200
    assert lines(capsys.readouterr().err) == []


def test_a_stream_is_logged_when_it_ends(make_services, capsys):
    s = make_services(ANSWER, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    capsys.readouterr()
    r = post(client, "/api/search/stream", {"query": QUERY}, headers={"X-Request-Id": "sse-1"})
    assert r.headers["X-Request-Id"] == "sse-1"
    assert lines(capsys.readouterr().err) == []  # the view returned, the answer is not made yet
    text = r.get_data(as_text=True)
    done = json.loads(text.split("event: done\ndata: ", 1)[1].split("\n", 1)[0])
    (line,) = lines(capsys.readouterr().err)
    assert line["request_id"] == "sse-1" and line["stream_completed"] is True and line["status"] == 200
    assert line["route"] == done["route"] and line["timings_ms"] == done["timings_ms"]
    assert line["tokens"] == -(-len(ANSWER) // 3) and line["duration_ms"] >= done["timings_ms"]["total"]


def test_a_refused_request_names_why(make_services, capsys):
    s = make_services(ANSWER, **ROUTE, server={"engine_slots": 1, "max_pending": 1})
    client = create_app(s.cfg, services=s).test_client()
    capsys.readouterr()
    with s.pipeline.admit("search"):
        assert post(client, "/api/search", {"query": QUERY}).status_code == 503
    (line,) = lines(capsys.readouterr().err)
    assert line["status"] == 503 and line["rejected"] == "queue_full" and "route" not in line


def test_no_secret_reaches_the_logs(make_services, monkeypatch, capfd):
    """Slack-signed commands, good and bad bearer keys, SSO headers: the secrets appear nowhere on stderr
    or stdout, with the most verbose setting (queries on), through waitress."""
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SLACK_SECRET)
    monkeypatch.setenv("KBGATE_API_KEYS", f"other-key,{API_KEY}")
    s = make_services(ANSWER, **ROUTE, logging={"queries": True},
                      slack={"allowed_response_hosts": ["127.0.0.1"], "allow_http": True})
    server, base = serve_in_thread(create_app(s.cfg, services=s))
    sink = Sink()
    try:
        capfd.readouterr()
        chat = {"model": "m", "messages": [{"role": "user", "content": QUERY}], "task": "search"}
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert requests.post(f"{base}/v1/chat/completions", json=chat, headers=auth, timeout=30).status_code == 200
        r = requests.post(f"{base}/v1/chat/completions", json={**chat, "stream": True}, headers=auth, timeout=30)
        assert r.status_code == 200 and "[DONE]" in r.text
        bad = {"Authorization": f"Bearer {API_KEY}x"}
        assert requests.post(f"{base}/v1/chat/completions", json=chat, headers=bad, timeout=30).status_code == 401
        assert requests.get(f"{base}/v1/models", headers=auth, timeout=30).status_code == 200
        body = slash_body(QUERY, sink.url)
        assert requests.post(f"{base}/slack/commands", data=body, headers=signed(body, SLACK_SECRET),
                             timeout=30).status_code == 200
        sink.wait(1, timeout=30)
        forged = signed(body, SLACK_SECRET + "x")
        assert requests.post(f"{base}/slack/commands", data=body, headers=forged, timeout=30).status_code == 401
        sso = {"X-Forwarded-User": "mallory", "Authorization": f"Bearer {API_KEY}", "Cookie": f"session={API_KEY}"}
        assert requests.post(f"{base}/api/search", json={"query": QUERY}, headers=sso, timeout=30).status_code == 200
        text, deadline = "", time.monotonic() + 10  # a stream's line is written just after its last byte
        while len(lines(text)) < 7 and time.monotonic() < deadline:
            out = capfd.readouterr()
            text += out.err + out.out
            time.sleep(0.05)
    finally:
        sink.close()
        server.close()
    out = capfd.readouterr()
    text += out.err + out.out
    got = lines(text)
    assert len(got) == 7 and {x["endpoint"] for x in got} >= {"/v1/chat/completions", "/slack/commands"}
    for secret in (SLACK_SECRET, API_KEY, "Bearer", "session="):
        assert secret not in text, secret
    keyed = [x for x in got if x["endpoint"] == "/v1/chat/completions" and x["status"] == 200]
    assert len(keyed) == 2 and all(re.fullmatch(r"api-key:[0-9a-f]{12}", x["user"]) for x in keyed)
    assert all(x["query"] == QUERY for x in keyed)  # opted in: the query, and still no key
