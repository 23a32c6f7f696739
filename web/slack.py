"""`POST /slack/commands`: Slack's slash command, acknowledged at once and answered in the background.

Every request is verified with Slack's signing secret from the environment
(`SLACK_SIGNING_SECRET`; unset → 503 "not configured", a bad or stale signature or a replay of
an accepted one → 401, all plain text, no work done). `ssl_check=1` gets 200 before verification, as Slack's
own Bolt does: it does nothing. A valid question gets an ephemeral "searching" reply
within the request; a bounded per-app pool (`slack.workers`, `slack.max_pending`) answers
and POSTs the blocks to `response_url`, but only to an allow-listed host. The answer
comes from an `answer(question, tags[, caller]) -> result dict` callable: the pipeline inside
`kbgate serve` (as the asker), or an upstream search service in `kbgate slack-proxy` (web.slack_proxy).

Inside `kbgate serve` the asker is the Slack user of `[auth] slack_users_file` with its
groups, or the anonymous caller of `[auth] anonymous` for a user not listed
(web.identity.slack_caller). An ephemeral reply (only the asker sees it) reads as the
asker; a reply posted in the channel (`/ask public ...`) reads only what both the asker
and every member of the channel may read (the channel's groups in the same file), so an
HR person asking in #general shows no HR page there. With "deny" an unlisted user is told
so at once. `[server] rate_per_minute` counts per Slack user. The proxy's upstream applies
its own rules (the proxy sends no identity: anonymous there).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, request
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from kbgate.access import Caller
from kbgate.admission import RateLimit, RateLimited
from kbgate.config import Config
from kbgate.errors import KBGateError
from web import identity
from web import slack_blocks as sb

log = logging.getLogger("kbgate.slack")
bp = Blueprint("slack", __name__)
SECRET_ENV = "SLACK_SIGNING_SECRET"
POST_TIMEOUT_S = 10

Answer = Callable[..., dict]  # (question, tags[, caller]) -> Result.as_dict()-shaped dict


def allowed_url(url: str, hosts: list[str], allow_http: bool = False) -> bool:
    """Whether we may POST to `url`: https (http only if allowed), an allow-listed host, no credentials."""
    try:
        u = urlsplit(url or "")
        host = (u.hostname or "").lower()
        _ = u.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    schemes = ("https", "http") if allow_http else ("https",)
    return u.scheme in schemes and not u.username and not u.password and \
        host in {h.lower() for h in hosts}


class ReplayGuard:
    """Signatures already accepted within Slack's 5-minute window: a second use is a replay.

    In-process only; several processes behind one Slack app need a shared store
    (e.g. Redis `SET sig 1 NX EX 360`) for the same guarantee.
    """

    def __init__(self, window_s: float = 360.0, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self._seen: dict[str, float] = {}  # signature -> when it stops mattering
        self._lock = threading.Lock()

    def first_use(self, signature: str) -> bool:
        """Record `signature`; False when it was already used inside the window."""
        now = self.clock()
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            if self._seen.get(signature, 0.0) > now:
                return False
            self._seen[signature] = now + self.window_s
            return True


class Responder:
    """One app's Slack worker pool: admits questions, answers them off-request, posts the result."""

    def __init__(self, cfg: Config, answer: Answer, takes_caller: bool = False):
        self.cfg, self.answer, self.takes_caller = cfg, answer, takes_caller
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.slack.workers), thread_name_prefix="kbgate-slack")
        self._slots = threading.BoundedSemaphore(max(1, cfg.slack.max_pending))
        self.accepted = 0  # questions taken into the pool (tests check nothing else did work)
        self.replays = ReplayGuard()

    def submit(self, question: str, tags, response_url: str, public: bool, caller: Caller | None = None) -> bool:
        """Queue a question (answered as `caller` when the answer takes one); False when `max_pending` are busy."""
        if not self._slots.acquire(blocking=False):
            return False
        try:
            self.pool.submit(self._work, question, tags, response_url, public, caller)
        except RuntimeError:  # the pool was shut down
            self._slots.release()
            return False
        self.accepted += 1
        return True

    def _work(self, question: str, tags, response_url: str, public: bool, caller: Caller | None = None) -> None:
        lang = sb.language(question)
        try:
            try:
                esc = self.cfg.escalation
                result = self.answer(question, tags, caller) if self.takes_caller else self.answer(question, tags)
                msg = sb.answer_message(result, contact=esc.contact, ticket_url=esc.url, public=public)
            except KBGateError as e:
                msg = sb.ephemeral(sb.say("error", lang, message=sb.fit(e.message, 500)))
            except Exception:  # a bug: logged with its traceback; the user still hears back
                log.exception("answering a Slack question failed")
                msg = sb.ephemeral(sb.say("error", lang, message="internal error (logged on the server)"))
            self.post(response_url, msg)
        finally:  # the slot covers the post too, so max_pending bounds everything in the pool
            self._slots.release()

    def post(self, url: str, msg: dict) -> bool:
        """POST `msg` as JSON to an allow-listed response_url; log and drop anything else."""
        s = self.cfg.slack
        if not allowed_url(url, s.allowed_response_hosts, s.allow_http):
            log.warning("not posting to response_url outside slack.allowed_response_hosts: %.200s", url)
            return False
        try:
            resp = WebhookClient(url, timeout=POST_TIMEOUT_S).send(**msg)
        except Exception as e:  # network trouble: nothing more we can tell the user
            log.warning("posting to response_url failed: %s", e)
            return False
        if resp.status_code != 200:
            log.warning("response_url answered %s: %.200s", resp.status_code, resp.body)
        return resp.status_code == 200

    def shutdown(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)


