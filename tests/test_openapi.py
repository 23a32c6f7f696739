"""The OpenAPI document (web/openapi.yaml, GET /openapi.json) is valid, describes every route under
/api and /v1, and is true: schemathesis runs every operation against a live waitress server (the
fake engine over a real hash index of a small wiki) and finds no response outside the document and
no 5xx; the error shapes it cannot reach (not ready, busy, keys, deny, rate limit) are checked too."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import schemathesis
from openapi_spec_validator import validate

from fake_engine import FakeEngine
from index_fixtures import SMALL_KB, write_kb
from kbgate.admission import Admission
from kbgate.config import load_config
from web import create_app
from web.openapi import document, operations
from web.server import serve_in_thread, stop

PROBES = ("/healthz", "/readyz", "/openapi.json")
PENDING = {("POST", "/api/feedback")}  # described before its route lands; left out of the run until then
REPLY = "Open Self Service, search for Acme Connect and install it [1]."
MAX_EXAMPLES = int(os.environ.get("KBGATE_SCHEMATHESIS_EXAMPLES", "30"))  # per operation
SEED = int(os.environ.get("KBGATE_SCHEMATHESIS_SEED", "14"))  # fixed: CI runs the same cases each time
# negative_data_rejection: 413 is how the API refuses a text over [gate] max_query_chars (a rejection
# schemathesis does not list by default). positive_data_acceptance is off for chat completions:
# "task search/sentiment read the last message, which must be the user's" and the chat token limit
# cannot be said in JSON Schema (the document says them in words; test_openai.py tests them).
SCHEMATHESIS_TOML = """
max-stream-events = 5000  # the default 20 cuts an answer's stream before `done`, which then goes unchecked

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "413", "422", "429"]

[[operations]]
include-path = "/v1/chat/completions"
[operations.checks.positive_data_acceptance]
enabled = false
"""


@pytest.fixture(scope="module")
def services(tmp_path_factory, hash_embedder):
    """The fake engine over a real FAISS + BM25 index of the three-page wiki (answers cite [1])."""
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.retrieval import Retriever
    from kbgate.service import build

    root = tmp_path_factory.mktemp("openapi")
    # scripted replies are not about the passages: trust their [n] (grounding is tested elsewhere)
    cfg = load_config().replace(answer={"verify_citations": False, "min_score": 0.0})
    build_index(cfg, write_kb(root / "kb", SMALL_KB), root / "index", hash_embedder, progress=False)
    return build(cfg, FakeEngine(REPLY), Retriever(load_index(root / "index", hash_embedder), hash_embedder,
                                                   cfg.retrieval))


def template(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path template: /api/docs/<path:page_id> -> /api/docs/{page_id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def served_operations(app) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route under /api and /v1, and of the probes."""
    return {(m, template(r.rule)) for r in app.url_map.iter_rules()
            if r.rule.startswith(("/api/", "/v1/")) or r.rule in PROBES
            for m in r.methods - {"HEAD", "OPTIONS"}}


def undescribed(app, doc) -> set[tuple[str, str]]:
    return served_operations(app) - operations(doc)


# ---- the document ------------------------------------------------------------------------------------
def test_the_document_is_valid_openapi_3_1_and_loads_in_schemathesis():
    doc = document(load_config())
    validate(doc)  # openapi-spec-validator picks the 3.1 rules from "openapi": "3.1.0"
    assert doc["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(doc)
    assert {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())} == operations(doc)


def test_openapi_json_serves_the_document_with_the_configs_own_limits(services):
    cfg = services.cfg.replace(gate={"max_query_chars": 500, "batch_size": 4}, openai={"max_tokens": 64})
    r = create_app(cfg, services=services).test_client().get("/openapi.json")
    assert r.status_code == 200 and r.is_json
    doc = r.get_json()
    assert doc == json.loads(json.dumps(document(cfg)))
    s = doc["components"]["schemas"]
    assert s["Query"]["maxLength"] == 500 and s["SentimentRequest"]["properties"]["texts"]["maxItems"] == 16
    assert s["ChatRequest"]["properties"]["max_tokens"]["maximum"] == 64


