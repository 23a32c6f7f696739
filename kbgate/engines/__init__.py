"""Engines behind `kbgate.engine.Engine`, picked by `[model] engine`; each backend imports its
own library (torch, llama_cpp, an HTTP client) only when it is chosen."""
from __future__ import annotations

from kbgate.config import Config
from kbgate.engine import Engine
from kbgate.errors import ConfigError

ENGINES = ("llamacpp", "transformers", "openai")


def load_engine(cfg: Config) -> Engine:
    """Load the configured engine with the configured model (provisioned first where needed)."""
    m = cfg.model
    if m.engine == "llamacpp":
        from kbgate.engines.llamacpp import LlamaCppEngine
        from kbgate.provision import fetch_gguf

        return LlamaCppEngine(fetch_gguf(cfg), threads=m.threads, n_ctx=m.n_ctx, n_batch=m.n_batch, name=m.name)
    if m.engine == "transformers":
        from kbgate.engines.transformers_engine import TransformersEngine
        from kbgate.provision import fetch_generator

        return TransformersEngine.load(fetch_generator(cfg), m.dtype, m.threads, name=m.name, attention=m.attention)
    if m.engine == "openai":
        from kbgate.engines.remote import RemoteEngine

        return RemoteEngine(cfg)
    raise ConfigError(f"config: [model] engine must be one of {', '.join(ENGINES)}, got {m.engine!r}")