def init_app(app, cfg: Config, answer: Answer, takes_caller: bool = False) -> Responder:
    """Give `app` its own Slack responder (call before registering `bp` to pick the answer source).

    `takes_caller`: `answer(question, tags, caller)` reads as the Slack asker (web.identity.slack_caller).
    """
    app.extensions["slack"] = Responder(cfg, answer, takes_caller)
    return app.extensions["slack"]


@bp.record_once
def _default_responder(setup) -> None:
    """Inside `kbgate serve`: answer with the app's own pipeline, as the Slack asker."""
    app = setup.app
    if "slack" not in app.extensions:
        st = app.extensions["kbgate"]

        def answer(question, tags, caller):
            return st.get().pipeline.ask(question, tags=tags, caller=caller).as_dict()
        init_app(app, st.cfg, answer, takes_caller=True)
    identity.init_app(app, app.extensions["slack"].cfg)  # a bad slack_users_file line stops the start


def _asker(slack: Responder, form, public: bool, lang: str) -> tuple[Caller | None, dict | None]:
    """(the caller to answer as, None) or (None, an ephemeral refusal): "deny" for an unlisted user, the rate limit."""
    caller = identity.slack_caller(form, public) if slack.takes_caller else None
    if caller is not None and not caller.authenticated and not caller.public:
        who = f"{form.get('team_id', '')}:{form.get('user_id', '')}"
        return None, sb.ephemeral(sb.say("error", lang, message=sb.fit(
            f"your Slack user {who} is not in this server's [auth] slack_users_file and it does not answer "
            'anonymous callers ([auth] anonymous = "deny"); ask its administrator to add you', 500)))
    limit = current_app.extensions.setdefault("kbgate.rate", RateLimit(slack.cfg.server.rate_per_minute))
    try:
        limit.check(identity.slack_rate_key(form, caller))
    except RateLimited as e:
        return None, sb.ephemeral(sb.say("error", lang, message=sb.fit(
            f"{e.message}: try again in {e.retry_after} s", 500)))
    return caller, None


def _plain(text: str, status: int):
    return text + "\n", status, {"Content-Type": "text/plain; charset=utf-8"}


def verified(raw: bytes) -> tuple[str, int] | None:
    """None when the request is Slack's, signed and new; else (message, status) to answer with."""
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        return f"Slack is not configured on this server: set {SECRET_ENV}", 503
    try:
        valid = SignatureVerifier(secret).is_valid_request(raw, dict(request.headers))
    except (ValueError, UnicodeDecodeError):  # a timestamp that is no number, a body that is no UTF-8
        valid = False
    if not valid:
        return "invalid or expired Slack signature", 401
    slack: Responder = current_app.extensions["slack"]
    if not slack.replays.first_use(request.headers.get("X-Slack-Signature", "")):
        return "this signed request was already received (replay refused)", 401
    return None


@bp.post("/slack/commands")
def commands():
    raw = request.get_data(cache=True)  # the raw body first: reading .form first would empty it
    if request.form.get("ssl_check") == "1":
        return _plain("ok", 200)
    refused = verified(raw)
    if refused:
        return _plain(*refused)
    slack: Responder = current_app.extensions["slack"]
    cfg, form = slack.cfg, request.form
    command = form.get("command", cfg.slack.command)
    text = form.get("text", "").strip()
    words = text.split(None, 1)
    public = bool(words) and words[0].lower() == cfg.slack.public_keyword.lower()
    question = (words[1] if len(words) > 1 else "") if public else text
    lang = sb.language(question)
    if not question or command != cfg.slack.command:
        usage = sb.say("usage", cmd=sb.escape(cfg.slack.command), kw=sb.escape(cfg.slack.public_keyword))
        return jsonify(sb.ephemeral(usage))
    if len(question) > cfg.gate.max_query_chars:
        return jsonify(sb.ephemeral(sb.say("error", lang, message=(
            f"the question is longer than {cfg.gate.max_query_chars:,} characters ({len(question):,}); "
            "shorten it"))))
    url = form.get("response_url", "")
    if not allowed_url(url, cfg.slack.allowed_response_hosts, cfg.slack.allow_http):
        log.warning("refusing a slash command whose response_url is not allow-listed: %.200s", url)
        return jsonify(sb.ephemeral(sb.say("error", lang, message=(
            "this server may not reply to this workspace (response_url host not in slack.allowed_response_hosts)"))))
    caller, refusal = _asker(slack, form, public, lang)
    if refusal:
        return jsonify(refusal)
    tags = cfg.slack.channel_tags.get(form.get("channel_id", "")) or None
    if not slack.submit(question, [tags] if isinstance(tags, str) else tags, url, public, caller):
        return jsonify(sb.ephemeral(sb.say("busy", lang)))
    return jsonify(sb.ephemeral(sb.say("ack", lang, q=sb.fit(question, 300))))
