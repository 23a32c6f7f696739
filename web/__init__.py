"""The Flask app factory: pages, JSON API, Slack and OpenAI endpoints over one shared pipeline.

`create_app(cfg, services=...)` uses already-built services (tests); without them
the models and index load in a background thread and `/readyz` answers 503 until
they are in. Domain errors become JSON for the API, OpenAI-shaped errors under
/v1 (that blueprint's own handler), and short HTML for pages. Never a traceback.
"""
from __future__ import annotations

import sys
import threading
import traceback

from flask import Flask, jsonify, make_response, request
from werkzeug.exceptions import HTTPException

from kbgate.admission import RateLimit
from kbgate.config import Config, load_config
from kbgate.errors import Busy, KBGateError, NotReady

MODEL_PATHS = {"/api/search", "/api/search/stream", "/api/sentiment", "/v1/chat/completions"}  # rate-limited
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class State:
    """What the app holds for its lifetime: services once loaded, or the loading error."""

    def __init__(self, cfg: Config, services=None):
        self.cfg, self.services, self.error = cfg, services, None
        self.ready = threading.Event()
        if services is not None:
            self.ready.set()

    def get(self):
        """The loaded services, or NotReady (503) while loading / after a failed load."""
        if self.services is None:
            msg = f"models failed to load: {self.error}" if self.error else "models and index are still loading"
            raise NotReady(msg)
        return self.services

    def load_in_background(self, loader):
        def work():
            try:
                self.services = loader()
            except KBGateError as e:  # a known failure (no index, no model file): its message says what to do
                self.error = e.message
                print(f"kbgate: {e.message}", file=sys.stderr, flush=True)
            except Exception as e:  # a bug: reported by /readyz and every request, and its traceback printed once
                self.error = str(e)
                traceback.print_exc()
            finally:
                self.ready.set()
        threading.Thread(target=work, name="kbgate-loader", daemon=True).start()


def state() -> State:
    from flask import current_app
    return current_app.extensions["kbgate"]


def client_gone():
    """A callable that is true once this request's client has closed its connection.

    waitress provides it (with `channel_request_lookahead` > 0, as web.server sets); other
    servers and the test client do not, and then a gone client is noticed at the next write.
    Take it inside the request: a streamed body runs after the request context has ended.
    """
    return request.environ.get("waitress.client_disconnected") or (lambda: False)


def error_json(code: str, message: str, status: int, retry_after: int | None = None):
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def create_app(cfg: Config | None = None, services=None, loader=None) -> Flask:
    """Build the app. `services`: ready-made (tests); `loader`: a callable run in the background."""
    cfg = cfg or load_config()
    from web import observability
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # '/api/docs//etc/passwd' is a JSON 404, not a redirect to a merged path
    app.config["MAX_CONTENT_LENGTH"] = cfg.server.max_body_bytes
    app.json.ensure_ascii = False
    st = State(cfg, services)
    app.extensions["kbgate"] = st
    observability.init_app(app, cfg)  # first: its hooks time, number and log every request, refusals too
    if services is None and loader is not None:
        st.load_in_background(loader)

    from web import api, openai_api, openapi, pages, slack
    from web.identity import rate_key
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(slack.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(openapi.bp)  # GET /openapi.json
    from web import feedback  # answer votes: /api/feedback and Slack's /slack/actions
    feedback.register(app)

    limit = RateLimit(cfg.server.rate_per_minute)
    app.extensions["kbgate.rate"] = limit

    @app.before_request
    def rate_limit():
        if request.method == "POST" and request.path in MODEL_PATHS:
            # a bucket per resolved identity (token user, SSO user; two tokens of one user share it), else the address
            limit.check(rate_key(cfg))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        if st.services is None:
            return error_json("not_ready", str(NotReady("models and index are still loading")) if not st.error
                              else f"models failed to load: {st.error}", 503, 5)
        health = getattr(st.services.engine, "health", None)  # a remote engine can die after start
        down = health() if health else None
        if down:
            return error_json("engine_unavailable", f"the model engine is not answering: {down}", 503, 10)
        return {"status": "ready", "model": st.services.model_info(), "admission": st.services.pipeline.admission.status(),
                "index": st.services.index_status()}  # the version served (kbgate.reload swaps it in)

    @app.errorhandler(KBGateError)
    def domain_error(e: KBGateError):
        return error_json(e.code, e.message, e.status, getattr(e, "retry_after", None) or
                          (5 if isinstance(e, (Busy, NotReady)) else None))

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if request.path == "/v1" or request.path.startswith("/v1/"):
            return openai_api.http_error(e)  # routing 404/405 never reach the blueprint's own handler
        messages = {413: f"request body is larger than {cfg.server.max_body_bytes:,} bytes",
                    404: f"no such endpoint or page: {request.path}",
                    405: f"{request.method} is not allowed on {request.path}"}
        code = (e.name or "error").lower().replace(" ", "_")
        if request.path.startswith(("/api", "/healthz", "/readyz", "/slack", "/metrics", "/openapi.json")) or request.is_json:
            resp = error_json(code, messages.get(e.code, e.description or e.name), e.code or 500)
        else:
            resp = make_response(pages.error_page(e.code or 500, messages.get(e.code, e.description or e.name)))
        if getattr(e, "valid_methods", None):  # RFC 9110: a 405 lists the methods the resource has
            resp.headers["Allow"] = ", ".join(e.valid_methods)
        return resp

    @app.after_request
    def security_headers(resp):
        if request.method == "OPTIONS" and resp.status_code == 200 and not resp.content_length:
            resp.status_code = 204  # Flask's automatic OPTIONS: the Allow header, no (HTML) body
            del resp.headers["Content-Type"]
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        return resp

    return app
