"""The JSON API for support tools: search (JSON or Server-Sent Events), batch sentiment, wiki pages.

Handlers validate the body, call the pipeline and serialize. Domain errors (BadInput,
TooLarge, NotFound, Busy, NotReady) go to the app's handler, which answers
`{"error": {"code", "message"}}` with their status; Busy carries Retry-After.

SSE: `event: <kind>\\ndata: <json>\\n\\n` for sentiment, sources, token..., then done
(the same body as the JSON answer) or error. The first event is pulled before the
response starts, so a bad query or a full queue is still a plain 4xx/503.

Every route that shows wiki text reads as the request's caller (web.identity: the SSO
proxy's headers, else anonymous): a page it may not read is never a source, a suggestion
or a list entry, and is the same 404 as a page that does not exist.
"""
from __future__ import annotations

import json
import logging
import time
from itertools import chain

from flask import Blueprint, Response, jsonify, request

from kbgate import metrics
from kbgate.errors import BadInput, IndexUnavailable, KBGateError, TooLarge
from kbgate.text import check_query
from web import client_gone, state
from web.identity import request_caller
from web.render import docs_href, redact_links, render_answer

bp = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger("kbgate.web")

MAX_K = 20
MAX_TAGS = 20
SEARCH_FIELDS = ("query", "k", "tags", "stream")


def json_body(fields: tuple[str, ...]) -> dict:
    """The request's JSON object, or a 400 that says what is wrong with it.

    The body is parsed as JSON whatever the Content-Type (`curl -d` sends form-urlencoded).
    """
    raw = request.get_data(cache=True)  # over max_body_bytes: 413 from werkzeug
    if not raw.strip():
        raise BadInput("body is empty; send a JSON object such as {\"query\": \"...\"}")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise BadInput("body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        hint = "" if request.is_json else f" (sent as {request.mimetype or 'no Content-Type'}; use application/json)"
        raise BadInput(f"body is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}){hint}") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4,300 digits, nesting too deep
        raise BadInput(f"body is not usable JSON: {str(e).split(';')[0]}") from None
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r}; known fields: {', '.join(sorted(fields))}")
    return body


def search_args(body: dict) -> tuple[object, int | None, list[str] | None]:
    """(query, k, tags) from a search body; the query itself is checked by the pipeline."""
    if "query" not in body or body["query"] is None:
        raise BadInput("query is required")
    k = body.get("k")
    if isinstance(k, float) and k.is_integer():
        k = int(k)  # 5.0 is the integer 5 in JSON (and JSON Schema); some clients' encoders write it so
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K):
        raise BadInput(f"k must be an integer between 1 and {MAX_K}")
    tags = body.get("tags")
    if tags is not None and (not isinstance(tags, list) or len(tags) > MAX_TAGS
                             or not all(isinstance(t, str) and t.strip() for t in tags)):
        raise BadInput(f"tags must be a list of at most {MAX_TAGS} non-empty strings")
    return body["query"], k, tags or None


def wants_stream(body: dict) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadInput("stream must be true or false")
    return stream or request.args.get("stream", "").lower() in ("1", "true", "yes")


def result_body(result, services) -> dict:
    """The answer as the API and the `done` event send it: the pipeline's Result plus HTML and model."""
    d = result.as_dict() if hasattr(result, "as_dict") else dict(result)
    d["answer_html"] = render_answer(d["answer"], d["sources"])  # sanitized; [n] links to /docs/...
    d["model"] = services.model_info()
    return d


@bp.post("/search")
def search():
    """Answer a query: JSON, or SSE with ?stream=1 (or "stream": true)."""
    body = json_body(SEARCH_FIELDS)
    query, k, tags = search_args(body)
    if wants_stream(body):
        return event_stream(query, k, tags)
    services = state().get()
    caller = request_caller(state().cfg)
    return jsonify(result_body(services.pipeline.ask(query, k=k, tags=tags, cancelled=client_gone(),
                                                     caller=caller), services))


@bp.post("/search/stream")
def search_stream():
    """The same as POST /api/search?stream=1."""
    body = json_body(SEARCH_FIELDS)
    query, k, tags = search_args(body)
    wants_stream(body)  # validates "stream" if given; this route streams either way
    return event_stream(query, k, tags)


def sse(kind: str, data) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(query, k, tags) -> Response:
    services = state().get()
    caller = request_caller(state().cfg)  # taken in the request: the body streams after it has ended
    events = services.pipeline.ask(query, stream=True, k=k, tags=tags, cancelled=client_gone(),
                                   caller=caller)  # BadInput here
    first = next(events)  # takes a job slot: Busy here is still a 503 with Retry-After

    def body():
        try:
            for kind, data in chain([first], events):
                yield sse(kind, result_body(data, services) if kind == "done" else data)
        except KBGateError as e:
            yield sse("error", {"code": e.code, "message": e.message})
        except Exception:
            log.exception("search stream failed")  # no query text: logs carry it only with [logging] queries
            yield sse("error", {"code": "internal_error", "message": "the answer failed on the server; see its log"})
        finally:
            events.close()  # client gone or done: give the job slot back

    resp = Response(body(), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.post("/sentiment")
def sentiment():
    """Label a batch of texts positive / neutral / negative (one forward pass per gate batch)."""
    services = state().get()
    cfg = services.cfg
    texts = json_body(("texts",)).get("texts")
    if not isinstance(texts, list) or not texts:
        raise BadInput("texts must be a non-empty list of strings")
    limit = cfg.gate.batch_size * 4
    if len(texts) > limit:
        raise TooLarge(f"texts has {len(texts)} items; at most {limit} per request")
    cleaned = [check_query(t, cfg.gate.max_query_chars, field=f"texts[{i}]") for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    with services.pipeline.admit("sentiment", client_gone()):  # the model queue search uses: Busy when full
        labels = services.gate.classify(cleaned)
    metrics.note(labels=[s.label for s in labels])
    return {"results": [s.as_dict() for s in labels],
            "timings_ms": {"total": round((time.perf_counter() - t0) * 1000, 1)},
            "model": services.model_info()}


def _index(services):
    retriever = services.retriever  # read once: a hot reload may swap it between two reads
    if retriever is None:
        raise IndexUnavailable("no index is loaded")
    return retriever.index


@bp.get("/docs")
def doc_list():
    """Every wiki page the caller may read: id, title, tags, type."""
    services = state().get()
    pages = _index(services).page_list(request_caller(state().cfg))
    return {"pages": [{"id": p.id, "title": p.title, "tags": list(p.tags), "type": p.type,
                       "html_url": docs_href(p.id)} for p in pages]}


@bp.get("/docs/<path:page_id>")
def doc(page_id: str):
    """One wiki page's markdown and metadata (404 for an unknown id, and for a page the caller may not read)."""
    services = state().get()
    index, caller = _index(services), request_caller(state().cfg)
    p = index.readable(page_id, caller)
    # a link to a page this caller may not open keeps its text only: its path would say the page exists
    text = redact_links(p.text, p.id, lambda target: index.may_read(target, caller), services.cfg.server.wiki_base_url)
    return {"id": p.id, "path": p.path, "title": p.title, "tags": list(p.tags), "type": p.type,
            "meta": p.meta, "sha256": p.sha256, "markdown": text,
            "url": services.pipeline.url(p.id), "html_url": docs_href(p.id)}
