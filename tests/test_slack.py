"""The Slack slash command inside `kbgate serve`: signed exactly as Slack signs, answers POSTed to a local sink."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import pytest
import requests
from slack_sdk.models.blocks import Block
from slack_sdk.signature import SignatureVerifier

from kbgate.config import load_config
from web import create_app
from web import slack_blocks as sb
from web.server import serve_in_thread
from web.slack import allowed_url

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ANSWER = "在家连 VPN 先在 Self Service 安装 Acme Connect 客户端 [1]，然后用公司 SSO 账号登录并完成 MFA [2]。连上后即可访问内网 [1]。"
ANSWER_ROUTE = {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 0.0}}
LINK = re.compile(r"^<http://127\.0\.0\.1:8080/docs/[^|<>\s]+\|\[(\d+)\] [^|<>]+>$")


class Sink:
    """A local stand-in for Slack's response_url: records every JSON body POSTed to it."""

    def __init__(self):
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/commands/T0001/1234/abcd"

    def wait(self, n: int = 1, timeout: float = 60.0) -> list[dict]:
        """Poll until `n` posts arrived (bounded); return them."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.posts) >= n, f"expected {n} post(s) within {timeout} s, got {len(self.posts)}"
        return self.posts

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def slash_body(text: str, response_url: str, channel_id: str = "C0GENERAL", **extra) -> bytes:
    """A form body shaped like Slack's slash-command request."""
    form = {"token": "legacy-unused", "team_id": "T0001", "team_domain": "acme", "channel_id": channel_id,
            "channel_name": "general", "user_id": "U2147483697", "user_name": "steve", "command": "/ask",
            "text": text, "api_app_id": "A0KRD7HC3", "response_url": response_url,
            "trigger_id": "13345224609.738474920.8088930838d88f008e0", **extra}
    return urlencode(form).encode()


def signed(body: bytes, secret: str = SECRET, ts: int | str | None = None) -> dict:
    """Headers as Slack sends them, signed with the official SDK."""
    ts = str(int(time.time()) if ts is None else ts)
    return {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)}


def assert_valid_blocks(msg: dict):
    """Slack's own models accept every block (lengths, counts), and the fallback text is there."""
    assert msg["text"].strip()
    assert len(msg.get("blocks", [])) <= 50
    for b in msg.get("blocks", []):
        Block.parse(b).validate_json()


def sections(msg: dict) -> list[str]:
    return [b["text"]["text"] for b in msg["blocks"] if b["type"] == "section"]


def source_links(msg: dict) -> list[str]:
    ctx = [b for b in msg["blocks"] if b["type"] == "context"]
    return [e["text"] for b in ctx for e in b["elements"][1:]]


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.fixture
def slack_app(make_services, secret):
    """make(reply, delay, slack={...}, **sections) -> an app whose Slack replies may go to 127.0.0.1."""
    apps = []

    def make(reply: str = ANSWER, delay: float = 0.0, slack: dict | None = None, services=True, **sections):
        cfg = load_config().replace(slack={"allowed_response_hosts": ["127.0.0.1"], "allow_http": True,
                                           **(slack or {})})
        app = create_app(cfg, services=make_services(reply, delay, **(sections or ANSWER_ROUTE))
                         if services else None)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["slack"].shutdown()


def ask(app, text: str, url: str, **form):
    body = slash_body(text, url, **form)
    return app.test_client().post("/slack/commands", data=body, headers=signed(body))


