"""`POST /slack/actions`: Slack's interactivity endpoint, for the 👍/👎 buttons under an answer.

Point the Slack app's "Interactivity Request URL" here (on `kbgate serve`, which holds the
answers: with `kbgate slack-proxy` too, since the ids come from the search service).
Requests are checked as `/slack/commands` checks them (web.slack: `SLACK_SIGNING_SECRET`,
slack_sdk's SignatureVerifier, the same replay guard): unset → 503, bad or stale → 401,
plain text, nothing stored. The body is `payload=<JSON>`; a `block_actions` payload whose
action is one of the buttons (web.slack_blocks.VOTE_ACTIONS) stores the vote of the user
who clicked: their mapped wiki user (web.identity.slack_caller), else `slack:<team>:<user>`.
Slack wants a 200 within 3 s, so the reply is an empty 200 and the "thanks" (or why the
vote was not taken) goes to the payload's allow-listed response_url, ephemeral, from the
Slack pool. Comments are not taken in Slack (that needs a modal and a bot token).
"""
from __future__ import annotations

import json
import logging

from flask import Blueprint, current_app, request

from kbgate.errors import KBGateError
from web import slack_blocks as sb
from web import state
from web.feedback import count_vote, visible_to
from web.identity import slack_caller
from web.slack import Responder, _plain, verified

log = logging.getLogger("kbgate.slack")
bp = Blueprint("slack_actions", __name__)


def vote(payload: dict, action: dict) -> tuple[str, str]:
    """Store the clicking user's vote; (status, the answer's language) or KBGateError."""
    user, team = payload.get("user") or {}, payload.get("team") or {}
    form = {"team_id": str(team.get("id") or user.get("team_id") or ""), "user_id": str(user.get("id") or ""),
            "channel_id": str((payload.get("channel") or {}).get("id") or "")}
    caller = slack_caller(form, public=False)
    voter = f"user:{caller.user}" if caller.authenticated else f"slack:{form['team_id']}:{form['user_id']}"
    pipeline = state().get().pipeline
    store = pipeline.feedback.store(pipeline.index_dir())
    answer_id, rating = action.get("value"), sb.VOTE_ACTIONS[action["action_id"]]
    status = store.vote(answer_id, voter, rating, None, visible_to(getattr(pipeline.retriever, "index", None), caller))
    count_vote(rating, "slack")
    return status, sb.language(store.answer(answer_id)["query"])


@bp.post("/slack/actions")
def actions():
    raw = request.get_data(cache=True)
    refused = verified(raw)
    if refused:
        return _plain(*refused)
    try:
        payload = json.loads(request.form.get("payload", ""))
    except ValueError:
        return _plain("the body must be payload=<JSON> (a Slack interactivity request)", 400)
    if not isinstance(payload, dict):
        return _plain("payload must be a JSON object", 400)
    buttons = [a for a in payload.get("actions") or [] if isinstance(a, dict) and a.get("action_id") in sb.VOTE_ACTIONS]
    if payload.get("type") != "block_actions" or not buttons:
        return "", 200  # another app feature's interaction: nothing for us to do
    try:
        status, lang = vote(payload, buttons[0])
        msg = sb.ephemeral(sb.say("voted" if status == "recorded" else "revoted", lang,
                                  emoji=sb.VOTE_EMOJI[sb.VOTE_ACTIONS[buttons[0]["action_id"]]]))
    except KBGateError as e:
        msg = sb.ephemeral(sb.say("vote_error", "en", message=sb.fit(e.message, 500)))
    slack: Responder = current_app.extensions["slack"]
    url = payload.get("response_url")
    if isinstance(url, str) and url:
        slack.pool.submit(slack.post, url, {**msg, "replace_original": False})
    return "", 200