def test_every_route_under_api_and_v1_is_described(services):
    app = create_app(services.cfg, services=services)
    doc = document(services.cfg)
    missing = undescribed(app, doc)
    assert not missing, f"routes web/openapi.yaml does not describe (add them there): {sorted(missing)}"
    gone = operations(doc) - served_operations(app) - PENDING
    assert not gone, f"web/openapi.yaml describes operations no route serves: {sorted(gone)}"


def test_the_route_check_notices_a_new_route(services):
    app = create_app(services.cfg, services=services)
    app.add_url_rule("/api/pages/<path:page_id>/history", "history", lambda page_id: {}, methods=["GET", "DELETE"])
    app.add_url_rule("/v1/embeddings", "embeddings", lambda: {}, methods=["POST"])
    assert undescribed(app, document(services.cfg)) == {
        ("GET", "/api/pages/{page_id}/history"), ("DELETE", "/api/pages/{page_id}/history"),
        ("POST", "/v1/embeddings")}


# ---- error shapes schemathesis cannot reach on a healthy open server ---------------------------------
@pytest.fixture
def conforms(services):
    """conforms(method, path, response): the status is documented and the body matches the document."""
    schema = schemathesis.openapi.from_dict(document(services.cfg))

    def check(method: str, path: str, r, retry_after: bool = False):
        op = schema[path][method]
        assert str(r.status_code) in op.responses.status_codes, f"{method} {path}: {r.status_code} undocumented"
        op.validate_response(r)
        if retry_after:
            assert int(r.headers["Retry-After"]) >= 1
        return r.get_json()
    return check


def chat(task="chat", content="How do I add a printer?"):
    return {"model": "m", "task": task, "messages": [{"role": "user", "content": content}]}


def test_not_ready_and_busy_are_documented(services, conforms, monkeypatch):
    client = create_app(services.cfg).test_client()  # no services and no loader: loading forever
    conforms("GET", "/readyz", client.get("/readyz"), retry_after=True)
    conforms("POST", "/api/search", client.post("/api/search", json={"query": "vpn"}), retry_after=True)
    conforms("GET", "/api/docs", client.get("/api/docs"), retry_after=True)
    conforms("POST", "/v1/chat/completions", client.post("/v1/chat/completions", json=chat()), retry_after=True)

    client = create_app(services.cfg, services=services).test_client()
    monkeypatch.setattr(services.pipeline, "admission", Admission(1, 0, 60.0))  # one slot, no queue
    tickets = [services.pipeline.admit()]  # another request holds it
    try:
        assert conforms("POST", "/api/search", client.post("/api/search", json={"query": "vpn"}),
                        retry_after=True)["error"]["code"] == "busy"
        conforms("POST", "/api/sentiment", client.post("/api/sentiment", json={"texts": ["hi"]}), retry_after=True)
        r = client.post("/v1/chat/completions", json=chat("search"))
        assert r.status_code == 429 and conforms("POST", "/v1/chat/completions", r, retry_after=True)
    finally:
        for t in tickets:
            t.release()


def test_keys_deny_and_rate_limit_are_documented(services, conforms, monkeypatch):
    monkeypatch.setenv(services.cfg.openai.auth_env, "k1,k2")
    client = create_app(services.cfg, services=services).test_client()
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    conforms("GET", "/v1/models", r)
    conforms("GET", "/v1/models/{model_id}", client.get("/v1/models/x", headers={"Authorization": "Bearer k3"}))
    ok = client.get(f"/v1/models/{services.cfg.openai.model_id}", headers={"Authorization": "Bearer k2"})
    assert conforms("GET", "/v1/models/{model_id}", ok)["id"] == services.cfg.openai.model_id
    monkeypatch.delenv(services.cfg.openai.auth_env)

    deny = services.cfg.replace(auth={"anonymous": "deny"})
    client = create_app(deny, services=services).test_client()
    assert "X-Forwarded-User" in conforms("POST", "/api/search", client.post("/api/search", json={"query": "vpn"})
                                          )["error"]["message"]
    conforms("GET", "/api/docs/{page_id}", client.get("/api/docs/it/vpn"))
    conforms("POST", "/v1/chat/completions", client.post("/v1/chat/completions", json=chat("search")))

    limited = services.cfg.replace(server={"rate_per_minute": 1})
    client = create_app(limited, services=services).test_client()
    conforms("POST", "/api/search", client.post("/api/search", json={"query": "vpn"}))
    assert conforms("POST", "/api/search", client.post("/api/search", json={"query": "vpn"}),
                    retry_after=True)["error"]["code"] == "rate_limited"
    client = create_app(limited, services=services).test_client()  # a bucket of its own
    conforms("POST", "/v1/chat/completions", client.post("/v1/chat/completions", json=chat()))
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 429 and conforms("POST", "/v1/chat/completions", r, retry_after=True)


