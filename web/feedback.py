"""`POST /api/feedback`: a 👍/👎 (and an optional comment) on one answer, from the page or any client.

Request `{"answer_id": "ans_…", "rating": "up" | "down", "comment": "…"}` (comment optional,
at most 2,000 characters); 200 `{"status": "recorded" | "updated", "answer_id", "rating"}`.
400 names what is wrong with the body; 404 for an id that is unknown, expired, or of an
answer that showed a page the caller may not read (the same 404: an id says nothing about
pages). The voter is the request's caller (web.identity, as for /api/search): the SSO or
token user, else the anonymous caller counted by its address (`anon:<address>`). One vote
per voter and answer: voting again changes it. A browser's cross-site POST
(`Sec-Fetch-Site: cross-site`: another site's page voting with the user's SSO cookie) is 403.
"""
from __future__ import annotations

from flask import Blueprint, request

from kbgate import metrics
from kbgate.feedback import check_vote
from kbgate.errors import BadInput, KBGateError
from web import state
from web.api import json_body
from web.identity import request_caller

bp = Blueprint("feedback", __name__, url_prefix="/api")
FIELDS = ("answer_id", "rating", "comment")
SOURCE_HEADER = "X-KBGate-Source"  # the search page sends "page", for the metrics only


class CrossSite(KBGateError):
    """A vote sent by another site's page in the user's browser."""
    status = 403
    code = "cross_site"


def voter_of(caller) -> str:
    """The voter key of a web caller: user:<name>, or anon:<peer address> for an anonymous one."""
    return f"user:{caller.user}" if caller.authenticated else f"anon:{request.remote_addr or '?'}"


def visible_to(index, caller):
    """`visible(answer)`: every page the answer showed is readable by `caller` (pages since removed don't count)."""
    def visible(answer: dict) -> bool:
        pages = index.pages if index is not None else {}
        return all(caller.may_read(pages[p].audience) for p in answer["shown"] if p in pages)
    return visible


def count_vote(rating: str, source: str) -> None:
    """Count a stored vote for /metrics (kbgate_feedback_total{rating,source})."""
    metrics.record_feedback(rating, source)


@bp.post("/feedback")
def feedback():
    """Record or change the caller's vote on one answer."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise CrossSite("votes come from this server's own search page or from API clients, not from another site")
    body = json_body(FIELDS)
    answer_id = body.get("answer_id")
    if not isinstance(answer_id, str) or not answer_id.strip():
        raise BadInput("answer_id is required: the answer_id of an /api/search result")
    rating, comment = check_vote(body.get("rating"), body.get("comment"))
    caller = request_caller(state().cfg)  # 401 where anonymous callers are denied
    services = state().get()
    pipeline = services.pipeline  # once: a hot reload mid-request keeps this pair
    store = pipeline.feedback.store(pipeline.index_dir())
    index = getattr(pipeline.retriever, "index", None)
    status = store.vote(answer_id, voter_of(caller), rating, comment, visible_to(index, caller))
    count_vote(rating, "page" if request.headers.get(SOURCE_HEADER) == "page" else "api")
    return {"status": status, "answer_id": answer_id, "rating": rating}


def register(app) -> None:
    """Add /api/feedback and Slack's /slack/actions to `app` (after web.slack's blueprint)."""
    from web import slack_actions

    app.register_blueprint(bp)
    app.register_blueprint(slack_actions.bp)
