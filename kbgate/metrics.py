"""Prometheus metrics of the core, and the notes a request's log line is made of; no Flask here.

The pipeline, admission and the web layer call the small functions below; `Exposition`
renders one app's scrape: these process-wide counters and histograms plus what is read
from the app's services at scrape time (queue, model, index, readiness). Tests compare
values before and after, since counters live for the process.

Several worker processes (gunicorn and the like): set `PROMETHEUS_MULTIPROC_DIR` to an
empty folder before the processes start. Counters and histograms are then summed over
all workers by `prometheus_client.multiprocess.MultiProcessCollector`, queue depth is a
live sum kept up by admission's hooks, model and index come from the worker answering
the scrape, and a server hook must call `prometheus_client.multiprocess.mark_process_dead(pid)`
when a worker exits. Process metrics (CPU, memory) are then left out, as upstream does.

Not handled: tokens of /v1 task=chat (web.openai_api would call `tokens_generated(n, "chat")`),
and of replies cut at the deadline or by a gone client (the engine's count never arrives).
"""
from __future__ import annotations

import os
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# seconds: a retrieval takes milliseconds, the gate ~0.1 s, a whole answer up to the 60 s deadline
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
STAGES = ("gate", "retrieval", "first_token", "total")
RATINGS = {"up": "up", "down": "down", "1": "up", "-1": "down", "+1": "up", "👍": "up", "👎": "down"}
SOURCES = ("page", "slack", "api")

REGISTRY = CollectorRegistry()
if not MULTIPROC:
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)

REQUESTS = Counter("kbgate_http_requests", "HTTP requests by endpoint (the URL rule), method and status",
                   ("endpoint", "method", "status"), registry=REGISTRY)
DURATION = Histogram("kbgate_http_request_duration_seconds", "HTTP request duration until the last byte "
                     "(a stream's end)", ("endpoint",), buckets=BUCKETS, registry=REGISTRY)
STAGE = Histogram("kbgate_stage_duration_seconds", "Pipeline stage durations of answered queries, from the "
                  "query's start (timings_ms)", ("stage", "route"), buckets=BUCKETS, registry=REGISTRY)
ANSWERS = Counter("kbgate_answers", "Finished pipeline queries by route and sentiment label",
                  ("route", "sentiment"), registry=REGISTRY)
TOKENS = Counter("kbgate_tokens_generated", "Tokens the model generated, by role", ("role",), registry=REGISTRY)
REJECTED = Counter("kbgate_rejections", "Requests refused before reaching the model: queue_full, deadline, "
                   "queue_timeout (503; 429 under /v1), rate_limit (429)", ("reason",), registry=REGISTRY)
FEEDBACK = Counter("kbgate_feedback", "Answer feedback votes by rating and where they came from",
                   ("rating", "source"), registry=REGISTRY)
for _reason in ("queue_full", "deadline", "queue_timeout", "rate_limit"):  # every series from the start, at 0
    REJECTED.labels(_reason)
for _rating in ("up", "down"):
    for _source in SOURCES:
        FEEDBACK.labels(_rating, _source)
if MULTIPROC:  # one worker cannot read another's queue at scrape time: each keeps its share up to date
    LIVE = {k: Gauge(f"kbgate_admission_{k}", f"Admission {k}, summed over live workers", registry=REGISTRY,
                     multiprocess_mode="livesum") for k in ("running", "waiting", "slots", "queue")}

# The fields of the current request's log line that the core knows (route, label, timings, tokens, query);
# web.observability sets a fresh dict per request, and around each step of a streamed body.
NOTE: ContextVar[dict | None] = ContextVar("kbgate_request_note", default=None)


def note(**fields) -> None:
    """Add fields to the current request's log line (nothing outside a request)."""
    d = NOTE.get()
    if d is not None:
        d.update(fields)


# ---- called by the core ------------------------------------------------------------------
def record_result(result) -> None:
    """Count one finished pipeline query: stage histograms by route, the answer counter, the log note."""
    label = (result.sentiment or {}).get("label", "unknown")
    for stage in STAGES:
        ms = result.timings_ms.get(stage)
        if ms is not None:
            STAGE.labels(stage, result.route).observe(ms / 1000.0)
    ANSWERS.labels(result.route, label).inc()
    note(route=result.route, label=label, confidence=(result.sentiment or {}).get("confidence"),
         timings_ms=dict(result.timings_ms), query=result.query,
         answer_id=getattr(result, "answer_id", None) or getattr(result, "id", None))


