"""OpenAI-compatible endpoints under /v1: Chat Completions with a `task` switch, and the model list.

`task` picks the role: "chat" (default; the assistant on the conversation, no
retrieval), "sentiment" (the one-forward-pass gate on the last user message; the
reply is the label word) or "search" (the full pipeline; sources come back in an
extra `kbgate` field). Each task is a generator of text pieces ending in one
`Outcome`; it is advanced once before the response starts, so validation errors
and a full queue (429) are still proper HTTP errors. Errors are OpenAI-shaped.

Task "search" streams no provisional text: the pipeline rewrites the model's reply
once it is complete (citations moved, ungrounded sentences dropped, the wiki's steps
quoted, the contact appended), and a delta cannot be taken back, so the stream sends
the role chunk at once and the final text in one delta when it is decided. A client
that concatenates the deltas ends with exactly the `answer` of /api/search.

Not handled: tools/function calling, logprobs, images, `n` > 1. Task "search"
answers the last user message alone, with the pipeline's own generation
settings (sampling fields are validated but only "chat" uses them).

Task "search" reads as the token's caller (web.identity): a token of `[auth] tokens_file`
is its user with its groups, a key of `$KBGATE_API_KEYS` a signed-in caller with no groups;
with none configured, the anonymous caller of `[auth] anonymous`. Never unrestricted, and
the SSO proxy's headers are not read here.
"""
from __future__ import annotations

import functools
import logging
import time
from contextlib import closing
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from kbgate.access import Caller, anonymous
from kbgate.admission import Cancelled
from kbgate.grounding import Passage
from kbgate.errors import Busy, KBGateError, NotFound, NotReady
from kbgate.engine import Finish
from kbgate.text import language
from web import client_gone, state
from web.identity import request_identity, require_reader
from web.openai_schema import (DONE, LABEL_WORDS, ChatRequest, chunk, completion, decode_body, error_body,
                               invalid, new_id, parse_request, sse, usage)

bp = Blueprint("openai_api", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """The last item of a task's stream."""
    finish_reason: str  # "stop" | "length"
    usage: dict
    kbgate: dict | None = None


# ---- errors and auth ------------------------------------------------------------------
def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   retry_after: int | None = None) -> Response:
    type_ = ("rate_limit_error" if status == 429 else "server_error" if status >= 500
             else "invalid_request_error")
    resp = jsonify(error_body(message, type_, param, code))
    resp.status_code = status
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def domain_error(e: KBGateError) -> Response:
    busy = isinstance(e, Busy)  # 429 so OpenAI clients raise RateLimitError and back off
    retry = getattr(e, "retry_after", None) or (5 if isinstance(e, NotReady) else None)
    return error_response(429 if busy else e.status, e.message, getattr(e, "param", None),
                          getattr(e, "openai_code", None) or ("rate_limit_exceeded" if busy else e.code), retry)


def http_error(e: HTTPException) -> Response:
    """OpenAI-shaped HTTP errors; the app's handler calls this for routing 404/405 under /v1."""
    status = e.code or 500
    messages = {404: f"no such endpoint: {request.method} {request.path}",
                405: f"{request.method} is not allowed on {request.path}",
                413: f"request body is larger than {current_app.config['MAX_CONTENT_LENGTH']:,} bytes"}
    code = "request_too_large" if status == 413 else (e.name or "error").lower().replace(" ", "_")
    resp = error_response(status, messages.get(status, e.description or e.name), None, code)
    if getattr(e, "valid_methods", None):
        resp.headers["Allow"] = ", ".join(e.valid_methods)
    return resp


bp.register_error_handler(KBGateError, domain_error)
bp.register_error_handler(HTTPException, http_error)


@bp.record_once
def _remember_start(setup):
    setup.app.extensions["kbgate.openai.created"] = int(time.time())


@bp.before_request
def require_token():
    """The bearer caller (web.identity: tokens file or $KBGATE_API_KEYS; 401 when configured and wrong or missing)."""
    g.v1_caller = request_identity(state().cfg)


# ---- models -------------------------------------------------------------------------
def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": current_app.extensions["kbgate.openai.created"],
            "owned_by": "kbgate"}


@bp.get("/models")
def models():
    return {"object": "list", "data": [_model(state().cfg.openai.model_id)]}


@bp.get("/models/<path:model_id>")
def model(model_id: str):
    if model_id != state().cfg.openai.model_id:
        raise invalid(f"no such model: {model_id}", "model", "model_not_found", NotFound)
    return _model(model_id)


