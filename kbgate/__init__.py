"""kbgate: a knowledge-base search service with one local Qwen in two roles."""

__version__ = "0.1.0"