def test_signed_request_is_acked_fast_and_answer_posted_with_citations(slack_app, sink):
    app = slack_app(ANSWER, delay=0.2)  # ~22 scripted tokens at 0.2 s: over 4 s of "generation"
    server, base = serve_in_thread(app)
    try:
        body = slash_body("在家怎么连公司 VPN？", sink.url)
        t0 = time.monotonic()
        r = requests.post(f"{base}/slack/commands", data=body, headers=signed(body), timeout=10)
        elapsed = time.monotonic() - t0
        assert r.status_code == 200 and elapsed < 1.5, elapsed
        assert r.json() == {"response_type": "ephemeral", "text": "🔎 正在 Wiki 中搜索：在家怎么连公司 VPN？"}
        assert sink.posts == []  # the answer is still being generated
        msg = sink.wait(1, timeout=90)[0]
    finally:
        server.close()
    assert_valid_blocks(msg)
    assert msg["response_type"] == "ephemeral"
    assert msg["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": "在家怎么连公司 VPN？",
                                                           "emoji": True}}
    assert "回答" in msg["blocks"][1]["text"]["text"] and re.search("[😄😐😟]", msg["blocks"][1]["text"]["text"])
    assert "[1]" in sections(msg)[1] and "[2]" in sections(msg)[1] and "Acme Connect" in sections(msg)[1]
    links = source_links(msg)
    assert links and all(LINK.match(x) for x in links), links
    assert [int(LINK.match(x).group(1)) for x in links] == list(range(1, len(links) + 1))
    assert "在家怎么连公司 VPN？" in msg["text"]


@pytest.mark.parametrize("case", ["bad signature", "tampered body", "stale timestamp", "missing headers",
                                  "missing signature", "missing timestamp", "garbage timestamp"])
def test_unverified_requests_get_401_and_no_work(slack_app, sink, case):
    app = slack_app()
    body = slash_body("how do I connect to the VPN", sink.url)
    headers = {"bad signature": lambda: signed(body, secret="not-the-secret"),
               "tampered body": lambda: signed(slash_body("innocent question", sink.url)),
               "stale timestamp": lambda: signed(body, ts=int(time.time()) - 6 * 60),
               "missing headers": lambda: {"Content-Type": "application/x-www-form-urlencoded"},
               "garbage timestamp": lambda: signed(body, ts="soon")}.get(case, lambda: signed(body))()
    if case == "missing signature":
        del headers["X-Slack-Signature"]
    if case == "missing timestamp":
        del headers["X-Slack-Request-Timestamp"]
    r = app.test_client().post("/slack/commands", data=body, headers=headers)
    assert r.status_code == 401 and r.mimetype == "text/plain"
    assert "signature" in r.get_data(as_text=True)
    time.sleep(0.5)
    assert app.extensions["slack"].accepted == 0 and sink.posts == []


def test_without_a_signing_secret_the_endpoint_says_so(slack_app, sink, monkeypatch):
    app = slack_app()
    monkeypatch.delenv("SLACK_SIGNING_SECRET")
    body = slash_body("how do I connect to the VPN", sink.url)
    r = app.test_client().post("/slack/commands", data=body, headers=signed(body))
    assert r.status_code == 503 and "SLACK_SIGNING_SECRET" in r.get_data(as_text=True)
    assert app.extensions["slack"].accepted == 0


