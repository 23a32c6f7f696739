"""The `openai` engine: faults against tiny local HTTP servers (fast), the real thing against
llama-cpp-python's own OpenAI-compatible server with the bundled GGUF (slow)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from kbgate.config import load_config
from kbgate.engine import Finish
from kbgate.engines.remote import RemoteEngine, estimate_tokens, render_chatml
from web import create_app

WORDS = ["感谢", "称赞", "提问", "陈述", "抱怨", "讽刺"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remote_cfg(port: int, **remote):
    return load_config().replace(model={"engine": "openai"},
                                 remote={"base_url": f"http://127.0.0.1:{port}/v1", "connect_timeout_s": 1.0,
                                         "read_timeout_s": 2.0, **remote})


class FakeServer:
    """An OpenAI-shaped server that behaves, then answers junk, hangs or dies (mode)."""

    def __init__(self):
        self.mode, self.release = "ok", threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status: int, body: bytes, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                if outer.mode == "hang":
                    outer.release.wait(30)
                    return
                if outer.mode == "junk":
                    return self.reply(200, b"<html><body>502 proxy says hello</body></html>", "text/html")
                if self.path == "/v1/models":
                    return self.reply(200, json.dumps({"data": [{"id": "fake-qwen"}]}).encode())
                if self.path == "/v1/completions":
                    top = {w: -1.0 - i for i, w in enumerate(WORDS)} | {"Yes": -0.1}
                    return self.reply(200, json.dumps({"choices": [{"text": "Yes", "logprobs": {
                        "top_logprobs": [top]}}]}).encode())
                self.reply(404, b'{"detail": "Not Found"}')

            do_GET = do_POST = handle_any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def fake_services(fake):
    """Services on the fake server, without an index: the faults surface at the gate, before retrieval."""
    from kbgate.service import build
    cfg = remote_cfg(fake.port)
    return build(cfg, RemoteEngine(cfg))


def post(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def test_chatml_render_leaves_the_last_turn_open_for_the_gate():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "文本：x\n类别："}]
    assert render_chatml(msgs, open_last=True, generation_prompt=False) == \
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n文本：x\n类别："
    assert render_chatml(msgs[1:], open_last=False, generation_prompt=True).endswith(
        "类别：<|im_end|>\n<|im_start|>assistant\n")
    assert 5 <= estimate_tokens("How do I reset my password?") <= 10 and estimate_tokens("在家怎么连") == 5


def test_unreachable_server_is_readyz_503_with_the_reason_and_search_503_with_retry_after():
    from kbgate.service import load_services
    cfg = remote_cfg(free_port())  # nothing listens there
    t0 = time.perf_counter()
    app = create_app(cfg, loader=lambda: load_services(cfg, with_retriever=False))
    app.extensions["kbgate"].ready.wait(10)
    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and "unreachable" in r.get_json()["error"]["message"]
    assert f"127.0.0.1:{cfg.remote.base_url.split(':')[2]}" in r.get_json()["error"]["message"]
    s = post(client, "/api/search", {"query": "在家怎么连公司 VPN？"})
    assert s.status_code == 503 and int(s.headers["Retry-After"]) > 0
    assert time.perf_counter() - t0 < 5  # a refused connection fails fast, never a hang


def test_a_server_that_answers_junk_is_a_json_502_naming_the_engine(fake, fake_services):
    client = create_app(fake_services.cfg, services=fake_services).test_client()
    fake.mode = "junk"
    r = post(client, "/api/search", {"query": "How do I reset my password?"})
    assert r.status_code == 502 and r.get_json()["error"]["code"] == "engine_bad_response"
    assert f"openai engine at http://127.0.0.1:{fake.port}/v1" in r.get_json()["error"]["message"]


def test_a_hung_server_times_out_within_the_configured_seconds(fake, fake_services):
    client = create_app(fake_services.cfg, services=fake_services).test_client()
    fake.mode = "hang"
    t0 = time.perf_counter()
    r = post(client, "/api/search", {"query": "How do I reset my password?"})
    took = time.perf_counter() - t0
    assert r.status_code == 503 and r.headers["Retry-After"] == str(fake_services.cfg.remote.retry_after_s)
    assert "read_timeout_s" in r.get_json()["error"]["message"]
    assert fake_services.cfg.remote.read_timeout_s <= took < fake_services.cfg.remote.read_timeout_s + 2


def test_a_server_that_dies_after_start_makes_search_503(fake, fake_services):
    client = create_app(fake_services.cfg, services=fake_services).test_client()
    engine = fake_services.engine
    assert engine.health() is None
    fake.close()
    r = post(client, "/api/search", {"query": "How do I reset my password?"})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert "unreachable" in engine.health()


def test_classify_reads_top_logprobs_and_softmaxes_over_the_choices(fake):
    e = RemoteEngine(remote_cfg(fake.port))
    assert e.scoring == "top_logprobs" and e.dialect is None and e.model == "fake-qwen"
    p = e.classify([{"role": "user", "content": "类别："}], ["感谢", "抱怨", "未知"])
    # 未知 is outside the top list: it gets the list's lowest value (-6 for 讽刺) as an upper bound
    assert p["感谢"] > p["抱怨"] > p["未知"] and abs(sum(p.values()) - 1) < 1e-9
    assert abs(p["感谢"] / p["抱怨"] - 2.718281828 ** 4) < 1e-6


def test_a_key_from_the_environment_is_sent_as_bearer(fake, monkeypatch):
    monkeypatch.setenv("KBGATE_TEST_REMOTE_KEY", "s3cret")
    e = RemoteEngine(remote_cfg(fake.port, api_key_env="KBGATE_TEST_REMOTE_KEY"))
    assert e._session().headers["Authorization"] == "Bearer s3cret"


# --- the real server ------------------------------------------------------------------------

# `python -m llama_cpp.server` with llama.cpp's extra buffer types off, as kbgate's own llamacpp
# engine runs it: on VMs that list AMX without enabling it, ggml's AMX matmul dies with SIGILL
# on the first prompt longer than one token (a wheel built with -mno-amx-* has no such path)
SERVER_MAIN = """
import sys, llama_cpp, llama_cpp.llama as L
default = llama_cpp.llama_model_default_params
def params():
    p = default(); p.use_extra_bufts = False; return p
