"""The OpenAI Chat Completions wire format: request validation and response/chunk builders.

Pure functions, no Flask and no models. `parse_request(body, cfg)` turns a decoded
JSON body into a `ChatRequest` or raises a domain error carrying the OpenAI
`param` (and `openai_code`) it is about. Unknown fields are ignored, as the
official API's clients expect; `n` other than 1, tools, and non-text content
parts are refused rather than silently dropped.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

from kbgate.config import Config
from kbgate.errors import BadInput, KBGateError, TooLarge
from kbgate.text import clean_text

TASKS = ("chat", "sentiment", "search")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
LABEL_WORDS = {"zh": {"positive": "正面", "neutral": "中性", "negative": "负面"},
               "en": {"positive": "positive", "neutral": "neutral", "negative": "negative"}}
DONE = "data: [DONE]\n\n"


def invalid(message: str, param: str | None = None, code: str = "invalid_value",
            error: type[KBGateError] = BadInput) -> KBGateError:
    """A domain error that also names the request field it is about, for OpenAI's `param`."""
    e = error(message)
    e.param, e.openai_code = param, code
    return e


@dataclass(frozen=True)
class ChatRequest:
    task: str  # "chat" | "sentiment" | "search"
    messages: list  # [{"role": "system"|"user"|"assistant", "content": cleaned str}]
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    stop: list  # up to 4 strings
    seed: int | None
    language: str | None  # "zh" | "en" | None (detect)

    @property
    def query(self) -> str:
        """The last message's text (sentiment and search need it to be the user's)."""
        return self.messages[-1]["content"]


def decode_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 saying why not."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError as e:  # also not UTF-8, and an integer of over 4,300 digits
        raise invalid(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # '[[[[...' nested deeper than Python's stack: not a 500
        raise invalid("the request body is nested too deeply to be read", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


def _number(body: dict, name: str, default, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)  # 5.0 is the integer 5 in JSON (and JSON Schema); some clients' encoders write it so
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (
            isinstance(value, float) and not math.isfinite(value)):  # json.loads accepts NaN and Infinity
        raise invalid(f"{name} must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}",
                      name, "invalid_type")
    if value < lo or value > hi or (lo_open and value == lo):
        raise invalid(f"{name} must be {'above' if lo_open else 'at least'} {lo} and at most {hi}, got {value}",
                      name)
    return value


def _content(content, param: str, role: str) -> str:
    """A message's text: a string, or a list of text parts joined by newlines."""
    if content is None and role == "assistant":
        return ""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                              f"{param}[{j}]", "unsupported_value")
            texts.append(part["text"])
        return clean_text("\n".join(texts))
    raise invalid(f"{param} must be a string or a list of text parts", param, "invalid_type")


def _messages(value) -> list[dict]:
    if value is None:
        raise invalid("messages is required", "messages", "missing_required_parameter")
    if not isinstance(value, list) or not value:
        raise invalid("messages must be a non-empty list of {role, content}", "messages", "invalid_type")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}] must be an object with role and content", f"messages[{i}]",
                          "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"messages[{i}].role must be system, user or assistant, got {json.dumps(role)}",
                          f"messages[{i}].role")
        out.append({"role": ROLES[role], "content": _content(m.get("content"), f"messages[{i}].content", role)})
    return out


def _stop(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return list(value)
    raise invalid("stop must be a string or a list of up to 4 strings", "stop", "invalid_type")


def parse_request(body: dict, cfg: Config) -> ChatRequest:
    """Validate a Chat Completions body against the service's limits."""
    task = "chat" if body.get("task") is None else body["task"]
    if not isinstance(task, str) or task not in TASKS:
        raise invalid(f"task must be one of {', '.join(TASKS)}, got {json.dumps(task)}", "task")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise invalid("model must be a string", "model", "invalid_type")
    messages = _messages(body.get("messages"))
    if body.get("n") is not None and (isinstance(body["n"], bool) or body["n"] != 1):
        raise invalid("n must be 1: this server returns one choice per request", "n", "unsupported_value")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream must be true or false", "stream", "invalid_type")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise invalid("stream_options must be an object", "stream_options", "invalid_type")
    if options.get("include_usage") is not None and not isinstance(options["include_usage"], bool):
        raise invalid("stream_options.include_usage must be true or false", "stream_options.include_usage",
                      "invalid_type")
    language = body.get("language")
    if language not in (None, "zh", "en"):
        raise invalid(f"language must be \"zh\" or \"en\", got {json.dumps(language)}", "language")
    cap = cfg.openai.max_tokens
    max_tokens = _number(body, "max_tokens", cap, 1, cap, integer=True)
    max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, cap, integer=True)
    req = ChatRequest(
        task=task, messages=messages, stream=bool(stream), include_usage=options.get("include_usage") is True,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", cfg.openai.temperature, 0, 2),
        top_p=_number(body, "top_p", cfg.openai.top_p, 0, 1, lo_open=True),
        stop=_stop(body.get("stop")),
        seed=_number(body, "seed", None, -(2 ** 63), 2 ** 64 - 1, integer=True),
        language=language)
    if task != "chat":
        _check_query(req, cfg.gate.max_query_chars)
    return req


def _check_query(req: ChatRequest, max_chars: int) -> None:
    param = f"messages[{len(req.messages) - 1}].content"
    if req.messages[-1]["role"] != "user":
        raise invalid(f"task {req.task} reads the last message, which must be the user's", "messages")
    if len(req.query) > max_chars:
        raise invalid(f"the last message is longer than {max_chars:,} characters ({len(req.query):,}); shorten it",
                      param, "string_above_max_length", TooLarge)
    if not req.query:
        raise invalid("the last message is empty", param)


# ---- responses ---------------------------------------------------------------------
def new_id() -> tuple[str, int]:
    """(completion id, created): shared by a response or by every chunk of one stream."""
    return f"chatcmpl-{uuid.uuid4().hex}", int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, created: int, model: str, content: str, finish_reason: str, use: dict,
               kbgate: dict | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion", "created": created, "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                        "finish_reason": finish_reason, "logprobs": None}],
           "usage": use}
    if kbgate is not None:
        out["kbgate"] = kbgate
    return out


def chunk(cid: str, created: int, model: str, delta: dict | None, finish_reason: str | None = None, *,
          use: dict | None = None, include_usage: bool = False, kbgate: dict | None = None) -> dict:
    """One `chat.completion.chunk`; `delta=None` makes the final usage chunk (`choices: []`)."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [] if delta is None else
           [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    if include_usage:
        out["usage"] = use  # null on every chunk but the last, as the official API sends it
    if kbgate is not None:
        out["kbgate"] = kbgate
    return out


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
