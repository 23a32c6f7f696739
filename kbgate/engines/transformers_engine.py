"""The reference engine: a Hugging Face causal LM in torch, for hub models and local HF folders.

Registered prefixes keep their KV cache; a call whose prompt starts with one runs
only its own tokens over a copy. Forward passes are serialized by one lock, one
decode step at a time, so a quick gate call slips in between the steps of a long
answer instead of waiting for all of it. bfloat16 where the CPU computes it
natively (AVX512-BF16 / AMX), else float32; eager attention (measured faster here
for a short tail over a long cached prefix).

The only module that imports torch. Not handled: batched prompts, GPUs.
"""
from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Iterator, Sequence

import torch

from kbgate.engine import EngineInfo, Finish, Message
from kbgate.engines.common import (Prefix, Prefixes, StopText, choice_probs, cpu_device, cpu_features,
                                   first_tokens, render_messages)


def pick_dtype(name: str) -> torch.dtype:
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if cpu_features() == "avx512_bf16" or _has_amx() else torch.float32


def _has_amx() -> bool:
    try:
        return " amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class TransformersEngine:
    """A causal LM with prefix KV caches and a lock around each forward pass."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model.eval()
        self.tok = tokenizer
        self.name = name
        self.lock = threading.Lock()
        self.prefixes = Prefixes()  # handle: the prefix's DynamicCache
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos = {tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])}
        for t in ("<|im_end|>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                eos.add(tid)
        self.eos_ids = {e for e in eos if e is not None}

    @classmethod
    def load(cls, path: str, dtype: str = "auto", threads: int = 0, name: str | None = None,
             attention: str = "eager") -> "TransformersEngine":
        """Load weights and tokenizer from a local folder (or a hub id where the hub is reachable)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype), attn_implementation=attention)
        return cls(model, tok, name or Path(path).name)

    def info(self) -> EngineInfo:
        return EngineInfo("transformers", self.name, str(self.model.dtype).removeprefix("torch."),
                          cpu_device(), torch.get_num_threads())

    # ---- prompts -------------------------------------------------------------
    def _render(self, messages: list, generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def render(self, messages: Sequence[Message], *, open_last: bool = False, generation_prompt: bool = True) -> str:
        """The prompt text for `messages` (the generation prompt only for a closed last turn)."""
        return render_messages(self._render, messages, open_last=open_last,
                               generation_prompt=generation_prompt and not open_last)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def prompt_ids(self, messages: Sequence[Message], open_last: bool = False) -> tuple[list[int], Prefix | None]:
        return self.prefixes.encode(self.render(messages, open_last=open_last), self.encode)

    def prompt_tokens(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        return len(self.prompt_ids(messages, open_last)[0])

    def register_prefix(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        text = self.render(messages, open_last=open_last, generation_prompt=False)
        if (known := self.prefixes.find(text)) is not None:
            return len(known.ids)
        ids = self.encode(text)
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
        self.prefixes.add(Prefix(text, ids, out.past_key_values))
        return len(ids)

    def _cache(self, prefix: Prefix | None):
        """(a private copy of the prefix's KV cache, its length), or a fresh cache."""
        if prefix is None:
            from transformers import DynamicCache
            return DynamicCache(), 0
        return copy.deepcopy(prefix.handle), len(prefix.ids)

    # ---- scoring -------------------------------------------------------------
    def logits(self, ids: list[int], prefix: Prefix | None = None, vocab: list[int] | None = None) -> torch.Tensor:
        """Next-token logits after `ids`: (len(vocab) or vocab size,) float32, one forward pass.

        Only the rows of `vocab` are projected: the LM head is a quarter of the weights.
        """
        cache, start = self._cache(prefix)
        head = self.model.get_output_embeddings().weight
        head = head if vocab is None else head[vocab]  # (V', hidden)
        with self.lock, torch.inference_mode():
            hidden = self.model.model(input_ids=torch.tensor([ids[start:]]), past_key_values=cache, use_cache=True)
            return (hidden.last_hidden_state[0, -1] @ head.T).float()

    def classify(self, messages: Sequence[Message], choices: Sequence[str], *,
                 open_last: bool = True) -> dict[str, float]:
        ids, prefix = self.prompt_ids(messages, open_last)
        vocab = first_tokens(choices, self.encode)
        return choice_probs(choices, self.logits(ids, prefix, vocab).tolist())

    # ---- generation ------------------------------------------------------------
    def stream(self, messages: Sequence[Message], *, max_tokens: int, stop: Sequence[str] | None = None,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               repetition_penalty: float = 1.0) -> Iterator[str | Finish]:
        """Yield text pieces as tokens are decoded, then one `Finish`.

        `repetition_penalty` > 1 damps tokens this reply already produced (not the
        prompt's: copying from the passages is what a grounded answer should do).
        """
        ids, prefix = self.prompt_ids(messages)
        cache, start = self._cache(prefix)
        text_out = StopText(stop)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        step_in, out, reason = ids[start:], [], "length"
        for _ in range(max_tokens):
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
            if piece := text_out.push(text):
                yield piece
            if text_out.stopped:
                reason = "stop"
                break
        if piece := text_out.flush(self.tok.decode(out, skip_special_tokens=True).rstrip("\ufffd")):
            yield piece
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
