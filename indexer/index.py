"""Load the published index version and serve its chunks, pages, vectors and BM25 model.

`load_index` checks the manifest against the embedder that will embed queries:
another embedder name, dimension or format version means the vectors are in a
different space, so it refuses with `IndexUnavailable` and says what to run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.chunking import Chunk
from indexer.pages import Page
from indexer.versions import FORMAT_VERSION, current_version, read_jsonl, read_manifest
from kbgate.errors import IndexUnavailable, NotFound

CHUNK_FIELDS = ("id", "page", "title", "heading", "anchor", "text", "type", "tags", "hash")


def rebuild_hint(index_dir: Path) -> str:
    """Return the command that (re)builds the index in index_dir."""
    return f"run `kbgate index --index {index_dir}` (add --kb DIR for another wiki folder)"


def chunk_from_row(row: dict) -> Chunk:
    """Rebuild a Chunk from its chunks.jsonl row."""
    return Chunk(**{k: (tuple(row[k]) if k == "tags" else row[k]) for k in CHUNK_FIELDS})


def page_from_row(row: dict) -> Page:
    """Rebuild a Page from its pages.jsonl row."""
    return Page(id=row["id"], path=row["path"], title=row["title"], tags=tuple(row["tags"]), type=row["type"],
                text=row["text"], sha256=row["sha256"], meta=row.get("meta") or {})


@dataclass(frozen=True, eq=False)
class Index:
    """One loaded, immutable index version (compared and hashed by identity)."""
    dir: Path  # the index folder (holds CURRENT)
    version: str  # "v-20250301T101500123456-3f9a1c"
    manifest: dict
    chunks: tuple[Chunk, ...]  # row i = FAISS row i = BM25 document i
    keys: tuple[str, ...]  # per row: sha256 of embedder name + chunk hash (for vector reuse)
    pages: dict  # page id -> Page, in id order
    faiss: object  # faiss.Index, inner product on normalized vectors
    bm25: object  # bm25s.BM25

    def __len__(self) -> int:
        return len(self.chunks)

    def get_page(self, page_id: str) -> Page:
        """Return the page with this id (NotFound when there is none)."""
        try:
            return self.pages[page_id]
        except KeyError:
            raise NotFound(f"no page {page_id!r} in the index") from None

    def page_list(self) -> list[Page]:
        """Return all pages, sorted by id."""
        return list(self.pages.values())

    def vectors(self) -> np.ndarray:
        """Return all chunk vectors, (n_chunks, dim) float32, row-aligned with `chunks`."""
        n = self.faiss.ntotal
        return self.faiss.reconstruct_n(0, n) if n else np.zeros((0, self.faiss.d), np.float32)


def check_manifest(manifest: dict, where: Path, embedder) -> None:
    """Raise IndexUnavailable unless the manifest matches this code and `embedder` (None skips that check)."""
    fmt = manifest.get("format_version")
    if fmt != FORMAT_VERSION:
        raise IndexUnavailable(f"the index in {where} has format version {fmt}, this kbgate reads "
                               f"version {FORMAT_VERSION}; {rebuild_hint(where)}")
    if embedder is None:
        return
    built = manifest.get("embedder") or {}
    if built.get("name") != embedder.name or built.get("dim") != embedder.dim:
        raise IndexUnavailable(
            f"the index in {where} was built with embedder {built.get('name')!r} ({built.get('dim')} dims) "
            f"but the configured embedder is {embedder.name!r} ({embedder.dim} dims); {rebuild_hint(where)}")


def load_index(index_dir: str | Path, embedder=None) -> Index:
    """Load the version CURRENT points at; IndexUnavailable (with the fix) when missing or mismatched."""
    import bm25s
    import faiss

    index_dir = Path(index_dir)
    name = current_version(index_dir)
    if name is None:
        raise IndexUnavailable(f"there is no index in {index_dir}; {rebuild_hint(index_dir)}")
    vdir = index_dir / name
    try:
        manifest = read_manifest(vdir)
    except (OSError, ValueError) as e:
        raise IndexUnavailable(f"the index version {name} in {index_dir} is missing or damaged "
                               f"({type(e).__name__}: {e}); {rebuild_hint(index_dir)}") from None
    check_manifest(manifest, index_dir, embedder)
    try:
        rows = read_jsonl(vdir / "chunks.jsonl")
        pages = {r["id"]: page_from_row(r) for r in read_jsonl(vdir / "pages.jsonl")}
        vecs = faiss.read_index(str(vdir / "vectors.faiss"))
        if hasattr(vecs, "make_direct_map"):
            vecs.make_direct_map()  # IVF: reconstruct() by row
        bm25 = bm25s.BM25.load(str(vdir / "bm25"), show_progress=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise IndexUnavailable(f"the index version {name} in {index_dir} is damaged ({type(e).__name__}: {e}); "
                               f"{rebuild_hint(index_dir)}") from None
    if not (len(rows) == vecs.ntotal == manifest.get("chunk_count")):
        raise IndexUnavailable(f"the index version {name} in {index_dir} is inconsistent ({len(rows)} chunks, "
                               f"{vecs.ntotal} vectors); {rebuild_hint(index_dir)}")
    return Index(index_dir, name, manifest, tuple(chunk_from_row(r) for r in rows),
                 tuple(r["key"] for r in rows), pages, vecs, bm25)
