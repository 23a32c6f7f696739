"""Build the long-lived objects once: the LM (one instance, every role), embedder, index, pipeline."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from kbgate.answer import Assistant
from kbgate.config import Config
from kbgate.gate import SentimentGate
from kbgate.lm import LanguageModel
from kbgate.pipeline import Pipeline
from kbgate.prompts import Prompts
from kbgate.provision import fetch_generator


@dataclass
class Services:
    cfg: Config
    lm: LanguageModel
    gate: SentimentGate
    assistant: Assistant
    pipeline: Pipeline
    retriever: object | None
    load_seconds: float

    def model_info(self) -> dict:
        return {"name": self.cfg.model.name, "id": self.cfg.openai.model_id, "device": self.lm.device,
                "precision": self.lm.dtype, "embedder": self.cfg.embedder.name}


def load_lm(cfg: Config) -> LanguageModel:
    path = fetch_generator(cfg)
    return LanguageModel.load(path, cfg.model.dtype, cfg.model.threads, name=cfg.model.name,
                              attention=cfg.model.attention)


def build(cfg: Config, lm: LanguageModel, retriever=None) -> Services:
    """Wire the roles around an already-loaded LM (tests pass a tiny one)."""
    t0 = time.perf_counter()
    prompts = Prompts(cfg.path(cfg.prompts.dir))
    gate = SentimentGate(lm, prompts, cfg.gate)
    assistant = Assistant(lm, prompts, cfg.answer, cfg.escalation)
    pipeline = Pipeline(cfg, gate, retriever, assistant)
    return Services(cfg, lm, gate, assistant, pipeline, retriever, time.perf_counter() - t0)


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
    print("loading the language model ...", file=sys.stderr, flush=True)
    lm = load_lm(cfg)
    retriever = None
    if with_retriever:
        print("loading the embedder and the index ...", file=sys.stderr, flush=True)
        retriever = load_retriever(cfg, index_dir)
    services = build(cfg, lm, retriever)
    services.load_seconds = time.perf_counter() - t0
    return services