def test_ssl_check_gets_200(slack_app):
    r = slack_app().test_client().post("/slack/commands", data="ssl_check=1&token=legacy",
                                       content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200


@pytest.mark.parametrize("url", ["https://evil.example/commands/1", "https://hooks.slack.com.evil.example/x",
                                 "http://hooks.slack.com@evil.example/x", "file:///etc/passwd", ""])
def test_response_url_outside_the_allow_list_is_never_used(slack_app, url):
    app = slack_app()
    r = ask(app, "how do I connect to the VPN", url)
    assert r.status_code == 200 and "not in slack.allowed_response_hosts" in r.json["text"]
    assert app.extensions["slack"].accepted == 0
    assert not app.extensions["slack"].post(url, sb.ephemeral("hello"))


def test_http_sink_needs_allow_http(slack_app, sink):
    app = slack_app(slack={"allow_http": False})
    assert "not in slack.allowed_response_hosts" in ask(app, "how do I connect to the VPN", sink.url).json["text"]
    assert not app.extensions["slack"].post(sink.url, sb.ephemeral("hello"))
    time.sleep(0.3)
    assert sink.posts == []


def test_allowed_url():
    hosts = ["hooks.slack.com"]
    assert allowed_url("https://hooks.slack.com/commands/T1/2/x", hosts)
    assert allowed_url("https://HOOKS.slack.com:443/commands/T1/2/x", hosts)
    assert not allowed_url("http://hooks.slack.com/commands/T1/2/x", hosts)
    assert allowed_url("http://hooks.slack.com/commands/T1/2/x", hosts, allow_http=True)
    for bad in ("https://user:pw@hooks.slack.com/x", "https://hooks.slack.com:99999/x", "https://evil.example",
                "https://hooks.slack.com.evil.example/", "//hooks.slack.com/x", "javascript:alert(1)"):
        assert not allowed_url(bad, hosts), bad


@pytest.mark.parametrize("text", ["", "   ", "public", "PUBLIC  "])
def test_empty_text_gets_the_usage_hint(slack_app, sink, text):
    app = slack_app()
    r = ask(app, text, sink.url)
    assert r.status_code == 200 and r.json["response_type"] == "ephemeral"
    assert "Usage: `/ask &lt;question&gt;`" in r.json["text"] and "`/ask public &lt;question&gt;`" in r.json["text"]
    assert app.extensions["slack"].accepted == 0


def test_a_3000_character_question_is_refused_politely(slack_app, sink):
    app = slack_app()
    r = ask(app, "x" * 3000, sink.url)
    assert r.status_code == 200 and "longer than 2,000 characters (3,000)" in r.json["text"]
    assert app.extensions["slack"].accepted == 0


def test_long_question_header_is_trimmed(slack_app, sink):
    app = slack_app()
    question = "VPN " + "how do I connect from home & stay connected? " * 40  # ~1,800 characters
    assert ask(app, question, sink.url).status_code == 200
    msg = sink.wait(1)[0]
    assert_valid_blocks(msg)
    header = msg["blocks"][0]["text"]["text"]
    assert len(header) <= 150 and header.endswith("…") and header.startswith("VPN how do I connect from home &amp;")


def test_markup_and_mentions_are_escaped_everywhere(slack_app, sink):
    app = slack_app("见 [1] <!here> <script>alert(1)</script> & <https://evil.example|click>")
    r = ask(app, "<script>alert(1)</script> <!channel> VPN & wifi?", sink.url)
    assert r.status_code == 200
    assert r.json["text"] == "🔎 Searching the wiki for: &lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt; VPN &amp; wifi?"
    msg = sink.wait(1)[0]
    assert_valid_blocks(msg)
    payload = json.dumps(msg, ensure_ascii=False)
    for raw in ("<!channel>", "<!here>", "<script>", "<https://evil"):
        assert raw not in payload
    assert msg["blocks"][0]["text"]["text"] == "&lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt; VPN &amp; wifi?"
    assert "&lt;!here&gt; &lt;script&gt;" in sections(msg)[1] and "&amp; &lt;https://evil.example|click&gt;" in sections(msg)[1]


def test_pool_full_gets_the_busy_reply(slack_app, sink):
    app = slack_app(ANSWER, delay=0.05, slack={"workers": 1, "max_pending": 1})  # ~1.5 s per answer
    assert "Searching" in ask(app, "how do I connect to the VPN", sink.url).json["text"]
    r = ask(app, "and how do I reset my password", sink.url)
    assert r.status_code == 200 and r.json == {"response_type": "ephemeral", "text": sb.say("busy", "en")}
    sink.wait(1)
    deadline = time.monotonic() + 10  # the slot is given back once the answer is posted
    while "Searching" not in ask(app, "how do I reset my password", sink.url).json["text"]:
        assert time.monotonic() < deadline, "the pool never freed its slot"
        time.sleep(0.1)
    assert app.extensions["slack"].accepted == 2


def test_public_answers_in_the_channel(slack_app, sink):
    app = slack_app()
    r = ask(app, "public how do I connect to the VPN", sink.url)
    assert r.json["response_type"] == "ephemeral" and r.json["text"].endswith("how do I connect to the VPN")
    msg = sink.wait(1)[0]
    assert msg["response_type"] == "in_channel"
    assert msg["blocks"][0]["text"]["text"] == "how do I connect to the VPN"


def test_channel_tags_limit_what_a_channel_searches(slack_app, sink):
    app = slack_app(slack={"channel_tags": {"C0HR": ["hr"]}})
    ask(app, "VPN 连不上，内网打不开", sink.url, channel_id="C0HR")
    ask(app, "VPN 连不上，内网打不开", sink.url, channel_id="C0GENERAL")
    sink.wait(2)
    by_channel = {}
    for msg in sink.posts:  # the two answers may arrive in either order; the hr one has only hr pages
        links = source_links(msg)
        assert links
        by_channel["hr" if all("/docs/hr/" in x for x in links) else "general"] = links
    assert set(by_channel) == {"hr", "general"}
    assert any("/docs/it/" in x for x in by_channel["general"])


def test_troubleshooting_route_shows_the_escalation_contact(slack_app, sink):
    app = slack_app("Reinstall the client and sign in again [1].", gate={"negative_threshold": 0.0},
                    answer={"min_score": 0.0})
    ask(app, "the VPN keeps failing and this is useless", sink.url)
    msg = sink.wait(1)[0]
    assert_valid_blocks(msg)
    assert "troubleshooting" in msg["blocks"][1]["text"]["text"]
    escalation = [s for s in sections(msg) if s.startswith("🆘")]
    cfg = load_config()
    assert escalation == [f"🆘 *Still stuck?* Contact {sb.escape(cfg.escalation.contact)}, "
                          f"or <{cfg.escalation.url}|open a ticket>."]
    shown = "\n".join(sections(msg))  # the final text ends with the contact too: Slack shows it once
    assert shown.count(sb.escape(cfg.escalation.contact)) == 1 and shown.count(cfg.escalation.url) == 1


def test_no_answer_lists_the_closest_pages(slack_app, sink):
    app = slack_app("I do not know.")  # cites nothing: the pipeline answers no_answer with suggestions
    ask(app, "how do I connect to the VPN", sink.url)
    msg = sink.wait(1)[0]
    assert_valid_blocks(msg)
    assert "no answer" in msg["blocks"][1]["text"]["text"]
    ctx = [b for b in msg["blocks"] if b["type"] == "context"][0]
    assert ctx["elements"][0]["text"] == "*Closest pages*" and len(ctx["elements"]) > 1


@pytest.mark.parametrize("failure,expected", [("busy", "already being answered"), ("loading", "still loading"),
                                              ("bug", "internal error")])
def test_failures_post_an_ephemeral_error(slack_app, sink, failure, expected):
    if failure == "busy":
        app = slack_app(server={"max_pending": 0}, **ANSWER_ROUTE)  # the model queue refuses every job
    elif failure == "loading":
        app = slack_app(services=False)
    else:
        app = slack_app()
        pipeline = app.extensions["kbgate"].services.pipeline
        pipeline.ask = lambda *a, **kw: 1 / 0
    assert ask(app, "how do I connect to the VPN", sink.url).status_code == 200
    msg = sink.wait(1)[0]
    assert msg["response_type"] == "ephemeral" and "blocks" not in msg
    assert msg["text"].startswith("⚠️ Sorry, I could not answer that:") and expected in msg["text"]


def test_split_respects_the_section_limit_and_entities():
    text = "\n".join(f"line {i} " + "& < > " * 60 for i in range(100))
    pieces = sb.split(text)
    assert len(pieces) > 1 and all(len(p) <= sb.SECTION_CHARS for p in pieces)
    assert "\n".join(pieces).split() == sb.escape(text).split()  # only whitespace at the cuts is lost
    amps = sb.split("&" * 4000)
    assert all(re.fullmatch("(&amp;)+", p) for p in amps) and "".join(amps) == "&amp;" * 4000


def test_huge_answers_stay_within_50_blocks():
    result = {"query": "VPN?", "route": "answer", "answer": ("word " * 700 + "\n") * 80,
              "sentiment": {"label": "neutral", "confidence": 0.9},
              "sources": [{"n": i, "title": f"T{i}", "heading": "H", "url": f"https://wiki/{i}"} for i in range(1, 15)]}
    msg = sb.answer_message(result, contact="IT", ticket_url="https://t", public=False)
    assert_valid_blocks(msg)
    assert len(msg["blocks"]) == 50 and sections(msg)[-1].endswith("…")
    assert len(msg["text"]) <= sb.FALLBACK_CHARS


def test_links_are_safe_and_labels_lose_pipes():
    assert sb.link("https://wiki/docs/it/vpn#a b", "[1] VPN | <b> & c") == \
        "<https://wiki/docs/it/vpn#a%20b|[1] VPN ¦ &lt;b&gt; &amp; c>"
    assert sb.link("https://wiki/x?a=1&b=<2>|", "l") == "<https://wiki/x?a=1&amp;b=%3C2%3E%7C|l>"
    assert sb.link("javascript:alert(1)", "x") == "x"


def test_badge_follows_the_question_language():
    zh = sb.answer_message({"query": "VPN 连不上怎么办", "route": "troubleshooting", "answer": "a [1]",
                            "sentiment": {"label": "negative", "confidence": 0.87}}, contact="c", ticket_url="u")
    en = sb.answer_message({"query": "VPN will not connect", "route": "answer", "answer": "a [1]",
                            "sentiment": {"label": "positive", "confidence": 0.5}}, contact="c", ticket_url="u")
    assert sections(zh)[0] == "😟 负面 (87%) · *故障排查*"
    assert sections(en)[0] == "😄 positive (50%) · *answer*"


@pytest.mark.slow
def test_real_models_answer_a_signed_command_with_a_cited_kb_page(real_services, sink, secret):
    cfg = load_config().replace(slack={"allowed_response_hosts": ["127.0.0.1"], "allow_http": True})
    app = create_app(cfg, services=real_services)
    try:
        t0 = time.monotonic()
        r = ask(app, "How do I connect to the VPN from home?", sink.url)
        assert r.status_code == 200 and time.monotonic() - t0 < 3
        msg = sink.wait(1, timeout=600)[0]  # the first real answer can take minutes on a busy 2-core CPU
    finally:
        app.extensions["slack"].shutdown()
    assert_valid_blocks(msg)
    answer = "\n".join(sections(msg)[1:])
    assert re.search(r"\[\d\]", answer), msg
    links = source_links(msg)
    assert links and all(LINK.match(x) for x in links)
    assert any("/docs/it/vpn" in x for x in links), links


def test_a_replayed_signed_request_is_refused_and_answered_once(slack_app, sink):
    app = slack_app()
    body = slash_body("VPN 怎么连", sink.url)
    headers = signed(body)  # one valid signature, sent twice inside the 5-minute window
    first = app.test_client().post("/slack/commands", data=body, headers=headers)
    again = app.test_client().post("/slack/commands", data=body, headers=headers)
    assert first.status_code == 200
    assert again.status_code == 401 and "replay" in again.get_data(as_text=True)
    sink.wait(1)
    time.sleep(0.3)
    assert len(sink.posts) == 1 and app.extensions["slack"].accepted == 1
    fresh = slash_body("VPN 怎么连", sink.url)  # the same question, newly signed later, is a new request
    assert app.test_client().post("/slack/commands", data=fresh, headers=signed(fresh, ts=int(time.time()) + 1)
                                  ).status_code == 200
