"""/metrics in the Prometheus text format, parsed with prometheus_client's own parser: after a known set
of requests every counter moved by exactly what was sent (counters live for the process, so each test
compares two scrapes); stage histograms, model and index info, the address allow-list, several processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kbgate import metrics
from kbgate.errors import ConfigError
from kbgate.config import load_config
from web import create_app
from web.server import serve_in_thread

ANSWER = "在家连 VPN 先安装客户端 [1]，然后用 SSO 登录 [2]。"
ROUTE = {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 0.0}}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scrape(client, **kw) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    r = client.get("/metrics", **kw)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith("text/plain")
    return parse(r.get_data(as_text=True))


def parse(text: str) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def val(m: dict, name: str, **labels) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def labelled(m: dict, name: str) -> list[dict]:
    return [dict(k[1]) for k in m if k[0] == name]


def post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


@pytest.fixture
def one_slot(make_services):
    """Services with one engine slot and no queue: one held ticket makes the next search a 503."""
    return make_services(ANSWER, **ROUTE, server={"engine_slots": 1, "max_pending": 1})


def test_counters_move_by_exactly_what_was_sent(one_slot):
    s = one_slot
    client = create_app(s.cfg, services=s).test_client()
    before, gen0 = scrape(client), s.engine.generated
    totals = []
    for q in ("在家怎么连公司内网", "how do I add a printer", "年假有几天"):
        r = post(client, "/api/search", {"query": q})
        assert r.status_code == 200
        totals.append(r.get_json()["timings_ms"])
    for texts in (["谢谢"], ["VPN 又崩了", "ok"]):
        assert post(client, "/api/sentiment", {"texts": texts}).status_code == 200
    assert post(client, "/api/search", {}).status_code == 400
    with s.pipeline.admit("search"):  # the only slot taken: the next search is refused at once
        r = post(client, "/api/search", {"query": "vpn"})
        assert r.status_code == 503 and r.headers["Retry-After"]
    after = scrape(client)

    def moved(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    req = "kbgate_http_requests_total"
    assert moved(req, endpoint="/api/search", method="POST", status="200") == 3
    assert moved(req, endpoint="/api/sentiment", method="POST", status="200") == 2
    assert moved(req, endpoint="/api/search", method="POST", status="400") == 1
    assert moved(req, endpoint="/api/search", method="POST", status="503") == 1
    assert moved(req, endpoint="/metrics", method="GET", status="200") == 1  # the first scrape, counted once done
    assert moved("kbgate_http_request_duration_seconds_count", endpoint="/api/search") == 5
    assert moved("kbgate_rejections_total", reason="queue_full") == 1
    assert moved("kbgate_rejections_total", reason="deadline") == 0
    for stage in metrics.STAGES:  # every stage of the 3 answers, none of the refused or bad ones
        assert moved("kbgate_stage_duration_seconds_count", stage=stage, route="answer") == 3
    want = sum(t["total"] for t in totals) / 1000
    assert moved("kbgate_stage_duration_seconds_sum", stage="total", route="answer") == pytest.approx(want)
    assert moved("kbgate_stage_duration_seconds_bucket", stage="total", route="answer", le="+Inf") == 3
    assert sum(moved("kbgate_answers_total", route="answer", sentiment=x)
               for x in ("positive", "neutral", "negative")) == 3
    tokens = s.engine.generated - gen0
    assert tokens == 3 * -(-len(ANSWER) // 3) and moved("kbgate_tokens_generated_total", role="answer") == tokens


def test_scrape_time_gauges_show_queue_model_and_index(one_slot):
    s = one_slot
    client = create_app(s.cfg, services=s).test_client()
    with s.pipeline.admit("search"):
        m = scrape(client)
        assert val(m, "kbgate_admission_running") == 1 and val(m, "kbgate_admission_waiting") == 0
    m = scrape(client)
    assert val(m, "kbgate_admission_running") == 0 and val(m, "kbgate_admission_slots") == 1
    assert val(m, "kbgate_ready") == 1
    info = labelled(m, "kbgate_model_info")
    assert info == [{k: str(v) for k, v in s.model_info().items()}] and info[0]["engine"] == "fake"
    index = s.retriever.index
    assert labelled(m, "kbgate_index_info") == [{"version": index.version}]
    assert val(m, "kbgate_index_pages") == len(index.pages) and val(m, "kbgate_index_chunks") == len(index)
    assert val(m, "process_resident_memory_bytes") > 0  # the process collector, single-process mode


def test_index_gauges_are_read_at_each_scrape(make_services, small_kb, hash_embedder, tmp_path):
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.retrieval import Retriever

    s = make_services(ANSWER, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    first = labelled(scrape(client), "kbgate_index_info")[0]["version"]
    out = tmp_path / "other-index"
    build_index(s.cfg, small_kb, out, hash_embedder, progress=False)
    other = Retriever(load_index(out, hash_embedder), hash_embedder, s.cfg.retrieval)
    if hasattr(s, "swap"):  # kbgate.service's hot reload
        s.swap(other)
    else:
        s.retriever = s.pipeline.retriever = other
    m = scrape(client)
    assert labelled(m, "kbgate_index_info") == [{"version": other.index.version}] != [{"version": first}]
    assert val(m, "kbgate_index_pages") == 3 == len(other.index.pages)


def test_routes_label_the_stages_and_no_answer_has_no_first_token(make_services):
    trouble = make_services("先确认客户端版本 [1]。", gate={"negative_threshold": 0.0}, answer={"min_score": 0.0})
    none = make_services(ANSWER, answer={"min_score": 1.01})
    c1, c2 = (create_app(x.cfg, services=x).test_client() for x in (trouble, none))
    before = scrape(c1)
    assert post(c1, "/api/search", {"query": "VPN 又连不上了！"}).get_json()["route"] == "troubleshooting"
    assert post(c2, "/api/search", {"query": "how do I bake bread"}).get_json()["route"] == "no_answer"
    after = scrape(c1)

    def moved(**labels):
        return val(after, "kbgate_stage_duration_seconds_count", **labels) - \
            val(before, "kbgate_stage_duration_seconds_count", **labels)

    assert moved(stage="total", route="troubleshooting") == 1 and moved(stage="first_token", route="troubleshooting") == 1
    assert moved(stage="total", route="no_answer") == 1 and moved(stage="gate", route="no_answer") == 1
    assert moved(stage="first_token", route="no_answer") == 0  # the model never ran
    assert val(after, "kbgate_tokens_generated_total", role="troubleshoot") > val(before, "kbgate_tokens_generated_total",
                                                                                 role="troubleshoot")


def test_streamed_answers_are_counted_when_the_stream_ends(make_services, monkeypatch):
    """SSE and OpenAI streams finish after the view returned: their stages and status are recorded then."""
    monkeypatch.delenv("KBGATE_API_KEYS", raising=False)
    s = make_services(ANSWER, **ROUTE)
    server, base = serve_in_thread(create_app(s.cfg, services=s))
    try:
        def m():
            return parse(requests.get(f"{base}/metrics", timeout=10).text)
        before = m()
        r = requests.post(f"{base}/api/search/stream", json={"query": "在家怎么连公司内网"}, timeout=30)
        assert r.status_code == 200 and "event: done" in r.text
        body = {"model": "m", "messages": [{"role": "user", "content": "how do I add a printer"}], "stream": True,
                "task": "search"}
        r = requests.post(f"{base}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        def counted(after) -> list[float]:
            return [val(after, "kbgate_http_requests_total", endpoint=e, method="POST", status="200")
                    - val(before, "kbgate_http_requests_total", endpoint=e, method="POST", status="200")
                    for e in ("/api/search/stream", "/v1/chat/completions")]
        deadline = time.monotonic() + 10  # the server records a stream just after its last byte has left
        while counted(after := m()) != [1, 1] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.close()
    assert counted(after) == [1, 1]
    for stage in metrics.STAGES:
        assert (val(after, "kbgate_stage_duration_seconds_count", stage=stage, route="answer")
                - val(before, "kbgate_stage_duration_seconds_count", stage=stage, route="answer")) == 2


def test_a_rate_limited_request_is_a_counted_429(make_services):
    s = make_services(ANSWER, **ROUTE, server={"rate_per_minute": 1})
    client = create_app(s.cfg, services=s).test_client()
    before = scrape(client)
    assert post(client, "/api/sentiment", {"texts": ["hi"]}).status_code == 200
    assert post(client, "/api/sentiment", {"texts": ["hi"]}).status_code == 429
    after = scrape(client)
    assert val(after, "kbgate_rejections_total", reason="rate_limit") - val(before, "kbgate_rejections_total",
                                                                            reason="rate_limit") == 1
    key = dict(endpoint="/api/sentiment", method="POST", status="429")
    assert val(after, "kbgate_http_requests_total", **key) - val(before, "kbgate_http_requests_total", **key) == 1


def test_unmatched_paths_share_one_endpoint_label(make_services):
    s = make_services(ANSWER, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    before = scrape(client)
    for path in ("/nope/1", "/nope/2", "/api/docs/no/such/page"):
        assert client.get(path).status_code == 404
    after = scrape(client)
    key = dict(endpoint="<unmatched>", method="GET", status="404")
    assert val(after, "kbgate_http_requests_total", **key) - val(before, "kbgate_http_requests_total", **key) == 2
    key = dict(endpoint="/api/docs/<path:page_id>", method="GET", status="404")  # the rule, not the page id
    assert val(after, "kbgate_http_requests_total", **key) - val(before, "kbgate_http_requests_total", **key) == 1
    assert not [x for x in labelled(after, "kbgate_http_requests_total") if "/nope" in x["endpoint"]]


def test_metrics_only_for_allowed_addresses(make_services):
    s = make_services(ANSWER, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    r = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert r.status_code == 403 and r.is_json and "[metrics] allow" in r.get_json()["error"]["message"]
    assert "kbgate_" not in r.get_data(as_text=True)
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200  # loopback by default
    cfg = s.cfg.replace(metrics={"allow": ["10.0.0.0/8"]})
    client = create_app(cfg, services=s).test_client()
    for addr, status in (("10.1.2.3", 200), ("::ffff:10.1.2.3", 200), ("127.0.0.1", 403), ("11.0.0.1", 403)):
        assert client.get("/metrics", environ_base={"REMOTE_ADDR": addr}).status_code == status, addr
    client = create_app(s.cfg.replace(metrics={"enabled": False}), services=s).test_client()
    assert client.get("/metrics").status_code == 404


def test_bad_allow_entries_are_config_errors(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text('[metrics]\nallow = ["10.0.0.0/8", "intranet"]\n')
    with pytest.raises(ConfigError, match=r"\[metrics\] allow: 'intranet' is not an IP address"):
        load_config(p)


def test_metrics_while_loading_say_not_ready(make_services):
    s = make_services(ANSWER, **ROUTE)
    import threading
    release = threading.Event()
    client = create_app(s.cfg, loader=lambda: release.wait(10) and s).test_client()
    m = scrape(client)
    release.set()
    assert val(m, "kbgate_ready") == 0 and not labelled(m, "kbgate_model_info")


def test_feedback_counts_with_bounded_labels(make_services):
    s = make_services(ANSWER, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    before = scrape(client)
    metrics.record_feedback("up", "page")
    metrics.record_feedback("down", "slack")
    metrics.record_feedback(-1)
    metrics.record_feedback("meh", "somewhere")
    after = scrape(client)
    for (rating, source), n in {("up", "page"): 1, ("down", "slack"): 1, ("down", "api"): 1,
                                ("other", "other"): 1, ("up", "api"): 0}.items():
        assert val(after, "kbgate_feedback_total", rating=rating, source=source) - \
            val(before, "kbgate_feedback_total", rating=rating, source=source) == n


CHILD = """
import os
from kbgate import metrics
from kbgate.admission import Admission
metrics.record_request("/api/search", "POST", 200, 0.2)
metrics.record_feedback("up", "page")
held = Admission(2, 4, 60).enter("search")  # running when this worker ends without a server hook marking it dead
print(os.getpid(), flush=True)
"""


def test_several_processes_add_up(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR: counters are summed over worker processes, queue depth is a live sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": ROOT}
    pids = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        pids.append(int(out.stdout))

    def scrape_files() -> dict:
        code = "from kbgate import metrics; print(metrics.Exposition(lambda: None).render().decode())"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return parse(out.stdout)

    m = scrape_files()
    assert val(m, "kbgate_http_requests_total", endpoint="/api/search", method="POST", status="200") == 2
    assert val(m, "kbgate_http_request_duration_seconds_sum", endpoint="/api/search") == pytest.approx(0.4)
    assert val(m, "kbgate_feedback_total", rating="up", source="page") == 2
    assert val(m, "kbgate_admission_running") == 2 and val(m, "kbgate_admission_slots") == 4
    assert not labelled(m, "process_resident_memory_bytes")  # per-process collectors are off, as upstream advises
    from prometheus_client.multiprocess import mark_process_dead
    mark_process_dead(pids[0], str(tmp_path))  # what the server's worker-exit hook does
    m = scrape_files()
    assert val(m, "kbgate_admission_running") == 1 and val(m, "kbgate_admission_slots") == 2
    assert val(m, "kbgate_http_requests_total", endpoint="/api/search", method="POST", status="200") == 2  # kept
