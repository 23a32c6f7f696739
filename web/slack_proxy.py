"""`kbgate slack-proxy`: the Slack endpoint as its own small process, in front of a search service.

It loads no models (and imports no torch): each question goes to the upstream's
`POST /api/search` and the result is relayed with the same blocks as inside
`kbgate serve`, so only this process needs to face Slack. The upstream being down,
slow (`slack.upstream_timeout_s`) or failing gives the user an ephemeral error.
"""
from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

import click
import requests
from flask import Flask
from werkzeug.exceptions import HTTPException

from kbgate.config import Config, load_config
from kbgate.errors import KBGateError
from web import slack


class UpstreamError(KBGateError):
    """The search service could not be reached or failed; the message says how."""
    status = 502
    code = "upstream_error"


def upstream_answerer(upstream: str, timeout_s: float):
    """An `answer(question, tags)` that asks the search service at `upstream`."""
    url = upstream.rstrip("/") + "/api/search"

    def answer(question: str, tags) -> dict:
        body = {"query": question, **({"tags": list(tags)} if tags else {})}
        try:
            resp = requests.post(url, json=body, timeout=timeout_s)
        except requests.Timeout:
            raise UpstreamError(f"the search service did not answer within {timeout_s:g} s; try again later") from None
        except requests.RequestException:
            raise UpstreamError("the search service is unreachable right now; try again later") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code == 200 and isinstance(data, dict) and "answer" in data:
            return data
        if resp.status_code == 200:
            raise UpstreamError("the search service sent an unexpected reply; is --upstream a kbgate server?")
        err = data.get("error") if isinstance(data, dict) else None
        detail = err.get("message") if isinstance(err, dict) and isinstance(err.get("message"), str) else ""
        if 400 <= resp.status_code < 500 and detail:
            raise UpstreamError(detail)  # the question itself was refused: say why
        raise UpstreamError(f"the search service failed (HTTP {resp.status_code})"
                            + (f": {detail}" if detail else "") + "; try again later")

    return answer


def create_proxy_app(cfg: Config, upstream: str) -> Flask:
    """A Flask app with only /slack/commands and /healthz, answering through `upstream`."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.server.max_body_bytes
    app.json.ensure_ascii = False
    slack.init_app(app, cfg, upstream_answerer(upstream, cfg.slack.upstream_timeout_s))
    app.register_blueprint(slack.bp)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "upstream": upstream}

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return f"{e.code} {e.name}\n", e.code or 500, {"Content-Type": "text/plain; charset=utf-8"}

    return app


def _upstream_url(ctx, param, value: str) -> str:
    u = urlsplit(value)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise click.BadParameter("must be an http(s) URL such as http://search-host:8080")
    return value.rstrip("/")


@click.command("slack-proxy")
@click.option("--upstream", required=True, callback=_upstream_url,
              help="base URL of the kbgate search service, e.g. http://search-host:8080")
@click.option("--host", default=None, help="listen address [config: server.host]")
@click.option("--port", type=int, default=None, help="listen port [config: slack.proxy_port]")
@click.pass_context
def slack_proxy_cmd(ctx, upstream, host, port):
    """Serve only the Slack endpoint, forwarding questions to a search service (no models loaded)."""
    from web.server import make_server, serve_forever

    try:
        cfg = ctx.find_object(Config) or load_config()
    except KBGateError as e:
        raise click.ClickException(e.message) from None
    if not os.environ.get(slack.SECRET_ENV, "").strip():
        click.echo(f"warning: {slack.SECRET_ENV} is not set; /slack/commands answers 503 until it is", err=True)
    try:
        ready = requests.get(upstream + "/readyz", timeout=3).status_code == 200
    except requests.RequestException:
        ready = False
    if not ready:
        click.echo(f"warning: {upstream}/readyz is not ready yet; Slack users get an error until it is", err=True)
    host, port = host or cfg.server.host, cfg.slack.proxy_port if port is None else port
    try:
        server = make_server(create_proxy_app(cfg, upstream), host, port, cfg.server.threads)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"kbgate slack-proxy on http://{server.effective_host}:{server.effective_port}/slack/commands "
          f"-> {upstream}", file=sys.stderr, flush=True)
    serve_forever(server)