def tokens_generated(n: int, role: str) -> None:
    """Count `n` generated tokens of `role` (answer, troubleshoot, chat)."""
    if n > 0:
        TOKENS.labels(role).inc(n)
        d = NOTE.get()
        if d is not None:
            d["tokens"] = d.get("tokens", 0) + n


def rejected(reason: str) -> None:
    """Count one refusal: queue_full, deadline, queue_timeout or rate_limit."""
    REJECTED.labels(reason).inc()
    note(rejected=reason)


def admission_changed(adm) -> None:
    """Admission's running/waiting changed (call with its lock held); only multi-process mode keeps gauges."""
    if MULTIPROC:
        for k, v in (("running", len(adm._running)), ("waiting", len(adm._waiting)), ("slots", adm.slots),
                     ("queue", adm.queue)):
            LIVE[k].set(v)


def record_feedback(rating, source: str = "api") -> None:
    """Count one answer vote: rating "up"/"down" (or 1/-1, 👍/👎); source "page", "slack" or "api"."""
    r = RATINGS.get(str(rating).strip().lower(), "other")  # bounded label values, whatever is passed
    FEEDBACK.labels(r, source if source in SOURCES else "other").inc()


def record_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Count one HTTP request (web.observability, when its last byte is sent)."""
    REQUESTS.labels(endpoint, method, str(status)).inc()
    DURATION.labels(endpoint).observe(seconds)


# ---- the scrape ---------------------------------------------------------------------------
class LiveCollector:
    """What one app's services hold right now: readiness, queue, model info, index version and size."""

    def __init__(self, services):
        self.services = services  # () -> the Services object, or None while loading

    def collect(self):
        s = self.services()
        ready = GaugeMetricFamily("kbgate_ready", "1 when the models and the index are loaded")
        ready.add_metric([], 1.0 if s is not None else 0.0)
        yield ready
        if s is None:
            return
        if not MULTIPROC:
            st = s.pipeline.admission.status()
            for key, name, doc in (("running", "running", "Requests on the engine now"),
                                   ("waiting", "waiting", "Requests queued for a slot"),
                                   ("slots", "slots", "Engine slots"),
                                   ("queue", "queue", "Queue capacity beyond the slots"),
                                   ("expected_wait_s", "expected_wait_seconds", "Expected wait of a request now")):
                yield GaugeMetricFamily(f"kbgate_admission_{name}", doc, value=float(st[key]))
        info = InfoMetricFamily("kbgate_model", "Engine and model serving this process")
        info.add_metric([], {k: str(v) for k, v in s.model_info().items()})
        yield info
        ix = index_status(s)  # read at each scrape: a hot reload swaps the index
        if ix is not None:
            v = InfoMetricFamily("kbgate_index", "Index version being served")
            v.add_metric([], {"version": str(ix["version"])})
            yield v
            yield GaugeMetricFamily("kbgate_index_pages", "Pages in the served index", value=ix["pages"])
            yield GaugeMetricFamily("kbgate_index_chunks", "Chunks in the served index", value=ix["chunks"])


def index_status(services) -> dict | None:
    """{"version", "pages", "chunks"} of the index served now, from one retriever read; None: no index."""
    if hasattr(services, "index_status"):
        return services.index_status()
    index = getattr(services.retriever, "index", None)
    return None if index is None else {"version": index.version, "pages": len(index.pages), "chunks": len(index)}


class Forward:
    """Every metric of another registry (the process's, or the multi-process files)."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()


class Exposition:
    """One app's /metrics body: process-wide metrics (summed over workers in multi-process mode) plus its own."""

    def __init__(self, services):
        shared = REGISTRY
        if MULTIPROC:
            from prometheus_client.multiprocess import MultiProcessCollector
            shared = CollectorRegistry()
            MultiProcessCollector(shared)
        self.registry = CollectorRegistry()
        self.registry.register(Forward(shared))
        self.registry.register(LiveCollector(services))

    def render(self) -> bytes:
        return generate_latest(self.registry)
