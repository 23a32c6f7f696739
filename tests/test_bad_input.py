"""Regression tests for bad input a probe sent: each is a clear 4xx in JSON, never a 500 or HTML."""
import json

import pytest

from web import create_app

HUGE = "9" * 5000  # Python's int() refuses more than 4,300 digits


@pytest.fixture
def client(make_services):
    s = make_services("VPN [1]", gate={"negative_threshold": 1.01}, answer={"min_score": 0.0})
    return create_app(s.cfg, services=s).test_client()


@pytest.mark.parametrize("path,field", [("/api/search", "query"), ("/api/search/stream", "query"),
                                        ("/api/sentiment", "texts")])
def test_a_5000_digit_integer_is_a_400_naming_the_problem(client, path, field):
    value = '"vpn"' if field == "query" else '["vpn"]'
    r = client.post(path, data=f'{{"{field}": {value}, "k": {HUGE}}}', content_type="application/json")
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    assert "digits" in r.get_json()["error"]["message"]


def test_stream_options_must_be_an_object_even_when_empty(client):
    body = {"model": "kbgate", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": []}
    r = client.post("/v1/chat/completions", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"]["param"] == "stream_options"


def test_options_on_the_api_is_an_empty_204_with_allow(client):
    r = client.open("/api/search", method="OPTIONS")
    assert r.status_code == 204 and r.get_data() == b""
    assert "POST" in r.headers["Allow"] and "text/html" not in r.headers.get("Content-Type", "")


def test_double_slash_doc_id_is_a_json_404_not_a_redirect(client):
    r = client.get("/api/docs//etc/passwd")
    assert r.status_code == 404 and r.is_json
    assert "root:" not in r.get_data(as_text=True)
