"""A sentence-transformers BERT folder's forward pass in numpy: the service's query side without torch.

Why: the service embeds one query at a time, and for that `import sentence_transformers`
(which pulls in transformers and torch) was 4.6 s of a 7.3 s start and a few hundred MB
of RSS. The same weights (model.safetensors) and the same tokenizer (tokenizer.json, run
by `tokenizers`) in float32 numpy give the vectors sentence-transformers gives, to float
rounding (tests/test_bertnp.py compares them), in a few milliseconds per query.

Only the layout it knows is read: `model_type = "bert"` with absolute positions, then
mean or CLS pooling, then optional normalization (modules.json). Anything else, or a
folder without tokenizer.json / model.safetensors, is `Unsupported`, and the caller keeps
sentence-transformers. Batches (an index build) stay in sentence-transformers too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODULE = "sentence_transformers.models."


class Unsupported(ValueError):
    """The folder is not the plain BERT + pooling layout this reader knows."""


def _read(folder: Path, name: str) -> dict:
    p = folder / name
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1.5e-7 (Abramowitz & Stegun 7.1.26): BERT's exact GELU in float32 without scipy."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t \
        * np.exp(-a * a)
    return s * y


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class NumpyBert:
    """Embed texts one by one as sentence-transformers would for this folder; (n, dim) float32."""

    def __init__(self, folder):
        folder = Path(folder)
        modules = _read(folder, "modules.json")
        types = [m.get("type", "").removeprefix(MODULE) for m in modules]
        if not types or types[0] != "Transformer" or not set(types[1:]) <= {"Pooling", "Normalize"}:
            raise Unsupported(f"modules {types or 'missing'}: only Transformer, Pooling, Normalize")
        cfg = _read(folder, "config.json")
        if cfg.get("model_type") != "bert" or cfg.get("position_embedding_type", "absolute") != "absolute" \
                or cfg.get("hidden_act") != "gelu":
            raise Unsupported(f"model_type {cfg.get('model_type')!r}: only BERT with absolute positions and GELU")
        pool_dir = next((m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling")), None)
        pool = _read(folder / pool_dir, "config.json") if pool_dir is not None else {"pooling_mode_mean_tokens": True}
        modes = [k for k, v in pool.items() if k.startswith("pooling_mode") and v]
        if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
            raise Unsupported(f"pooling {modes}: only mean or CLS")
        self.mean = modes == ["pooling_mode_mean_tokens"]
        self.normalize = "Normalize" in types
        if not (folder / "tokenizer.json").is_file() or not (folder / "model.safetensors").is_file():
            raise Unsupported("needs tokenizer.json and model.safetensors")
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        st = _read(folder, "sentence_bert_config.json")
        self.max_len = min(int(st.get("max_seq_length") or 512), int(cfg.get("max_position_embeddings", 512)))
        self.lower = bool(st.get("do_lower_case", False))
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_len)
        w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in
             load_file(str(folder / "model.safetensors")).items()}
        self.heads, self.eps = int(cfg["num_attention_heads"]), float(cfg.get("layer_norm_eps", 1e-12))
        self.dim = int(cfg["hidden_size"])
        e = "embeddings."
        self.word, self.pos = w[e + "word_embeddings.weight"], w[e + "position_embeddings.weight"]
        self.type0 = w[e + "token_type_embeddings.weight"][0]
        self.ln0 = (w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"])
        self.layers = []
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            qkv_w = np.concatenate([w[a + f"self.{n}.weight"] for n in ("query", "key", "value")]).T.copy()
            qkv_b = np.concatenate([w[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((qkv_w, qkv_b, w[a + "output.dense.weight"].T.copy(), w[a + "output.dense.bias"],
                                w[a + "output.LayerNorm.weight"], w[a + "output.LayerNorm.bias"],
                                w[p + "intermediate.dense.weight"].T.copy(), w[p + "intermediate.dense.bias"],
                                w[p + "output.dense.weight"].T.copy(), w[p + "output.dense.bias"],
                                w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]))

    def count_tokens(self, text: str) -> int:
        """Wordpieces without [CLS]/[SEP], untruncated."""
        return len(self.tok.encode(text, add_special_tokens=False).ids) if text else 0

    def _one(self, text: str) -> np.ndarray:
        ids = np.asarray(self.tok.encode(text.lower() if self.lower else text).ids)
        n, h = len(ids), self.heads
        x = _layer_norm(self.word[ids] + self.pos[:n] + self.type0, *self.ln0, self.eps)
        d = self.dim // h
        for qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, f_w, f_b, ln2_w, ln2_b in self.layers:
            q, k, v = (x @ qkv_w + qkv_b).reshape(n, 3, h, d).transpose(1, 2, 0, 3)
            s = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(d))
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = _layer_norm(ctx @ o_w + o_b + x, ln1_w, ln1_b, self.eps)
            u = x @ i_w + i_b
            u = 0.5 * u * (1.0 + _erf(u / np.float32(np.sqrt(2.0))))
            x = _layer_norm(u @ f_w + f_b + x, ln2_w, ln2_b, self.eps)
        return x.mean(0) if self.mean else x[0]

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32; rows L2-normalized when the folder normalizes."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            out[i] = self._one(t)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
