"""`kbgate slack-proxy`: the Slack endpoint in its own process, relaying a real kbgate upstream's answers."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from kbgate.config import load_config
from test_slack import (ANSWER, ANSWER_ROUTE, LINK, ask, assert_valid_blocks, sections, secret, signed,  # noqa: F401
                        sink, slash_body, source_links)
from web import create_app
from web.server import serve_in_thread
from web.slack_proxy import create_proxy_app, slack_proxy_cmd

ROOT = Path(__file__).resolve().parent.parent
SINK_ALLOWED = {"allowed_response_hosts": ["127.0.0.1"], "allow_http": True}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (an upstream that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(pipeline, timeout: float = 30.0):
    """Wait until no job holds or waits for a pipeline slot, so closing the server cuts no answer off."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = pipeline.admission.status()
        if st["running"] == st["waiting"] == 0:
            return
        time.sleep(0.1)


@pytest.fixture
def upstream(make_services):
    """make(reply, delay, **sections) -> base URL of a real kbgate app served on 127.0.0.1."""
    running = []

    def make(reply: str = ANSWER, delay: float = 0.0, **sections):
        services = make_services(reply, delay, **(sections or ANSWER_ROUTE))
        server, base = serve_in_thread(create_app(load_config(), services=services))
        running.append((server, services))
        return base

    yield make
    for server, services in running:
        wait_idle(services.pipeline)
        server.close()


@pytest.fixture
def proxy(secret):  # noqa: F811
    """make(upstream_url, **slack) -> an in-process proxy app (its pool is shut down afterwards)."""
    apps = []

    def make(upstream_url: str, **slack):
        app = create_proxy_app(load_config().replace(slack={**SINK_ALLOWED, **slack}), upstream_url)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["slack"].shutdown()


def test_proxy_process_relays_a_real_upstream(upstream, sink, tmp_path, secret):  # noqa: F811
    base = upstream()
    config = tmp_path / "config.toml"
    config.write_text('[slack]\nallowed_response_hosts = ["127.0.0.1"]\nallow_http = true\n', encoding="utf-8")
    port = closed_port()
    script = ("from kbgate.cli import main; from web.slack_proxy import slack_proxy_cmd; "
              "main.add_command(slack_proxy_cmd); main()")
    proc = subprocess.Popen([sys.executable, "-c", script, "--config", str(config), "slack-proxy",
                             "--upstream", base, "--port", str(port)], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=1).json() == {"status": "ok", "upstream": base}:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.2)
        body = slash_body("在家怎么连公司 VPN？", sink.url)
        bad = requests.post(f"{url}/slack/commands", data=body, headers=signed(body, secret="wrong"), timeout=10)
        assert bad.status_code == 401
        t0 = time.monotonic()
        r = requests.post(f"{url}/slack/commands", data=body, headers=signed(body), timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < 3
        assert r.json()["text"].startswith("🔎")
        msg = sink.wait(1)[0]
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(sink.posts) == 1  # the 401 request did nothing
    assert_valid_blocks(msg)
    assert msg["blocks"][0]["text"]["text"] == "在家怎么连公司 VPN？"
    assert "[1]" in sections(msg)[1] and "Acme Connect" in sections(msg)[1]
    links = source_links(msg)
    assert links and all(LINK.match(x) for x in links), links


def test_down_upstream_gets_an_ephemeral_error(proxy, sink):
    app = proxy(f"http://127.0.0.1:{closed_port()}")
    r = ask(app, "how do I connect to the VPN", sink.url)
    assert r.status_code == 200 and r.json["text"].startswith("🔎")
    msg = sink.wait(1, timeout=20)[0]
    assert msg == {"response_type": "ephemeral",
                   "text": "⚠️ Sorry, I could not answer that: the search service is unreachable right now; "
                           "try again later"}


def test_slow_upstream_times_out_with_an_error(proxy, upstream, sink):
    app = proxy(upstream(ANSWER, delay=0.2), upstream_timeout_s=1.0)  # the answer takes > 4 s
    t0 = time.monotonic()
    ask(app, "how do I connect to the VPN", sink.url)
    msg = sink.wait(1, timeout=20)[0]
    assert time.monotonic() - t0 < 10
    assert msg["response_type"] == "ephemeral" and "did not answer within 1 s" in msg["text"]


def test_busy_upstream_503_is_relayed(proxy, upstream, sink):
    app = proxy(upstream(server={"max_pending": 0}, **ANSWER_ROUTE))
    ask(app, "how do I connect to the VPN", sink.url)
    msg = sink.wait(1)[0]
    assert msg["response_type"] == "ephemeral"
    assert "failed (HTTP 503)" in msg["text"] and "already being answered" in msg["text"]


def test_upstream_refusal_says_why(proxy, upstream, sink):
    app = proxy(upstream(gate={"max_query_chars": 10}))
    ask(app, "how do I connect to the VPN", sink.url)
    assert "query is longer than 10 characters" in sink.wait(1)[0]["text"]


def test_not_a_kbgate_upstream(proxy, sink):
    app = proxy(sink.url.split("/commands")[0])  # answers 200 "ok" to anything: not JSON
    ask(app, "how do I connect to the VPN", sink.url)
    sink.wait(2)
    assert "unexpected reply" in [p for p in sink.posts if "text" in p and "⚠️" in p["text"]][0]["text"]


def test_channel_tags_are_forwarded(proxy, upstream, sink):
    app = proxy(upstream(), channel_tags={"C0HR": ["hr"]})
    ask(app, "VPN 连不上，内网打不开", sink.url, channel_id="C0HR")
    links = source_links(sink.wait(1)[0])
    assert links and all("/docs/hr/" in x for x in links), links


def test_public_and_unsigned_requests_through_the_proxy(proxy, upstream, sink):
    app = proxy(upstream())
    body = slash_body("public how do I connect to the VPN", sink.url)
    assert app.test_client().post("/slack/commands", data=body, headers=signed(body, ts=int(time.time()) - 360)
                                  ).status_code == 401
    assert ask(app, "public how do I connect to the VPN", sink.url).status_code == 200
    msg = sink.wait(1)[0]
    assert msg["response_type"] == "in_channel" and app.extensions["slack"].accepted == 1


def test_proxy_imports_no_models():
    code = ("import sys; from kbgate.config import load_config; from web.slack_proxy import create_proxy_app; "
            "create_proxy_app(load_config(), 'http://127.0.0.1:9'); "
            "assert not {'torch', 'transformers', 'faiss'} & set(sys.modules), 'model libraries imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_cli_checks_the_upstream_url():
    r = CliRunner().invoke(slack_proxy_cmd, ["--upstream", "search-host:8080"])
    assert r.exit_code == 2 and "must be an http(s) URL" in r.output
    r = CliRunner().invoke(slack_proxy_cmd, ["--help"])
    assert r.exit_code == 0 and "--upstream" in r.output and "forwarding questions" in r.output
