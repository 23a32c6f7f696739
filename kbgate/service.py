"""Build the long-lived objects once: the engine (one model, every role), embedder, index, pipeline.

The retriever and the pipeline over it are the one part that changes while the service runs:
`Services.swap` puts a newly published index version in (kbgate.reload, `[index] reload_check_s`)
as one reference, `Live`. Read `services.pipeline` (or `.retriever`, or `.live()`) once per
request and keep what you got: that request then finishes on the version it started with.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kbgate.answer import Assistant
from kbgate.config import Config
from kbgate.engine import Engine
from kbgate.errors import IndexUnavailable
from kbgate.gate import SentimentGate
from kbgate.pipeline import Pipeline
from kbgate.prompts import Prompts, prompt_folder
from kbgate.translate import QueryTranslator


@dataclass(frozen=True)
class Live:
    """One index version's retriever and the pipeline that searches it (swapped together)."""
    retriever: object | None
    pipeline: Pipeline


class Services:
    """The loaded engine and roles, and the live (hot-swappable) retriever and pipeline."""

    def __init__(self, cfg: Config, engine: Engine, gate: SentimentGate, assistant: Assistant, pipeline: Pipeline,
                 retriever: object | None, load_seconds: float):
        self.cfg, self.engine, self.gate, self.assistant = cfg, engine, gate, assistant
        self.load_seconds = load_seconds
        self._live = Live(retriever, pipeline)
        self.reloader = None  # kbgate.reload.IndexReloader once watch_index() ran

    def live(self) -> Live:
        """The retriever and pipeline in use now, as one consistent pair (checks for a new version first)."""
        if self.reloader is not None:
            self.reloader.poll()
        return self._live

    @property
    def pipeline(self) -> Pipeline:
        return self.live().pipeline

    @property
    def retriever(self):
        return self.live().retriever

    def swap(self, retriever) -> None:
        """Serve `retriever` from now on; requests already holding the old pipeline finish on it."""
        # a shallow copy shares the admission queue, gate and assistant; only the retriever differs
        pipeline = copy.copy(self._live.pipeline)
        pipeline.retriever = retriever
        self._live = Live(retriever, pipeline)  # one assignment: readers see the old pair or the new one

    def watch_index(self, check_s: float | None = None):
        """Pick up newly published index versions (every check_s seconds, default `[index] reload_check_s`; 0 = off)."""
        from kbgate.reload import IndexReloader

        check_s = self.cfg.index.reload_check_s if check_s is None else check_s
        served = self._live.retriever
        if check_s <= 0 or served is None:
            self.reloader = None
            return None
        index_dir = served.index.dir

        def load():
            from indexer.index import load_index
            embedder = self._live.retriever.embedder  # the models already loaded: never a second copy
            return make_retriever(self.cfg, load_index(index_dir, embedder), embedder)
        self.reloader = IndexReloader(index_dir, lambda: self._live.retriever, load, self.swap, check_s)
        return self.reloader

    def index_status(self) -> dict | None:
        """The served index version, its size and the reload state (for /readyz and /metrics); None: no index."""
        r = self.retriever  # once: every figure from the same version
        if r is None:
            return None
        ix = r.index
        out = {"version": ix.version, "pages": len(ix.pages), "chunks": len(ix),
               "built_at": ix.manifest.get("built_at")}
        out["reload"] = self.reloader.status() if self.reloader is not None else {"check_s": 0}
        return out

    def model_info(self) -> dict:
        info = self.engine.info()
        return {"name": info.model, "id": self.cfg.openai.model_id, "device": info.device,
                "precision": info.quantization, "engine": info.engine, "threads": info.threads,
                "embedder": self.cfg.embedder.name}


def build(cfg: Config, engine: Engine, retriever=None) -> Services:
    """Wire the roles around an already-loaded engine (tests pass a fake one)."""
    t0 = time.perf_counter()
    prompts = Prompts(prompt_folder(cfg))
    gate = SentimentGate(engine, prompts, cfg.gate)
    assistant = Assistant(engine, prompts, cfg.answer, cfg.escalation)
    r = cfg.retrieval
    translator = QueryTranslator(engine, prompts, r.translate, r.translate_max_tokens) if r.translate else None
    pipeline = Pipeline(cfg, gate, retriever, assistant, translator)
    return Services(cfg, engine, gate, assistant, pipeline, retriever, time.perf_counter() - t0)


def ensure_index(cfg: Config, index_dir=None) -> Path:
    """The index folder to serve: as it is when it holds a version, else built now from `[index] kb_dir`
    (with a progress bar on stderr). IndexUnavailable, with what to do, when there is nothing to build from."""
    from indexer.versions import current_version

    index_dir = Path(index_dir) if index_dir else cfg.path(cfg.index.dir)
    if current_version(index_dir) is not None:
        return index_dir
    kb = cfg.path(cfg.index.kb_dir)
    if not kb.is_dir() or not any(kb.rglob("*.md")):
        raise IndexUnavailable(f"there is no index in {index_dir}, and no markdown pages in {kb} to build one from: "
                               "set [index] kb_dir in config.toml to your wiki folder, or run "
                               "`kbgate index --kb FOLDER` first")
    from indexer.embedders import load_embedder
    from indexer.store import build_index

    print(f"no index in {index_dir}: building it from {kb} ...", file=sys.stderr, flush=True)
    summary = build_index(cfg, kb, index_dir, load_embedder(cfg, lazy=True), progress=True)
    print(summary.describe(), file=sys.stderr, flush=True)
    return index_dir


def make_retriever(cfg: Config, index, embedder):
    """The Retriever over a loaded Index (at start and at every hot reload: wire new retrieval parts here)."""
    from kbgate.retrieval import Retriever

    return Retriever(index, embedder, cfg.retrieval)


def load_retriever(cfg: Config, index_dir=None):
    from indexer.embedders import load_embedder
    from indexer.index import load_index

    embedder = load_embedder(cfg)
    return make_retriever(cfg, load_index(index_dir or cfg.path(cfg.index.dir), embedder), embedder)


def load_services(cfg: Config, index_dir=None, with_retriever: bool = True, reload: bool = True) -> Services:
    """Load everything the service needs; progress goes to stderr.

    reload: pick up newly published index versions ([index] reload_check_s); a batch run that must
    see one version throughout (an evaluation) passes False.
    """
    t0 = time.perf_counter()
    from kbgate.engines import load_engine

    print(f"loading the language model ({cfg.model.engine} engine) ...", file=sys.stderr, flush=True)
    engine = load_engine(cfg)
    retriever = None
    if with_retriever:
        print("loading the embedder and the index ...", file=sys.stderr, flush=True)
        retriever = load_retriever(cfg, index_dir)
    services = build(cfg, engine, retriever)
    if reload:
        services.watch_index()
    services.load_seconds = time.perf_counter() - t0
    return services
