"""GET /openapi.json: the OpenAPI 3.1 description of /api, /v1 and the health probes.

The document is web/openapi.yaml, read once. The limits it states (query length, batch
size, max_tokens, k, tags) are written over with the running service's own values, so a
changed config never makes the document wrong. tests/test_openapi.py checks the document
against a live server with schemathesis, and that every route under /api and /v1 is in it.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources

import yaml
from flask import Blueprint, current_app, jsonify

import kbgate
from kbgate.config import Config
from web.api import MAX_K, MAX_TAGS

bp = Blueprint("openapi", __name__)

S = "/components/schemas"
# JSON pointer in the document -> its value for a config: the limits the handlers enforce
LIMITS = {
    f"{S}/Query/maxLength": lambda cfg: cfg.gate.max_query_chars,
    f"{S}/SentimentRequest/properties/texts/maxItems": lambda cfg: cfg.gate.batch_size * 4,
    f"{S}/SearchRequest/properties/k/maximum": lambda cfg: MAX_K,
    f"{S}/SearchRequest/properties/tags/maxItems": lambda cfg: MAX_TAGS,
    f"{S}/ChatRequest/properties/max_tokens/maximum": lambda cfg: cfg.openai.max_tokens,
    f"{S}/ChatRequest/properties/max_completion_tokens/maximum": lambda cfg: cfg.openai.max_tokens,
    f"{S}/FeedbackRequest/properties/comment/maxLength": lambda cfg: _max_comment(),
    "/info/version": lambda cfg: kbgate.__version__,
}
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _max_comment() -> int:
    from kbgate.feedback import MAX_COMMENT  # late: the feedback store is not needed to describe it
    return MAX_COMMENT


@lru_cache(maxsize=1)
def shipped() -> dict:
    """web/openapi.yaml as shipped (parsed once per process; callers copy before changing it)."""
    return yaml.safe_load(resources.files("web").joinpath("openapi.yaml").read_text(encoding="utf-8"))


def _set(doc: dict, pointer: str, value) -> None:
    *parents, last = pointer.lstrip("/").split("/")
    node = doc
    for key in parents:
        node = node[key]  # a KeyError here means LIMITS names a place the document no longer has
    node[last] = value


def document(cfg: Config) -> dict:
    """The document for a service running with `cfg`."""
    doc = copy.deepcopy(shipped())
    for pointer, value in LIMITS.items():
        _set(doc, pointer, value(cfg))
    return doc


def operations(doc: dict) -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation the document describes."""
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in HTTP_METHODS}


@bp.get("/openapi.json")
def openapi_json():
    """This service's OpenAPI document (built once per app)."""
    ext = current_app.extensions
    if "kbgate.openapi" not in ext:
        ext["kbgate.openapi"] = document(ext["kbgate"].cfg)
    resp = jsonify(ext["kbgate.openapi"])
    resp.headers["Cache-Control"] = "no-cache"
    return resp
