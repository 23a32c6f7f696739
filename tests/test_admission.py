"""Admission that sheds load: a bounded queue in front of the engine, refusals at once with Retry-After,
and a client that leaves frees its slot (the queue alone, then through waitress with a slowed fake engine)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from kbgate.admission import CUT_MARGIN, Admission, Cancelled
from kbgate.errors import Busy
from web import create_app
from web.server import serve_in_thread

SLOW = "".join(f"第{i}步，按页面操作 [1]。" for i in range(1, 21))  # 74 scripted tokens
DELAY = 0.05  # seconds per token: one answer takes ~3.7 s
ROUTE = {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 0.0, "max_new_tokens": 200}}


def hold(adm: Admission, kind: str = "search", cancelled=None):
    """Enter `adm` from a thread; return (thread, box) where box gets the ticket or the error."""
    box: dict = {}

    def run():
        try:
            box["ticket"] = adm.enter(kind, cancelled)
        except Exception as e:
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_beyond_the_queue_is_refused_at_once_with_the_expected_wait():
    adm = Admission(slots=1, queue=1, deadline_s=60)
    running = adm.enter("search")
    t, queued = hold(adm)
    wait_for(lambda: adm.status()["waiting"] == 1)
    with pytest.raises(Busy) as e:
        adm.enter("search")
    assert "already being answered or queued" in e.value.message and e.value.retry_after >= 1
    running.release()
    t.join(5)
    assert "ticket" in queued  # the queued one got the slot when it was freed
    queued["ticket"].release()
    assert adm.status()["running"] == adm.status()["waiting"] == 0 and adm.refused == 1


def test_an_expected_wait_past_the_deadline_is_refused_before_queueing():
    adm = Admission(slots=1, queue=8, deadline_s=5)
    with adm.enter("search"):  # a search is first guessed at 10 s: queueing behind it cannot finish in 5 s
        with pytest.raises(Busy) as e:
            adm.enter("search")
        assert "deadline" in e.value.message and e.value.retry_after >= 5
        assert adm.status()["waiting"] == 0
    with adm.enter("search"):  # the slot is free: admitted whatever its estimate
        pass


def test_the_estimate_follows_measured_durations():
    now = [0.0]
    adm = Admission(slots=1, queue=4, deadline_s=60, clock=lambda: now[0])
    ticket = adm.enter("search")
    now[0] += 2.0
    ticket.release()
    assert adm.expected("search") == 2.0  # measured, no longer the first guess
    cut = adm.enter("search")
    now[0] += 0.1
    cut.record = False  # a cancelled request says nothing about how long answers take
    cut.release()
    assert adm.expected("search") == 2.0


def test_a_reply_is_cut_before_its_deadline_leaving_time_to_send_it():
    now = [100.0]
    adm = Admission(slots=1, queue=1, deadline_s=60, clock=lambda: now[0])
    with adm.enter("search") as ticket:
        now[0] += 60 * (1 - CUT_MARGIN) - 0.5
        assert not ticket.overdue()
        now[0] += 1.0  # inside the margin: the answer so far is checked and sent, so it ends by the deadline
        assert ticket.overdue() and now[0] < 100.0 + 60


def test_a_queued_client_that_leaves_gives_its_place_back():
    adm = Admission(slots=1, queue=1, deadline_s=60)
    gone = threading.Event()
    with adm.enter("search"):
        t, box = hold(adm, cancelled=gone.is_set)
        wait_for(lambda: adm.status()["waiting"] == 1)
        gone.set()
        t.join(5)
        assert isinstance(box["error"], Cancelled) and adm.status()["waiting"] == 0
        t2, box2 = hold(adm)  # its place in the queue is free again
        wait_for(lambda: adm.status()["waiting"] == 1)
    t2.join(5)
    box2["ticket"].release()


def test_nothing_is_admitted_with_max_pending_zero(make_services):
    s = make_services(SLOW, server={"max_pending": 0}, **ROUTE)
    with pytest.raises(Busy):
        s.pipeline.ask("VPN")


@pytest.fixture
def served(make_services):
    """(base_url, services) of a waitress-served app whose model answers slowly; closed afterwards."""
    running = []

    def serve(**server):
        services = make_services(SLOW, delay=DELAY, server=server, **ROUTE)
        srv, url = serve_in_thread(create_app(services.cfg, services=services))
        running.append(srv)
        return url, services
    yield serve
    for srv in running:
        srv.close()


def post_in_thread(url: str, body: dict, out: list):
    t = threading.Thread(target=lambda: out.append(requests.post(url, json=body, timeout=60)), daemon=True)
    t.start()
    return t


def test_a_full_queue_is_503_with_retry_after_at_once_over_http(served):
    url, s = served(engine_slots=1, max_pending=2)
    done: list = []
    threads = [post_in_thread(f"{url}/api/search", {"query": "VPN"}, done) for _ in range(2)]
    wait_for(lambda: (s.pipeline.admission.status()["running"], s.pipeline.admission.status()["waiting"]) == (1, 1))
    for path, body in (("/api/search", {"query": "VPN"}), ("/api/sentiment", {"texts": ["VPN"]}),
                       ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "VPN"}],
                                                 "task": "search"})):
        t0 = time.perf_counter()
        r = requests.post(url + path, json=body, timeout=30)
        took = time.perf_counter() - t0
        assert r.status_code == (429 if path.startswith("/v1") else 503), r.text  # /v1: OpenAI clients back off on 429
        assert int(r.headers["Retry-After"]) >= 1 and took < 2.0  # refused at once, not after the queue moved
    for t in threads:
        t.join(60)
    assert [r.status_code for r in done] == [200, 200]  # the two admitted ones were answered


def raw_post(url: str, path: str, body: bytes) -> socket.socket:
    """Send a JSON POST on a bare socket (so the test decides when the client hangs up)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