def test_a_vote_on_an_answer_is_documented(services, conforms):
    client = create_app(services.cfg, services=services).test_client()
    answer = conforms("POST", "/api/search", client.post("/api/search", json={"query": "How do I install the VPN?"}))
    vote = {"answer_id": answer["answer_id"], "rating": "up"}
    assert conforms("POST", "/api/feedback", client.post("/api/feedback", json=vote))["status"] == "recorded"
    assert conforms("POST", "/api/feedback", client.post("/api/feedback", json={**vote, "rating": "down",
                                                                                "comment": "old steps"}))["status"] == "updated"
    conforms("POST", "/api/feedback", client.post("/api/feedback", json={**vote, "answer_id": "ans_0000000000000000"}))
    conforms("POST", "/api/feedback", client.post("/api/feedback", json={**vote, "rating": "meh"}))
    r = client.post("/api/feedback", json=vote, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and conforms("POST", "/api/feedback", r)


def test_too_large_and_wrong_method_are_documented(services, conforms):
    client = create_app(services.cfg, services=services).test_client()
    big = "x" * (services.cfg.server.max_body_bytes + 1)
    conforms("POST", "/api/search", client.post("/api/search", json={"query": big}))
    conforms("POST", "/v1/chat/completions", client.post("/v1/chat/completions", json=chat(content=big)))
    long = "x" * (services.cfg.gate.max_query_chars + 1)
    assert conforms("POST", "/v1/chat/completions", client.post("/v1/chat/completions", json=chat("search", long))
                    )["error"]["param"] == "messages[0].content"
    for path, method in (("/api/search", "GET"), ("/api/docs", "POST"), ("/v1/chat/completions", "GET"),
                         ("/readyz", "POST")):
        r = client.open(path, method=method)
        assert r.status_code == 405 and r.is_json and r.headers["Allow"], (path, method)


# ---- what schemathesis and writing the document found (regressions) ----------------------------------
def test_an_integral_float_is_an_integer_as_in_json_schema(services, conforms):
    """schemathesis sent "k": 19.0 (an integer to JSON Schema): it was a 400; 19.5 still is."""
    client = create_app(services.cfg, services=services).test_client()
    assert len(conforms("POST", "/api/search", client.post("/api/search", json={"query": "vpn", "k": 2.0}))
               ["sources"]) >= 1
    assert "k must be an integer" in conforms("POST", "/api/search", client.post(
        "/api/search", json={"query": "vpn", "k": 2.5}))["error"]["message"]
    ok = client.post("/v1/chat/completions", json={**chat(), "max_tokens": 4.0, "seed": 7.0})
    assert ok.status_code == 200 and conforms("POST", "/v1/chat/completions", ok)["usage"]["completion_tokens"] <= 4
    bad = client.post("/v1/chat/completions", json={**chat(), "max_tokens": 4.5})
    assert bad.status_code == 400 and conforms("POST", "/v1/chat/completions", bad)["error"]["param"] == "max_tokens"


def test_include_usage_must_be_a_boolean(services, conforms):
    """It was read as `is True`, so "yes" silently meant no usage chunk; now a 400 naming the field."""
    client = create_app(services.cfg, services=services).test_client()
    r = client.post("/v1/chat/completions", json={**chat(), "stream": True, "stream_options": {"include_usage": "yes"}})
    assert conforms("POST", "/v1/chat/completions", r)["error"]["param"] == "stream_options.include_usage"


def test_a_body_nested_too_deeply_to_read_is_a_400_not_a_500(services, conforms):
    client = create_app(services.cfg, services=services).test_client()
    deep = "[" * 20000 + "]" * 20000  # 40 KB, under max_body_bytes; deeper than Python's json can recurse
    assert "nested too deeply" in conforms("POST", "/v1/chat/completions", client.post(
        "/v1/chat/completions", data=deep, content_type="application/json"))["error"]["message"]
    conforms("POST", "/api/search", client.post("/api/search", data=deep, content_type="application/json"))


# ---- schemathesis against the live server ------------------------------------------------------------
@pytest.fixture
def live(services):
    app = create_app(services.cfg, services=services)
    server, base = serve_in_thread(app)
    try:
        yield app, base
    finally:
        stop(server)  # closed in its own loop thread: closing from here races its select()


def schemathesis_cli() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    return [str(exe)] if exe.exists() else [shutil.which("schemathesis") or "schemathesis"]


def run_schemathesis(location: str, folder: Path, *args: str, max_examples: int = MAX_EXAMPLES):
    """Run the schemathesis CLI on `location`; (exit code, stdout, the JSON report, the operations' phases)."""
    (folder / "schemathesis.toml").write_text(SCHEMATHESIS_TOML, encoding="utf-8")
    report, events = folder / "report.json", folder / "events.ndjson"
    cmd = [*schemathesis_cli(), "--config-file", str(folder / "schemathesis.toml"), "--no-color", "run", location,
           "--max-examples", str(max_examples), "--seed", str(SEED), "--workers", "2", "--request-timeout", "60",
           "--generation-database", "none", "--suppress-health-check", "too_slow",
           "--report", "json,ndjson", "--report-json-path", str(report), "--report-ndjson-path", str(events), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=folder)
    print(r.stdout[-6000:], r.stderr[-2000:], f"schemathesis took {time.perf_counter() - t0:.1f} s", sep="\n")
    phases: dict[str, set] = {}  # operation -> the phases that ran cases on it
    for line in events.read_text(encoding="utf-8").splitlines():
        done = json.loads(line).get("ScenarioFinished")
        if done and done["status"] != "skip" and done.get("recorder"):
            phases.setdefault(done["recorder"]["label"], set()).add(done["phase"])
    phases.pop("Stateful tests", None)
    return r.returncode, r.stdout + r.stderr, json.loads(report.read_text(encoding="utf-8")), phases


def test_schemathesis_finds_no_response_outside_the_document_and_no_5xx(live, tmp_path):
    app, base = live
    skip = sorted(PENDING - served_operations(app))
    rc, out, run, phases = run_schemathesis(f"{base}/openapi.json", tmp_path,
                                            *(a for _, path in skip for a in ("--exclude-path", path)))
    print(json.dumps({k: run[k] for k in ("running_time", "operations", "test_cases", "failures", "errors")}),
          {op: sorted(p) for op, p in sorted(phases.items())}, f"left out: {skip}")
    assert rc == 0, out[-20000:]
    assert run["complete"] and run["failures"] == [] and run["errors"] == []
    # schemathesis leaves out the operation it loaded the document from (GET /openapi.json, tested above)
    expected = {f"{m} {p}" for m, p in operations(document(app.extensions["kbgate"].cfg)) - set(skip)
                if p != "/openapi.json"}
    assert set(phases) == expected, f"operations schemathesis did not test: {sorted(expected - set(phases))}"
    assert all({"coverage", "fuzzing"} <= p for p in phases.values()), phases
    assert run["test_cases"]["generated"] >= 10 * len(expected)  # a real run, not a few examples


def test_the_schemathesis_run_fails_on_a_document_that_is_wrong(live, tmp_path):
    """The harness can fail: a wrong body (JSON and inside an SSE event) and a missing status are found."""
    app, base = live
    doc = document(app.extensions["kbgate"].cfg)
    doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["properties"][
        "status"] = {"const": "fine"}
    del doc["paths"]["/v1/models/{model_id}"]["get"]["responses"]["404"]
    doc["components"]["schemas"]["SearchResult"]["required"].append("not_sent")  # the `done` event's data
    (tmp_path / "wrong.json").write_text(json.dumps(doc), encoding="utf-8")
    rc, out, run, _ = run_schemathesis(str(tmp_path / "wrong.json"), tmp_path, "--url", base, "--phases",
                                       "examples,coverage,fuzzing", "--include-path", "/healthz", "--include-path",
                                       "/v1/models/{model_id}", "--include-path", "/api/search/stream",
                                       max_examples=10)
    failed = {op for f in run["failures"] for op in f["operations"]}
    assert rc != 0 and failed == {"GET /healthz", "GET /v1/models/{model_id}", "POST /api/search/stream"}, out[-8000:]