L.llama_cpp.llama_model_default_params = params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


@pytest.fixture(scope="session")
def llama_server():
    """llama-cpp-python's OpenAI server on loopback with the bundled GGUF: (port, process)."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (make setup)")
    from kbgate.provision import fetch_gguf
    gguf = fetch_gguf(load_config())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER_MAIN, "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_threads", "2", "--n_ctx", "4096", "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not come up within 120 s")
    yield port, proc
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def remote_engine(llama_server):
    return RemoteEngine(remote_cfg(llama_server[0], read_timeout_s=120.0))


@pytest.mark.slow
def test_the_real_server_scores_and_tokenizes(remote_engine):
    assert remote_engine.scoring == "top_logprobs" and remote_engine.dialect == "llama-cpp-python"
    assert remote_engine.count_tokens("正面") == 1 and remote_engine.count_tokens("How do I reset my password?") == 7


@pytest.mark.slow
def test_the_gate_classifies_through_the_server(remote_engine, hash_retriever):
    from kbgate.service import build
    s = build(remote_engine_cfg(remote_engine), remote_engine, hash_retriever)
    got = {t: x.label for t, x in zip(GATE_CASES, s.gate.classify(list(GATE_CASES)))}
    assert sum(got[t] == want for t, want in GATE_CASES.items()) >= len(GATE_CASES) - 1, got


GATE_CASES = {"谢谢你们，VPN 终于好了，太棒了！": "positive", "How do I add a printer on the 3rd floor?": "neutral",
              "VPN 又连不上了，烦死了，一早上都白费了！": "negative", "怎么申请年假？": "neutral",
              "This is the third time my account got locked today, useless!": "negative",
              "Thanks a lot, the new laptop works great": "positive"}


def remote_engine_cfg(engine):
    return remote_cfg(int(engine.base.rsplit(":", 1)[1].split("/")[0]), read_timeout_s=120.0)


@pytest.mark.slow
def test_an_answer_streams_through_the_server(remote_engine):
    msgs = [{"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]
    items = list(remote_engine.stream(msgs, max_tokens=24, repetition_penalty=1.1))
    text, fin = "".join(i for i in items if isinstance(i, str)), items[-1]
    assert "Paris" in text and isinstance(fin, Finish) and 0 < fin.completion_tokens <= 24
    assert len([i for i in items if isinstance(i, str)]) > 1  # it streamed, piece by piece
    assert fin.prompt_tokens == remote_engine.prompt_tokens(msgs)


@pytest.mark.slow
def test_search_streams_an_answer_and_concurrent_searches_all_finish(remote_engine, hash_retriever):
    from kbgate.service import build
    cfg = remote_engine_cfg(remote_engine).replace(answer={"min_score": 0.0, "max_new_tokens": 40},
                                                   gate={"negative_threshold": 1.01},
                                                   server={"max_pending": 16, "deadline_s": 600.0})
    s = build(cfg, remote_engine, hash_retriever)
    client = create_app(cfg, services=s).test_client()
    r = client.post("/api/search", data=json.dumps({"query": "在家怎么连公司 VPN？", "stream": True}),
                    content_type="application/json")
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and body.count("event: token") > 1 and "event: done" in body

    def one(q):
        t0 = time.perf_counter()
        resp = create_app(cfg, services=s).test_client().post(
            "/api/search", data=json.dumps({"query": q}), content_type="application/json")
        return resp.status_code, time.perf_counter() - t0

    _, single = one("How do I reset my password?")
    qs = ["How do I reset my password?", "打印机怎么添加？", "How many days of annual leave do I get?",
          "报销被驳回了怎么办"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, qs))
    wall = time.perf_counter() - t0
    print(f"\n1 search {single:.2f} s; 4 concurrent {wall:.2f} s ({wall / single:.2f}x)")
    assert all(code == 200 for code, _ in results)
    # llama-cpp-python's server runs one request at a time (a global lock, no parallel slots),
    # so 4 requests cannot beat ~4x one; a server with slots (llama.cpp --parallel 4, vLLM)
    # is what the <= 2x target needs
    assert wall <= 4 * single * 1.5
