"""One causal LM shared by every role: next-token logits and streamed generation.

Fixed prompt prefixes (a role's system prompt and examples) are registered once;
their KV cache is computed at registration and a copy is reused for every call
whose token ids start with them. Forward passes are serialized by one lock, one
forward at a time, so a quick gate call slips in between the decode steps of a
long answer instead of waiting for all of it.

Not handled: batched generation (decode is one sequence at a time), GPUs.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from kbgate.engine import Finish  # noqa: F401  (moved; kept importable here)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_dtype(name: str) -> torch.dtype:
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


class LanguageModel:
    """A Hugging Face causal LM with prefix caching and a lock around each forward pass."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model.eval()
        self.tok = tokenizer
        self.name = name
        self.lock = threading.Lock()
        self._prefixes: list[tuple[list[int], object]] = []  # (ids, DynamicCache), longest first
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos = {tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])}
        for t in ("<|im_end|>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                eos.add(tid)
        self.eos_ids = {e for e in eos if e is not None}

    @classmethod
    def load(cls, path: str, dtype: str = "auto", threads: int = 0, name: str | None = None,
             attention: str = "eager") -> "LanguageModel":
        """Load weights and tokenizer from a local folder (or a hub id where the hub is reachable)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype), attn_implementation=attention)
        return cls(model, tok, name or Path(path).name)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    @property
    def device(self) -> str:
        return str(self.model.device)

    # ---- prompts -------------------------------------------------------------
    def render(self, messages: list[dict], generation_prompt: bool = True) -> str:
        """The chat template applied to `messages`, as text."""
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def register_prefix(self, text: str) -> int:
        """Compute and keep the KV cache of a fixed prompt prefix; return its length in tokens."""
        ids = self.encode(text)
        if any(ids == p for p, _ in self._prefixes):
            return len(ids)
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
        self._prefixes.append((ids, out.past_key_values))
        self._prefixes.sort(key=lambda p: -len(p[0]))
        return len(ids)

    def _cached(self, ids: list[int]):
        """(copy of the longest registered prefix cache that `ids` starts with, its length)."""
        for p, cache in self._prefixes:
            if len(p) < len(ids) and ids[: len(p)] == p:
                return copy.deepcopy(cache), len(p)
        return None, 0

    # ---- scoring -------------------------------------------------------------
    def last_logits(self, batch: list[list[int]], vocab: list[int] | None = None,
                    use_cache: bool = True) -> torch.Tensor:
        """Next-token logits after each sequence: (B, len(vocab) or vocab size) float32, one forward pass.

        Sequences sharing a registered prefix reuse its cache; the rest are
        right-padded (causal attention keeps pads out of the real positions).
        Only the rows of `vocab` are projected, at the last real position of each
        sequence: the LM head is a quarter of the model's weights.
        """
        cache, start = self._cached(batch[0]) if use_cache else (None, 0)
        if cache is not None and not all(s[:start] == batch[0][:start] and len(s) > start for s in batch):
            cache, start = None, 0
        tails = [s[start:] for s in batch]
        lens = [len(t) for t in tails]
        pad = self.tok.pad_token_id or 0
        x = torch.tensor([t + [pad] * (max(lens) - len(t)) for t in tails])  # (B, T)
        if cache is not None and len(batch) > 1:
            cache.batch_repeat_interleave(len(batch))
        head = self.model.get_output_embeddings().weight
        head = head if vocab is None else head[vocab]  # (V', hidden)
        with self.lock, torch.inference_mode():
            hidden = self.model.model(input_ids=x, past_key_values=cache, use_cache=cache is not None)
            last = hidden.last_hidden_state[torch.arange(len(batch)), torch.tensor(lens) - 1]  # (B, hidden)
            return (last @ head.T).float()

    # ---- generation ------------------------------------------------------------
    def generate(self, ids: list[int], max_new_tokens: int = 200, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> Iterator[str | Finish]:
        """Yield text pieces as tokens are decoded, then one `Finish`.

        `repetition_penalty` > 1 damps tokens this reply already produced (not the
        prompt's: copying from the passages is what a grounded answer should do).
        """
        cache, start = self._cached(ids)
        if cache is None:
            from transformers import DynamicCache
            cache = DynamicCache()
        stop = [s for s in (stop or []) if s]
        hold = max((len(s) for s in stop), default=1) - 1  # chars kept back: may start a stop string
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        step_in, out, emitted, reason, final = ids[start:], [], 0, "length", None
        for _ in range(max_new_tokens):
            with self.lock, torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([step_in]), past_key_values=cache,
                                    use_cache=True, logits_to_keep=1).logits[0, -1].float()
                if repetition_penalty != 1.0 and out:
                    seen = torch.tensor(sorted(set(out)))
                    vals = logits[seen]
                    logits[seen] = torch.where(vals > 0, vals / repetition_penalty, vals * repetition_penalty)
            nxt = _sample(logits, temperature, top_p, gen)
            if nxt in self.eos_ids:
                reason = "stop"
                break
            out.append(nxt)
            step_in = [nxt]
            text = self.tok.decode(out, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # half of a multi-byte character
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                final, reason = text[:cut], "stop"
                break
            if len(text) - hold > emitted:
                yield text[emitted:len(text) - hold]
                emitted = len(text) - hold
        if final is None:
            final = self.tok.decode(out, skip_special_tokens=True).rstrip("\ufffd")
        if len(final) > emitted:
            yield final[emitted:]
        yield Finish(reason, len(ids), len(out))


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < top_p
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
