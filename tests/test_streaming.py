"""SSE over a real socket, through the WSGI server `kbgate serve` uses, with a slowed scripted model."""
import json
import time

import pytest
import requests

from web import create_app
from web.server import serve_in_thread

STEPS = "".join(f"第{i}步，按页面操作 [1]。" for i in range(1, 21))  # 220 chars = 74 scripted tokens
TOKENS = -(-len(STEPS) // 3)
DELAY = 0.05  # seconds per token: generation takes ~3.7 s in all


@pytest.fixture
def served(make_services):
    """(base_url, services) for a served app whose model answers STEPS slowly; closed afterwards."""
    running = []

    def serve(**sections):
        services = make_services(STEPS, delay=DELAY, gate={"negative_threshold": 1.01},
                                 answer={"min_score": 0.0, "max_new_tokens": 200}, **sections)
        server, url = serve_in_thread(create_app(services.cfg, services=services))
        running.append(server)
        return url, services
    yield serve
    for server in running:
        server.close()


def sse_events(resp):
    """Yield (event, data, seconds since the request) as the bytes arrive."""
    t0, buf = time.perf_counter(), ""
    for chunk in resp.iter_content(chunk_size=None, decode_unicode=True):
        buf += chunk
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            yield fields["event"], json.loads(fields["data"]), time.perf_counter() - t0


def test_first_token_reaches_the_client_before_generation_ends(served):
    url, services = served()
    with requests.post(f"{url}/api/search?stream=1", json={"query": "在家怎么连公司内网"}, stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        first_token_at, generated_then, kinds = None, None, []
        for kind, data, at in sse_events(r):
            kinds.append(kind)
            if kind == "token" and first_token_at is None:
                first_token_at, generated_then = at, services.engine.generated
            if kind == "done":
                done, done_at = data, at
    assert kinds[:2] == ["sentiment", "sources"] and kinds[-1] == "done"
    assert generated_then <= TOKENS // 4, f"first token arrived after {generated_then}/{TOKENS} were generated"
    assert done_at - first_token_at > TOKENS * DELAY * 0.6  # the rest kept coming after it
    assert done["answer"] == STEPS and services.engine.generated == TOKENS


def test_a_client_that_leaves_frees_its_slot_and_stops_generation(served):
    url, services = served(server={"max_pending": 1})
    with requests.post(f"{url}/api/search/stream", json={"query": "VPN"}, stream=True, timeout=60) as r:
        for kind, _, _ in sse_events(r):
            if kind == "token":
                break
        busy = requests.post(f"{url}/api/search", json={"query": "VPN"}, timeout=30)
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
    deadline = time.monotonic() + 10  # the server notices at its next write
    while time.monotonic() < deadline:
        with requests.post(f"{url}/api/sentiment", json={"texts": ["VPN"]}, timeout=30) as again:
            if again.status_code == 200:
                break
        time.sleep(0.1)
    assert again.status_code == 200
    assert services.engine.generated < TOKENS


def test_errors_before_the_stream_are_plain_json(served):
    url, _ = served()
    r = requests.post(f"{url}/api/search?stream=1", json={"query": " "}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"] == "query is empty"
    r = requests.post(f"{url}/api/search/stream", data="{", headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
