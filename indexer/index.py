"""Load the published index version and serve its chunks, pages, vectors and BM25 model.

`load_index` checks the manifest against the embedder(s) that will embed
queries: another embedder name, dimension or format version means the vectors
are in a different space, so it refuses with `IndexUnavailable` and says what
to run. A version holds one vector index per embedder (`Index.dense`, in the
manifest's order); `Index.faiss` is the first one's.

Access: every chunk and page carries its page's audience (indexer.audience).
`Index.mask(caller)` is the chunk mask of what a caller may read, for the
`allowed` parameter of indexer.search; `Index.readable(page, caller)` is a page
or NotFound, the same NotFound as for a page that does not exist. A caller is
any object with `may_read(audience: tuple[str, ...]) -> bool` and a hash
(the application's caller type); None means no restriction (local tools, evaluation).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import indexer
from indexer.chunking import Chunk
from indexer.audience import parse_audience
from indexer.embedders import members
from indexer.errors import BadInput, IndexUnavailable, NotFound
from indexer.pages import Page
from indexer.versions import FORMAT_VERSION, READ_FORMATS, current_version, read_jsonl, read_manifest

log = logging.getLogger("indexer")

CHUNK_FIELDS = ("id", "page", "title", "heading", "anchor", "text", "type", "tags", "hash", "audience")
_TUPLES = ("tags", "audience")
NOBODY = "-nobody-"  # not a valid group name (indexer.audience.GROUP), so no caller holds it
_MASK_CACHE = 1024  # callers' masks kept per index (distinct group sets are few)


def rebuild_hint(index_dir: Path) -> str:
    """Return what (re)builds the index in index_dir (the application sets `indexer.REBUILD_HINT`)."""
    return indexer.REBUILD_HINT.format(dir=index_dir)


def chunk_from_row(row: dict) -> Chunk:
    """Rebuild a Chunk from its chunks.jsonl row."""
    return Chunk(**{k: (tuple(row.get(k) or ()) if k in _TUPLES else row[k]) for k in CHUNK_FIELDS})


def page_from_row(row: dict) -> Page:
    """Rebuild a Page from its pages.jsonl row (format 2 rows: the audience its front matter had, kept in meta)."""
    meta = row.get("meta") or {}
    if "audience" in row:
        audience = tuple(row["audience"] or ())
    elif "audience" in meta:
        try:
            audience = parse_audience(meta["audience"], row["path"])
        except BadInput:
            audience = (NOBODY,)  # fail closed: a value the builder would refuse is readable by no one
    else:
        audience = ()
    return Page(id=row["id"], path=row["path"], title=row["title"], tags=tuple(row["tags"]), type=row["type"],
                text=row["text"], sha256=row["sha256"], meta=meta, audience=audience)


@dataclass(frozen=True, eq=False)
class Index:
    """One loaded, immutable index version (compared and hashed by identity)."""
    dir: Path  # the index folder (holds CURRENT)
    version: str  # "v-20250301T101500123456-3f9a1c"
    manifest: dict
    chunks: tuple[Chunk, ...]  # row i = FAISS row i = BM25 document i
    keys: tuple[str, ...]  # per row: sha256 of embedder name + chunk hash (for vector reuse)
    pages: dict  # page id -> Page, in id order
    faiss: object  # faiss.Index of the first embedder, inner product on normalized vectors
    bm25: object  # bm25s.BM25
    dense: dict | None = None  # embedder name -> its faiss.Index (manifest order); None = {first: faiss}
    page_bm25: object = None  # bm25s.BM25 over whole pages, document i = i-th page in `pages` (None: not built)
    gloss: object = None  # indexer.gloss: (chunk BM25, page BM25, Chinese word -> terms) on the English side; None: not built

    def __post_init__(self):
        if self.dense is None:
            object.__setattr__(self, "dense", {(self.manifest.get("embedder") or {}).get("name", ""): self.faiss})
        order = {pid: i for i, pid in enumerate(self.pages)}
        rows = [order.get(getattr(c, "page", None), -1) for c in self.chunks]
        object.__setattr__(self, "chunk_page_rows", np.array(rows, np.int64))
        # distinct audiences and, per chunk, which: a caller's mask is one table lookup per chunk
        audiences = sorted({tuple(getattr(c, "audience", ())) for c in self.chunks})
        ids = {a: i for i, a in enumerate(audiences)}
        object.__setattr__(self, "audiences", tuple(audiences))
        object.__setattr__(self, "chunk_audience_ids",
                           np.array([ids[tuple(getattr(c, "audience", ()))] for c in self.chunks], np.int32))
        object.__setattr__(self, "_masks", {})

    def __len__(self) -> int:
        return len(self.chunks)

    def get_page(self, page_id: str) -> Page:
        """Return the page with this id (NotFound when there is none)."""
        try:
            return self.pages[page_id]
        except KeyError:
            raise NotFound(f"no page {page_id!r} in the index") from None

    def page_list(self, caller=None) -> list[Page]:
        """Return all pages the caller may read (None: all), sorted by id."""
        return [p for p in self.pages.values() if caller is None or caller.may_read(p.audience)]

    def readable(self, page_id: str, caller) -> Page:
        """Return the page if the caller may read it; else the same NotFound as for a page that does not exist."""
        page = self.pages.get(page_id)
        if page is None or (caller is not None and not caller.may_read(page.audience)):
            raise NotFound(f"no page {page_id!r} in the index")
        return page

    def may_read(self, page_id: str, caller) -> bool:
        """Whether the page exists and the caller may read it."""
        page = self.pages.get(page_id)
        return page is not None and (caller is None or caller.may_read(page.audience))

    def mask(self, caller) -> np.ndarray | None:
        """The (n_chunks,) bool mask of chunks the caller may read; None when it may read all (or caller is None)."""
        if caller is None:
            return None
        cache = self._masks
        if caller not in cache:
            ok = np.array([bool(caller.may_read(a)) for a in self.audiences], bool)
            if len(cache) >= _MASK_CACHE:
                cache.clear()
            cache[caller] = None if ok.all() else ok[self.chunk_audience_ids]
        return cache[caller]

    def vectors(self, embedder: str | None = None) -> np.ndarray:
        """Return all chunk vectors of one embedder (default: the first), (n_chunks, dim) float32, row-aligned."""
        ix = self.faiss if embedder is None else self.dense[embedder]
        n = ix.ntotal
        return ix.reconstruct_n(0, n) if n else np.zeros((0, ix.d), np.float32)


def built_embedders(manifest: dict) -> list[dict]:
    """The manifest's embedders, [{name, dim, languages, file}], first one first."""
    if manifest.get("embedders"):
        return list(manifest["embedders"])
    one = manifest.get("embedder") or {}
    return [{**one, "file": "vectors.faiss"}] if one else []


