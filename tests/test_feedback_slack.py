"""👍/👎 in Slack: buttons in the answer blocks, and the signed interactivity endpoint that stores the vote."""
import json
import sqlite3
import time
from urllib.parse import urlencode

import pytest

from test_slack import ANSWER, SECRET, assert_valid_blocks, signed, slash_body, ask  # noqa: F401
from test_slack import secret, sink, slack_app  # noqa: F401  (fixtures)
from web import slack_blocks as sb


def action_body(answer_id: str, action: str = "kbgate_vote_up", user: str = "U2147483697", url: str = "") -> bytes:
    """A form body shaped like Slack's block_actions request for one button click."""
    payload = {"type": "block_actions", "user": {"id": user, "username": "steve", "team_id": "T0001"},
               "team": {"id": "T0001", "domain": "acme"}, "channel": {"id": "C0GENERAL", "name": "general"},
               "api_app_id": "A0KRD7HC3", "response_url": url, "trigger_id": "1.2.3",
               "actions": [{"type": "button", "action_id": action, "block_id": "kbgate_feedback",
                            "value": answer_id, "action_ts": "1700000000.1"}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


def click(app, body: bytes, **headers):
    return app.test_client().post("/slack/actions", data=body, headers={**signed(body), **headers})


def answered(app, sink) -> dict:
    """Ask through the slash command; return the answer message Slack got."""
    assert ask(app, "在家怎么连公司 VPN？", sink.url).status_code == 200
    return sink.wait(1)[0]


def votes(app):
    st = app.extensions["kbgate"].services
    path = st.pipeline.feedback.store(st.pipeline.index_dir()).path
    with sqlite3.connect(path) as c:
        return c.execute("SELECT answer_id, voter, rating FROM votes ORDER BY rowid").fetchall()


@pytest.fixture
def app(slack_app, tmp_path):
    return slack_app(feedback={"path": str(tmp_path / "slack.sqlite3")}, gate={"negative_threshold": 1.01},
                     answer={"min_score": 0.0})


def test_the_answer_ends_with_vote_buttons_carrying_its_id(app, sink):
    msg = answered(app, sink)
    assert_valid_blocks(msg)
    buttons = msg["blocks"][-1]
    assert buttons["type"] == "actions" and buttons["block_id"] == "kbgate_feedback"
    assert [(e["action_id"], e["text"]["text"]) for e in buttons["elements"]] == [
        ("kbgate_vote_up", "👍 有帮助"), ("kbgate_vote_down", "👎 没帮助")]
    ids = {e["value"] for e in buttons["elements"]}
    assert len(ids) == 1 and next(iter(ids)).startswith("ans_")


def test_a_signed_click_stores_the_vote_and_a_second_click_changes_it(app, sink):
    aid = answered(app, sink)["blocks"][-1]["elements"][0]["value"]
    r = click(app, action_body(aid, "kbgate_vote_up", url=sink.url))
    assert r.status_code == 200 and r.get_data() == b""
    assert votes(app) == [(aid, "slack:T0001:U2147483697", "up")]
    thanks = sink.wait(2)[1]
    assert thanks["response_type"] == "ephemeral" and thanks["replace_original"] is False
    assert thanks["text"].startswith("👍 已记录")
    assert click(app, action_body(aid, "kbgate_vote_down", url=sink.url)).status_code == 200
    assert votes(app) == [(aid, "slack:T0001:U2147483697", "down")]
    assert sink.wait(3)[2]["text"].startswith("👎 已更新")
    assert click(app, action_body(aid, "kbgate_vote_down", user="U0OTHER")).status_code == 200
    assert [v[1] for v in votes(app)] == ["slack:T0001:U2147483697", "slack:T0001:U0OTHER"]


@pytest.mark.parametrize("case", ["bad signature", "tampered body", "stale timestamp", "missing headers"])
def test_unverified_clicks_get_401_and_store_nothing(app, sink, case):
    aid = answered(app, sink)["blocks"][-1]["elements"][0]["value"]
    body = action_body(aid)
    headers = {"bad signature": signed(body, secret="wrong-secret"),
               "tampered body": signed(action_body(aid, "kbgate_vote_down")),
               "stale timestamp": signed(body, ts=int(time.time()) - 600),
               "missing headers": {"Content-Type": "application/x-www-form-urlencoded"}}[case]
    r = app.test_client().post("/slack/actions", data=body, headers=headers)
    assert r.status_code == 401 and "signature" in r.get_data(as_text=True)
    assert votes(app) == []


def test_a_replayed_click_is_refused(app, sink):
    aid = answered(app, sink)["blocks"][-1]["elements"][0]["value"]
    body = action_body(aid)
    headers = signed(body)
    assert app.test_client().post("/slack/actions", data=body, headers=headers).status_code == 200
    r = app.test_client().post("/slack/actions", data=body, headers=headers)
    assert r.status_code == 401 and "replay" in r.get_data(as_text=True)


def test_without_a_signing_secret_clicks_are_503(app, monkeypatch):
    monkeypatch.delenv("SLACK_SIGNING_SECRET")
    r = app.test_client().post("/slack/actions", data=action_body("ans_0"), headers=signed(action_body("ans_0")))
    assert r.status_code == 503 and "SLACK_SIGNING_SECRET" in r.get_data(as_text=True)


def test_an_unknown_answer_is_told_to_the_clicker_and_stores_nothing(app, sink):
    r = click(app, action_body("ans_ffffffffffffffff", url=sink.url))
    assert r.status_code == 200 and votes(app) == []
    text = sink.wait(1)[0]["text"]
    assert text.startswith("⚠️ Your feedback was not recorded") and "no answer 'ans_ffffffffffffffff'" in text


def test_a_body_that_is_no_payload_is_400_and_other_interactions_are_ignored(app):
    body = b"payload=%7Bnot+json"
    assert click(app, body).status_code == 400
    other = urlencode({"payload": json.dumps({"type": "view_submission", "view": {}})}).encode()
    r = click(app, other)
    assert r.status_code == 200 and votes(app) == []


def test_blocks_without_an_answer_id_have_no_buttons():
    msg = sb.answer_message({"query": "q", "answer": "a", "route": "answer", "sources": []}, contact="c",
                            ticket_url="https://t.example")
    assert all(b["type"] != "actions" for b in msg["blocks"])
