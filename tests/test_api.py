"""The JSON API through Flask's test client: every route and every error a client can meet."""
import json
import threading

import pytest

from web import create_app

ANSWER = "在家连 VPN 先安装客户端 [1]，然后用 SSO 登录 [2]。"
ANSWER_ROUTE = {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 0.0}}


@pytest.fixture
def services(make_services):
    return make_services(ANSWER, **ANSWER_ROUTE)


@pytest.fixture
def client(services):
    return create_app(services.cfg, services=services).test_client()


def post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def events(resp) -> list[tuple[str, object]]:
    """Parse an SSE body into (event, data) pairs."""
    out = []
    for block in resp.get_data(as_text=True).split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_search_answers_with_sources_timings_and_model(client, services):
    r = post(client, "/api/search", {"query": "在家怎么连公司内网", "k": 5})
    assert r.status_code == 200
    body = r.get_json()
    assert body["query"] == "在家怎么连公司内网" and body["route"] == "answer" and body["answer"] == ANSWER
    assert body["sentiment"]["label"] in ("positive", "neutral", "negative") and 0 <= body["sentiment"]["confidence"] <= 1
    src = body["sources"][0]
    assert {"n", "title", "heading", "path", "url", "score", "snippet"} <= set(src)
    assert src["url"].startswith(services.cfg.server.wiki_base_url + "/docs/")
    assert set(body["timings_ms"]) >= {"gate", "retrieval", "first_token", "total"}
    assert body["model"] == services.model_info()
    assert 'class="cite"' in body["answer_html"] and "/docs/" in body["answer_html"]


def test_frustrated_query_gets_the_troubleshooting_route(make_services):
    s = make_services("先确认客户端版本 [1]。", gate={"negative_threshold": 0.0}, answer={"min_score": 0.0})
    body = post(create_app(s.cfg, services=s).test_client(), "/api/search", {"query": "VPN 又连不上了！"}).get_json()
    assert body["route"] == "troubleshooting" and s.cfg.escalation.contact in body["answer"]


def test_no_answer_lists_suggestions_instead_of_sources(make_services):
    s = make_services(ANSWER, answer={"min_score": 1.01})
    body = post(create_app(s.cfg, services=s).test_client(), "/api/search", {"query": "how do I bake bread"}).get_json()
    assert body["route"] == "no_answer" and body["sources"] == [] and body["suggestions"]
    assert s.engine.generated == 0


@pytest.mark.parametrize("body,status,message", [
    ("not json", 400, "body is not valid JSON"),
    ("", 400, "body is empty"),
    ([1, 2], 400, "body must be a JSON object"),
    ({}, 400, "query is required"),
    ({"query": None}, 400, "query is required"),
    ({"query": 123}, 400, "query must be a string, got int"),
    ({"query": "  \n "}, 400, "query is empty"),
    ({"query": "x" * 2001}, 413, "query is longer than 2,000 characters"),
    ({"query": "vpn", "k": 0}, 400, "k must be an integer between 1 and 20"),
    ({"query": "vpn", "k": 21}, 400, "k must be an integer between 1 and 20"),
    ({"query": "vpn", "k": "5"}, 400, "k must be an integer between 1 and 20"),
    ({"query": "vpn", "k": True}, 400, "k must be an integer between 1 and 20"),
    ({"query": "vpn", "tags": "it"}, 400, "tags must be a list"),
    ({"query": "vpn", "stream": "yes"}, 400, "stream must be true or false"),
    ({"query": "vpn", "qeury": "typo"}, 400, "unknown field 'qeury'"),
])
@pytest.mark.parametrize("path", ["/api/search", "/api/search/stream"])
def test_bad_search_bodies_get_clear_json_errors(client, services, path, body, status, message):
    data = body if isinstance(body, str) else json.dumps(body)
    r = client.post(path, data=data, content_type="application/json")
    assert r.status_code == status and r.is_json
    assert message in r.get_json()["error"]["message"]
    assert services.engine.generated == 0


def test_form_body_is_400_naming_the_content_type(client):
    r = client.post("/api/search", data="query=vpn", content_type="application/x-www-form-urlencoded")
    msg = r.get_json()["error"]["message"]
    assert r.status_code == 400 and "not valid JSON" in msg and "application/x-www-form-urlencoded" in msg


def test_json_without_content_type_is_accepted(client):
    r = client.post("/api/search", data=json.dumps({"query": "vpn"}), content_type="text/plain")
    assert r.status_code == 200 and r.get_json()["query"] == "vpn"