@pytest.mark.parametrize("path,body", [
    ("/api/search", b'{"query": "VPN"}'),  # JSON: nothing is written until the answer is done
    ("/v1/chat/completions", b'{"model": "m", "stream": true, "task": "search", '
                             b'"messages": [{"role": "user", "content": "VPN"}]}'),  # buffered until done
])
def test_a_client_gone_mid_answer_stops_decoding_and_frees_the_slot(served, path, body):
    url, s = served(engine_slots=1, max_pending=1)
    sock = raw_post(url, path, body)
    wait_for(lambda: s.engine.generated >= 3)  # decoding has begun
    sock.close()
    wait_for(lambda: s.pipeline.admission.status()["running"] == 0, timeout=5)
    stopped_at = s.engine.generated
    assert stopped_at < len(SLOW) // 3 // 2, f"decoded {stopped_at} tokens after the client left"
    time.sleep(0.3)
    assert s.engine.generated == stopped_at  # nothing decodes for nobody
    assert requests.post(f"{url}/api/sentiment", json={"texts": ["VPN"]}, timeout=30).status_code == 200


def test_an_answer_still_decoding_at_the_deadline_is_cut_and_answered(make_services):
    s = make_services(SLOW, delay=DELAY, server={"deadline_s": 1.0}, **ROUTE)  # the full reply takes ~3.7 s
    r = s.pipeline.ask("在家怎么连公司内网")
    assert "cut at the 1 s deadline" in r.reason and r.route == "answer"
    assert 0 < s.engine.generated < len(SLOW) // 3 and SLOW.startswith(r.answer.split("[1]")[0])
    assert s.pipeline.admission.status()["running"] == 0


def test_a_caller_over_its_rate_gets_429_with_retry_after_and_others_do_not(make_services, monkeypatch):
    s = make_services("答案 [1]。", server={"rate_per_minute": 2}, **ROUTE)
    client = create_app(s.cfg, services=s).test_client()
    me, other = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}
    for _ in range(2):
        assert client.post("/api/sentiment", json={"texts": ["VPN"]}, environ_base=me).status_code == 200
    r = client.post("/api/search", json={"query": "VPN"}, environ_base=me)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 30  # one request's worth of a 2-a-minute bucket
    assert client.post("/api/search", json={"query": "VPN"}, environ_base=other).status_code == 200
    body = {"model": "m", "messages": [{"role": "user", "content": "VPN"}], "task": "sentiment"}
    monkeypatch.setenv("KBGATE_API_KEYS", "k1")  # a valid key is its own caller (a made-up one is its address)
    v1 = [client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k1"}, environ_base=me)
          for _ in range(3)]
    assert [r.status_code for r in v1] == [200, 200, 429]  # /v1 callers are their keys, not their address
    assert v1[-1].get_json()["error"]["type"] == "rate_limit_error" and v1[-1].headers["Retry-After"]
    assert client.get("/readyz", environ_base=me).status_code == 200  # only model requests count


def test_the_rate_bucket_refills_with_time():
    from kbgate.admission import RateLimit, RateLimited

    now = [0.0]
    limit = RateLimit(60, clock=lambda: now[0])  # one a second, bursts of 60
    for _ in range(60):
        limit.check("a")
    with pytest.raises(RateLimited) as e:
        limit.check("a")
    assert e.value.retry_after == 1
    now[0] += 1.0
    limit.check("a")
