"""The on-disk layout of an index folder: version folders, the CURRENT pointer, a build lock.

    index_dir/
      CURRENT                 "v-20250301T101500123456-3f9a1c\\n": the published version
      .lock                   held (flock) by the one build running
      v-20250301T101500123456-3f9a1c/
        manifest.json         written last: a folder without it is incomplete
        chunks.jsonl          one chunk per line, row i = FAISS row i (with its page's audience)
        pages.jsonl           each page's metadata, audience and markdown body
        vectors.faiss         inner-product index of the first embedder's normalized vectors
        vectors-2.faiss ...   one more per further embedder (manifest "embedders" names the files)
        bm25/                 the bm25s index over the tokenized chunk texts

A version folder is written in full, then CURRENT is replaced atomically
(temp file + os.replace), so readers see either the old or the new version.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from pathlib import Path

FORMAT_VERSION = 3  # 2: one vector index per embedder (manifest "embedders"); 3: per-page audiences
READ_FORMATS = (2, 3)  # 2: audiences only from front matter kept in meta (see index.page_from_row); a build upgrades it
POINTER = "CURRENT"
MANIFEST = "manifest.json"


def new_version_name() -> str:
    """Return a fresh, time-sortable version folder name."""
    now = time.time()
    return f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{int(now % 1 * 1e6):06d}-{secrets.token_hex(3)}"


def current_version(index_dir: Path) -> str | None:
    """Return the name in CURRENT, or None when there is none."""
    try:
        name = (index_dir / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def publish(index_dir: Path, name: str) -> None:
    """Point CURRENT at version `name`, atomically."""
    tmp = index_dir / f".{POINTER}.{secrets.token_hex(4)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, index_dir / POINTER)


def read_manifest(version_dir: Path) -> dict:
    """Load a version's manifest.json (raises OSError / ValueError when missing or corrupt)."""
    with open(version_dir / MANIFEST, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("manifest.json is not an object")
    return data


def write_json(path: Path, data) -> None:
    """Write JSON (UTF-8, readable) and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: Path, rows) -> None:
    """Write one JSON object per line."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict]:
    """Read one JSON object per line."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def build_lock(index_dir: Path):
    """Hold an exclusive lock on index_dir for one build (a second build waits)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prune(index_dir: Path, keep: int) -> list[str]:
    """Delete all but CURRENT and the `keep` newest complete versions, and incomplete leftovers; return names."""
    cur = current_version(index_dir)
    versions = sorted((p for p in index_dir.glob("v-*") if p.is_dir() and p.name != cur), reverse=True)
    complete = [p for p in versions if (p / MANIFEST).exists()]
    doomed = complete[max(keep, 0):] + [p for p in versions if not (p / MANIFEST).exists()]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    for tmp in index_dir.glob(f".{POINTER}.*.tmp"):
        tmp.unlink(missing_ok=True)
    return [p.name for p in doomed]