def test_oversized_body_is_413(client, services):
    big = json.dumps({"query": "x" * (services.cfg.server.max_body_bytes + 10)})
    r = client.post("/api/search", data=big, content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "request_entity_too_large"


def test_unknown_path_is_404_and_wrong_method_405_in_json(client):
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.get_json()["error"]["message"] == "no such endpoint or page: /api/nope"
    r = client.get("/api/search")
    assert r.status_code == 405 and "GET is not allowed" in r.get_json()["error"]["message"]


def test_503_with_retry_after_while_loading_then_ready(services):
    release = threading.Event()
    app = create_app(services.cfg, loader=lambda: release.wait(10) and services)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    for r in (client.get("/readyz"), post(client, "/api/search", {"query": "vpn"}),
              post(client, "/api/sentiment", {"texts": ["hi"]}), client.get("/api/docs/it/vpn")):
        assert r.status_code == 503 and r.headers["Retry-After"] and r.get_json()["error"]["code"] == "not_ready"
    release.set()
    app.extensions["kbgate"].ready.wait(10)
    assert client.get("/readyz").get_json()["model"]["name"] == services.engine.info().model
    assert post(client, "/api/search", {"query": "vpn"}).status_code == 200


def test_failed_load_is_reported_not_hidden(services):
    def boom():
        raise RuntimeError("no model files")
    app = create_app(services.cfg, loader=boom)
    app.extensions["kbgate"].ready.wait(10)
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "no model files" in r.get_json()["error"]["message"]


def test_full_queue_is_503_with_retry_after(make_services):
    s = make_services(ANSWER, server={"max_pending": 1}, **ANSWER_ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    ticket = s.pipeline.admit()  # another request holds the only slot
    try:
        for r in (post(client, "/api/search", {"query": "vpn"}), post(client, "/api/search?stream=1", {"query": "vpn"}),
                  post(client, "/api/sentiment", {"texts": ["vpn"]})):
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and r.get_json()["error"]["code"] == "busy"
    finally:
        ticket.release()
    assert post(client, "/api/search", {"query": "vpn"}).status_code == 200


@pytest.mark.parametrize("path", ["/api/search?stream=1", "/api/search/stream"])
def test_stream_sends_sentiment_sources_tokens_then_done(client, path):
    r = post(client, path, {"query": "在家怎么连公司内网"})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Accel-Buffering"] == "no"
    evs = events(r)
    kinds = [k for k, _ in evs]
    assert kinds[:2] == ["sentiment", "sources"] and kinds[-1] == "done" and set(kinds[2:-1]) == {"token"}
    done = evs[-1][1]
    assert "".join(d for k, d in evs if k == "token") == done["answer"] == ANSWER
    assert done.keys() == post(client, "/api/search", {"query": "在家怎么连公司内网"}).get_json().keys()


def test_failure_mid_stream_is_an_error_event_and_frees_the_slot(make_services, monkeypatch):
    s = make_services(ANSWER, server={"max_pending": 1}, **ANSWER_ROUTE)

    def broken(*a, **kw):
        yield "先安装"
        raise RuntimeError("model crashed")
    monkeypatch.setattr(s.assistant, "stream", broken)
    client = create_app(s.cfg, services=s).test_client()
    evs = events(post(client, "/api/search?stream=1", {"query": "vpn"}))
    assert [k for k, _ in evs][-2:] == ["token", "error"]
    assert evs[-1][1]["code"] == "internal_error" and "Traceback" not in json.dumps(evs)
    monkeypatch.undo()
    assert post(client, "/api/search", {"query": "vpn"}).status_code == 200


def test_sentiment_labels_each_text(client):
    r = post(client, "/api/sentiment", {"texts": ["谢谢，问题解决了！", "VPN 又断了，烦死了", "how do I add a printer"]})
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert len(results) == 3
    assert all(x["label"] in ("positive", "neutral", "negative") and set(x["probs"]) == {"positive", "neutral", "negative"}
               for x in results)


@pytest.mark.parametrize("body,status,message", [
    ({}, 400, "texts must be a non-empty list of strings"),
    ({"texts": []}, 400, "texts must be a non-empty list of strings"),
    ({"texts": "hello"}, 400, "texts must be a non-empty list of strings"),
    ({"texts": ["ok", "ok", "ok", " "]}, 400, "texts[3] is empty"),
    ({"texts": ["ok", 7]}, 400, "texts[1] must be a string, got int"),
    ({"texts": ["ok", "y" * 2001]}, 413, "texts[1] is longer than 2,000 characters"),
    ({"texts": ["ok"] * 65}, 413, "texts has 65 items; at most 64 per request"),
    ({"texts": ["ok"], "extra": 1}, 400, "unknown field 'extra'"),
])
def test_bad_sentiment_bodies(client, body, status, message):
    r = post(client, "/api/sentiment", body)
    assert r.status_code == status and message in r.get_json()["error"]["message"]


def test_docs_returns_markdown_and_metadata(client, services):
    r = client.get("/api/docs/it/vpn")
    assert r.status_code == 200
    body = r.get_json()
    assert body["title"] == "VPN 远程访问指南" and "vpn" in body["tags"] and "## 安装客户端" in body["markdown"]
    assert body["url"] == services.cfg.server.wiki_base_url + "/docs/it/vpn" and body["html_url"] == "/docs/it/vpn"
    ids = [p["id"] for p in client.get("/api/docs").get_json()["pages"]]
    # an anonymous caller (no SSO proxy here) is listed every page with no audience, and nothing else
    assert "it/vpn" in ids and sorted(ids) == sorted(p.id for p in services.retriever.index.page_list() if not p.audience)


def test_unknown_doc_is_404_json(client):
    r = client.get("/api/docs/it/nope")
    assert r.status_code == 404 and r.get_json()["error"] == {"code": "not_found", "message": "no page 'it/nope' in the index"}


def test_api_responses_carry_the_security_headers(client):
    r = client.get("/api/docs/it/vpn")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"] and r.headers["X-Content-Type-Options"] == "nosniff"
