"""Build the long-lived objects once: the engine (one model, every role), embedder, index, pipeline."""
from __future__ import annotations

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


@dataclass
class Services:
    cfg: Config
    engine: Engine
    gate: SentimentGate
    assistant: Assistant
    pipeline: Pipeline
    retriever: object | None
    load_seconds: float

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
    pipeline = Pipeline(cfg, gate, retriever, assistant)
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


def load_retriever(cfg: Config, index_dir=None):
    from indexer.embedders import load_embedder
    from indexer.index import load_index
    from kbgate.retrieval import Retriever

    embedder = load_embedder(cfg)
    index = load_index(index_dir or cfg.path(cfg.index.dir), embedder)
    return Retriever(index, embedder, cfg.retrieval)


def load_services(cfg: Config, index_dir=None, with_retriever: bool = True) -> Services:
    """Load everything the service needs; progress goes to stderr."""
    t0 = time.perf_counter()
    from kbgate.engines import load_engine

    print(f"loading the language model ({cfg.model.engine} engine) ...", file=sys.stderr, flush=True)
    engine = load_engine(cfg)
    retriever = None
    if with_retriever:
        print("loading the embedder and the index ...", file=sys.stderr, flush=True)
        retriever = load_retriever(cfg, index_dir)
    services = build(cfg, engine, retriever)
    services.load_seconds = time.perf_counter() - t0
    return services
