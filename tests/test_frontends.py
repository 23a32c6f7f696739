"""One final answer in every front end: the same query through /api/search (JSON and SSE), the page's
HTML, the OpenAI API (task=search, streamed and not), Slack and `kbgate ask` ends with the same text,
and the human contact appears once in each (fast: scripted replies over the real hash index)."""
from __future__ import annotations

import html
import json
import re

import pytest
import requests
from click.testing import CliRunner
from openai import OpenAI

from kbgate.config import load_config
from web import create_app
from web.server import serve_in_thread
from test_slack import SECRET, Sink, signed, slash_body  # the official SDK signs the Slack requests

PLAIN = ("How do I add a printer on macOS?", "Open System Settings and add the Follow-Me printer [1].")
# A reply with no grounded steps: the pipeline replaces it with the wiki's quoted fix steps at `done`,
# so the streamed tokens and the final text differ (the case a front end used to get wrong).
FRUSTRATED = ("打印机又卡纸了，烦死了", "我理解你的心情 [1]。")


def sse_blocks(text: str) -> list[tuple[str, str]]:
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            out.append((fields.get("event", "message"), fields["data"]))
    return out


def unslack(mrkdwn: str) -> str:
    """Slack section text back to the answer's plain text (escaping undone, *bold* back to **bold**)."""
    return html.unescape(re.sub(r"(?<!\*)\*([^*\n]+)\*(?!\*)", r"**\1**", mrkdwn))


def through_every_front_end(services, query: str, monkeypatch, timeout: float = 120) -> dict:
    """Ask `query` through each front end of one served app; return what each one ends with."""
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    cfg = services.cfg.replace(slack={"allowed_response_hosts": ["127.0.0.1"], "allow_http": True})
    server, base = serve_in_thread(create_app(cfg, services=services))
    sink = Sink()
    try:
        got: dict = {}
        api = requests.post(f"{base}/api/search", json={"query": query}, timeout=timeout).json()
        got["api"], got["result"] = api["answer"], api
        events = sse_blocks(requests.post(f"{base}/api/search/stream", json={"query": query},
                                          timeout=timeout).text)
        assert events[-1][0] == "done", events[-1]
        done = json.loads(events[-1][1])
        got["sse"], got["page_html"] = done["answer"], done["answer_html"]
        got["tokens"] = "".join(json.loads(d) for k, d in events if k == "token")
        oa = OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=timeout)
        msgs = [{"role": "user", "content": query}]
        r = oa.chat.completions.create(model="m", messages=msgs, extra_body={"task": "search"})
        got["openai"], got["openai_kbgate"] = r.choices[0].message.content, r.model_extra["kbgate"]
        chunks = list(oa.chat.completions.create(model="m", messages=msgs, stream=True,
                                                 extra_body={"task": "search"}))
        got["openai_stream"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        body = slash_body(query, sink.url)
        ack = requests.post(f"{base}/slack/commands", data=body, headers=signed(body), timeout=30)
        assert ack.status_code == 200, ack.text
        got["slack"] = sink.wait(1, timeout=timeout)[0]
    finally:
        sink.close()
        server.close()
    from kbgate import cli, service
    monkeypatch.setattr(service, "load_services", lambda cfg, index_dir=None: services)
    run = CliRunner().invoke(cli.main, ["ask", query])
    assert run.exit_code == 0, run.output
    got["cli_stdout"], got["cli_stderr"] = run.stdout, run.stderr
    return got


def assert_one_final_answer(got: dict, services) -> None:
    """Every front end ends with the pipeline's final text; the contact is shown once in each."""
    final, result = got["api"], got["result"]
    assert final.strip()
    assert got["sse"] == got["openai"] == got["openai_stream"] == final
    src_lines = [f"[{s['n']}] {s['title']} › {s['heading']}  {s['url']}"
                 for s in result["sources"] or result["suggestions"]]
    assert got["cli_stdout"] == final + "\n\n" + "".join(line + "\n" for line in src_lines)
    msg = got["slack"]
    body = [b["text"]["text"] for b in msg["blocks"] if b["type"] == "section"][1:]  # [0] is the status line
    esc = result["escalation"]
    assert html.unescape(msg["text"]) == f"{result['query']}\n{final}"[:len(html.unescape(msg["text"]))]
    if esc is None:
        assert unslack("\n\n".join(body)) == final
        return
    contact = esc["contact"]
    assert final.endswith(esc["text"]) and final.count(contact) == 1, final
    assert unslack("\n\n".join(body[:-1])) == final.removesuffix(esc["text"]).rstrip()
    assert sum(html.unescape(s).count(contact) for s in body) == 1 and html.unescape(body[-1]).count(contact) == 1
    assert got["page_html"].count(html.escape(contact, quote=False)) == 1
    assert got["openai_kbgate"]["escalation"] == esc


@pytest.mark.parametrize("query,reply,route", [(*PLAIN, "answer"), (*FRUSTRATED, "troubleshooting")])
def test_the_same_final_answer_in_every_front_end(make_services, monkeypatch, query, reply, route):
    negative = {"negative_threshold": 0.0 if route == "troubleshooting" else 1.01}
    s = make_services(reply, gate=negative, answer={"min_score": 0.0})
    got = through_every_front_end(s, query, monkeypatch)
    assert got["result"]["route"] == route
    assert_one_final_answer(got, s)
    if route == "troubleshooting":  # the streamed reply was replaced: the tokens are not what anyone ends with
        assert got["tokens"] == reply and got["api"] != reply and "quoted" in got["result"]["reason"]


def test_a_frustrated_query_without_an_answer_still_gets_the_contact_once(make_services, monkeypatch):
    s = make_services("", gate={"negative_threshold": 0.0}, answer={"min_score": 1.01})
    got = through_every_front_end(s, "VPN 又连不上了，烦死了", monkeypatch)
    assert got["result"]["route"] == "no_answer" and got["result"]["escalation"]
    assert_one_final_answer(got, s)


def test_a_search_stream_sends_no_provisional_text(make_services):
    s = make_services(FRUSTRATED[1], gate={"negative_threshold": 0.0}, answer={"min_score": 0.0})
    server, base = serve_in_thread(create_app(load_config(), services=s))
    try:
        with requests.post(f"{base}/v1/chat/completions", stream=True, timeout=60, json={
                "model": "m", "stream": True, "task": "search",
                "messages": [{"role": "user", "content": FRUSTRATED[0]}]}) as r:
            lines = (line.decode() for line in r.iter_lines() if line)
            first = json.loads(next(lines)[len("data: "):])
            rest = list(lines)
    finally:
        server.close()
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # at once, before the answer
    deltas = [json.loads(x[len("data: "):])["choices"][0]["delta"].get("content") for x in rest[:-1]]
    assert [d for d in deltas if d] == [s.pipeline.ask(FRUSTRATED[0]).answer]
