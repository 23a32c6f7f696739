"""Engines behind `kbgate.engine.Engine`, picked by `[model] engine`; each backend imports its
own library (torch, llama_cpp, an HTTP client) only when it is chosen."""
from __future__ import annotations

from kbgate.config import Config
from kbgate.engine import Engine
from kbgate.errors import ConfigError

ENGINES = ("llamacpp", "transformers", "openai")


def display_name(cfg: Config) -> str:
    """`[model] name`, else the bundle's own name ('Qwen2.5-Coder-1.5B-Instruct ...'), else the source's last part."""
    from kbgate.bundles import BUNDLES

    m = cfg.model
    if m.name:
        return m.name
    if m.source in BUNDLES:
        return BUNDLES[m.source].name
    return m.source.rstrip("/").rsplit("/", 1)[-1]


def load_engine(cfg: Config) -> Engine:
    """Load the configured engine with the configured model (provisioned first where needed)."""
    m = cfg.model
    name = display_name(cfg)
    if m.engine == "llamacpp":
        from kbgate.engines.llamacpp import LlamaCppEngine
        from kbgate.provision import fetch_gguf

        return LlamaCppEngine(fetch_gguf(cfg), threads=m.threads, n_ctx=m.n_ctx, n_batch=m.n_batch, name=name)
    if m.engine == "transformers":
        from kbgate.engines.transformers_engine import TransformersEngine
        from kbgate.provision import fetch_generator

        return TransformersEngine.load(fetch_generator(cfg), m.dtype, m.threads, name=name, attention=m.attention)
    if m.engine == "openai":
        from kbgate.engines.remote import RemoteEngine

        return RemoteEngine(cfg)
    raise ConfigError(f"config: [model] engine must be one of {', '.join(ENGINES)}, got {m.engine!r}")