# ---- tasks --------------------------------------------------------------------------
def _chat(services, req: ChatRequest):
    messages = services.assistant.chat_messages(req.messages)
    n = services.engine.prompt_tokens(messages)
    cap = services.cfg.openai.max_prompt_tokens
    if n > cap:
        raise invalid(f"the conversation is {n:,} tokens; the limit is {cap:,}", "messages",
                      "context_length_exceeded")
    gone = client_gone()
    with services.pipeline.admit("chat", gone) as ticket:
        yield None  # admitted; from here on errors happen mid-response
        gen = services.engine.stream(messages, max_tokens=req.max_tokens, temperature=req.temperature,
                                     top_p=req.top_p, stop=req.stop, seed=req.seed)
        with closing(gen):  # an abandoned stream stops decoding at the next token
            for piece in gen:
                if isinstance(piece, Finish):
                    yield Outcome(piece.reason, usage(piece.prompt_tokens, piece.completion_tokens))
                    return
                if gone():  # between decode steps, also when nothing is written (non-stream)
                    ticket.record = False
                    raise Cancelled("the client went away")
                yield piece


def _sentiment(services, req: ChatRequest):
    with services.pipeline.admit("sentiment", client_gone()):
        s = services.gate.classify([req.query])[0]
    yield None
    yield LABEL_WORDS[req.language or language(req.query)][s.label]
    yield Outcome("stop", usage(services.gate.prompt_tokens(req.query), 1), {"sentiment": s.as_dict()})


def v1_caller() -> Caller:
    """The caller of this /v1 request (set by require_token; anonymous when it did not run)."""
    caller = g.get("v1_caller") or anonymous(state().cfg.auth.anonymous)
    return require_reader(caller, f"send Authorization: Bearer <key> with a key from ${state().cfg.openai.auth_env}")


def _search(services, req: ChatRequest):
    events = services.pipeline.ask(req.query, stream=True, cancelled=client_gone(),
                                   caller=v1_caller())  # refuses a bad query here
    with closing(events):  # closing it frees the pipeline's slot
        next(events)  # takes a slot (or raises Busy) and runs the gate
        yield None
        # the model's tokens are provisional (see the module docstring): only the final text is sent
        result = next(data for kind, data in events if kind == "done")
    yield result.answer
    yield Outcome("stop", _search_usage(services, result, result.answer), _kbgate(result))


def _search_usage(services, result, content: str) -> dict:
    """Tokens of the gate prompt, of the answer prompt when the model answered, and of the reply."""
    prompt = services.gate.prompt_tokens(result.query)
    if result.sources:
        role = "troubleshoot" if result.route == "troubleshooting" else "answer"
        passages = [Passage(s.n, s.title, s.heading, s.text) for s in result.sources]
        prompt += services.assistant.prompt_tokens(role, result.query, passages)
    return usage(prompt, services.engine.count_tokens(content))


def _kbgate(result) -> dict:
    d = result.as_dict()
    return {k: d[k] for k in ("route", "reason", "sentiment", "sources", "suggestions", "timings_ms", "escalation",
                              "answer_id")}


TASKS = {"chat": _chat, "sentiment": _sentiment, "search": _search}


# ---- chat completions ------------------------------------------------------------------
@bp.post("/chat/completions")
def chat_completions():
    st = state()
    req = parse_request(decode_body(request.get_data()), st.cfg)
    services = st.get()
    events = TASKS[req.task](services, req)
    next(events)  # validation, admission (Busy -> 429) and the gate run here, before any byte is sent
    cid, created = new_id()
    model_id = st.cfg.openai.model_id
    if not req.stream:
        with closing(events):
            pieces = list(events)
        end = pieces.pop()
        return completion(cid, created, model_id, "".join(pieces), end.finish_reason, end.usage, end.kbgate)
    resp = Response(_stream(req, events, functools.partial(chunk, cid, created, model_id,
                                                             include_usage=req.include_usage)),
                    mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    resp.call_on_close(events.close)  # frees the slot even if the body is never iterated
    return resp


def _stream(req: ChatRequest, events, make_chunk):
    """Server-sent events: role, content deltas, finish_reason, optional usage, [DONE]."""
    try:
        yield sse(make_chunk({"role": "assistant", "content": ""}))
        for item in events:
            if isinstance(item, Outcome):
                break
            if item:
                yield sse(make_chunk({"content": item}))
        if req.include_usage:  # `kbgate` rides on the last chunk, whichever that is
            yield sse(make_chunk({}, item.finish_reason))
            yield sse(make_chunk(None, use=item.usage, kbgate=item.kbgate))
        else:
            yield sse(make_chunk({}, item.finish_reason, kbgate=item.kbgate))
        yield DONE
    except KBGateError as e:  # headers are sent: report in the stream (the client raises APIError)
        yield sse(error_body(e.message, "server_error", None, e.code))
    except Exception:
        log.exception("chat completion stream failed")
        yield sse(error_body("the model failed while answering; see the server log", "server_error"))
    finally:
        events.close()
