"""Request ids, one JSON log line per request on stderr, request metrics, and `/metrics`.

`init_app(app, cfg)` must run before the app's other request hooks: its before_request
starts the clock and takes the request id (an incoming `X-Request-Id` that is a sane
token, else a new one); its after_request, registered first so that it runs last, sees
the final status, returns `X-Request-Id` and, for a plain response, counts and logs it.
A streamed body (Server-Sent Events) is counted and logged when it ends: it is wrapped,
and the core's notes (kbgate.metrics.NOTE) are current around each of its steps, as the
pipeline runs there. A file passed through to the server is logged when handed over.

A line holds what the request did, never what it carried: no headers (so no bearer key,
cookie or Slack signature), no body; the query text only with `[logging] queries = true`.
"""
from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST
from pythonjsonlogger.json import JsonFormatter

from kbgate import metrics
from web.identity import networks, peer_in

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # uuids, hex, ULIDs, "req-42"; nothing that could forge a line
log = logging.getLogger("kbgate.requests")


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each line (a test capturing stderr swaps it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def request_logger() -> logging.Logger:
    """The `kbgate.requests` logger with its JSON handler, set up once per process."""
    if not any(isinstance(h, StderrHandler) for h in log.handlers):
        h = StderrHandler()
        h.setFormatter(JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                                     rename_fields={"levelname": "level", "name": "logger"}, json_ensure_ascii=False))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False  # one line, whatever the root logger is set up to do
    return log


class Watched:
    """A streamed body with the request's note current while each piece is made; `on_end(completed)`
    once, at its end or when it is closed early.

    A class, not a generator: werkzeug closes the body even when it was never iterated (HEAD,
    a client gone before the first byte), and an unstarted generator's `finally` never runs.
    """

    def __init__(self, body, note: dict, on_end):
        self.body, self.it, self.note, self._on_end = body, iter(body), note, on_end
        self.completed = self.closed = self.ended = False

    def on_end(self) -> None:
        if not self.ended:
            self.ended = True
            self._on_end(self.completed)

    def __iter__(self):
        return self

    def __next__(self):
        token = metrics.NOTE.set(self.note)
        try:
            return next(self.it)
        except StopIteration:
            self.completed = True
            self.on_end()  # now, not at close: a test client may read the body and never close it
            raise
        finally:
            metrics.NOTE.reset(token)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                token = metrics.NOTE.set(self.note)  # the view's cleanup may still finish the pipeline
                try:
                    close()
                finally:
                    metrics.NOTE.reset(token)
        finally:
            self.on_end()


def init_app(app, cfg) -> None:
    """Register the request id, log and metrics hooks and the /metrics endpoint on `app`."""
    from web import error_json

    logger = request_logger()
    lc = cfg.logging
    quiet = set(lc.quiet)
    engines: dict = {}  # id(services) -> engine name: asked once, not per request
    exposition = metrics.Exposition(lambda: app.extensions["kbgate"].services)

    def engine():
        s = app.extensions["kbgate"].services
        if s is None:
            return None
        if id(s) not in engines:
            engines[id(s)] = s.engine.info().engine
        return engines[id(s)]

    def finish(line: dict, note: dict, t0: float, completed: bool | None = None) -> None:
        seconds = time.perf_counter() - t0
        metrics.record_request(line["endpoint"], line["method"], line["status"], seconds)
        if not lc.requests or (line["path"] in quiet and line["status"] < 400):
            return
        line["duration_ms"] = round(seconds * 1000, 1)
        if completed is not None:
            line["stream_completed"] = completed
        extra = {k: v for k, v in note.items() if v is not None and (k != "query" or lc.queries)}
        logger.info("request", extra={**line, **extra})

    @app.before_request
    def start():
        rid = request.headers.get("X-Request-Id", "")
        g.request_id = rid if REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        g.obs_t0, g.obs_note = time.perf_counter(), {}
        metrics.NOTE.set(g.obs_note)

    @app.after_request
    def done(resp):
        rid = g.get("request_id") or uuid.uuid4().hex
        t0, note = g.get("obs_t0", time.perf_counter()), g.get("obs_note", {})
        metrics.NOTE.set(None)
        resp.headers["X-Request-Id"] = rid
        # only an identity the request itself resolved (web.identity caches it on g); never the token
        who = g.get("kbgate_identity") or g.get("v1_caller") or g.get("kbgate_caller")
        line = {"request_id": rid, "method": request.method, "path": request.path, "status": resp.status_code,
                "endpoint": request.url_rule.rule if request.url_rule is not None else "<unmatched>",
                "remote_addr": request.remote_addr, "user": getattr(who, "user", None), "engine": engine()}
        line = {k: v for k, v in line.items() if v is not None}
        if resp.is_streamed and not resp.direct_passthrough:  # SSE: the answer is made while it is sent
            resp.response = Watched(resp.response, note, lambda completed: finish(line, note, t0, completed))
        else:  # a body made already, or a file handed to the server as it is (no close hook runs for it)
            finish(line, note, t0)
        return resp

    allowed = networks(tuple(cfg.metrics.allow))

    def metrics_view():
        if not peer_in(request.remote_addr, allowed):
            return error_json("forbidden", f"/metrics is not served to {request.remote_addr}; list the address "
                                           "(or its network) in [metrics] allow in config.toml", 403)
        return Response(exposition.render(), headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    if cfg.metrics.enabled:
        app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