def check_manifest(manifest: dict, where: Path, embedder) -> None:
    """Raise IndexUnavailable unless the manifest matches this code and `embedder` (None skips that check)."""
    fmt = manifest.get("format_version")
    if fmt not in READ_FORMATS:
        raise IndexUnavailable(f"the index in {where} has format version {fmt}, this indexer reads "
                               f"version {FORMAT_VERSION}; {rebuild_hint(where)}")
    if embedder is None:
        return
    built = built_embedders(manifest)
    want = members(embedder)
    got = [(b.get("name"), b.get("dim")) for b in built]
    if [(m.name, m.dim) for m in want] != got:
        had = ", ".join(f"{n!r} ({d} dims)" for n, d in got) or "no embedder"
        asked = ", ".join(f"{m.name!r} ({m.dim} dims)" for m in want)
        raise IndexUnavailable(f"the index in {where} was built with embedder {had} "
                               f"but the configured embedder is {asked}; {rebuild_hint(where)}")


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
        dense = {}
        for b in built_embedders(manifest):
            v = faiss.read_index(str(vdir / b["file"]))
            if hasattr(v, "make_direct_map"):
                v.make_direct_map()  # IVF: reconstruct() by row
            dense[b["name"]] = v
        vecs = next(iter(dense.values()))
        bm25 = bm25s.BM25.load(str(vdir / "bm25"), show_progress=False)
        page_bm25 = bm25s.BM25.load(str(vdir / "bm25-pages"), show_progress=False)
        glossed = _load_gloss(vdir)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise IndexUnavailable(f"the index version {name} in {index_dir} is damaged ({type(e).__name__}: {e}); "
                               f"{rebuild_hint(index_dir)}") from None
    if not all(len(rows) == v.ntotal == manifest.get("chunk_count") for v in dense.values()):
        raise IndexUnavailable(f"the index version {name} in {index_dir} is inconsistent ({len(rows)} chunks, "
                               f"{vecs.ntotal} vectors); {rebuild_hint(index_dir)}")
    chunks = tuple(chunk_from_row(r) for r in rows)
    if manifest.get("format_version") == 2:  # built before audiences: each chunk takes its page's (see page_from_row)
        chunks = tuple(dataclasses.replace(c, audience=pages[c.page].audience) if c.page in pages else c
                       for c in chunks)
        log.warning("warning: the index in %s predates folder audiences (_access.yml); %s",
                    index_dir, rebuild_hint(index_dir))
    if glossed is None:
        log.warning("warning: the index in %s has no cross-language BM25 (built before it); %s",
                    index_dir, rebuild_hint(index_dir))
    return Index(index_dir, name, manifest, chunks, tuple(r["key"] for r in rows), pages, vecs, bm25, dense, page_bm25,
                 glossed)


def _load_gloss(vdir: Path):
    """(chunk BM25, page BM25, word dict) of a version's English-side BM25, or None when it was built without."""
    import json

    import bm25s

    try:
        words = json.loads((vdir / "gloss-words.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return (bm25s.BM25.load(str(vdir / "bm25-gloss"), show_progress=False),
            bm25s.BM25.load(str(vdir / "bm25-gloss-pages"), show_progress=False), words)
