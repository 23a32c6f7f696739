"""Pieces every local engine shares: prompt rendering with an open last turn, registered
prefixes matched by text, stop strings held back, choice probabilities, sampling, CPU facts.

Pure Python and numpy: no torch, no llama_cpp here.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

_SENTINEL = "\x00kbgate-open\x00"


def render_messages(render: Callable[[list, bool], str], messages: Sequence[dict], *, open_last: bool,
                    generation_prompt: bool) -> str:
    """The chat template over `messages`; with `open_last`, the last turn is left unterminated.

    `render(messages, add_generation_prompt)` is the engine's own template. An open
    last turn is rendered closed around a sentinel and cut there, so the template's
    end-of-turn marker (and anything after it) never follows the text.
    """
    messages = [dict(m) for m in messages]
    if not open_last:
        return render(messages, generation_prompt)
    if not messages:
        raise ValueError("open_last needs at least one message")
    text = messages[-1]["content"]
    messages[-1]["content"] = _SENTINEL
    rendered = render(messages, False)
    return rendered[: rendered.index(_SENTINEL)] + text


@dataclass
class Prefix:
    text: str
    ids: list[int]
    handle: object = None  # the engine's cached state: a KV cache, a sequence id


@dataclass
class Prefixes:
    """Registered prompt prefixes, longest first, matched on the rendered text.

    A prompt that starts with a prefix's text is tokenized as the prefix's ids plus
    the rest tokenized on its own, so it always extends the cached prefix exactly
    (a BPE merge across the seam would otherwise defeat the cache).
    """
    items: list[Prefix] = field(default_factory=list)

    def find(self, text: str) -> Prefix | None:
        return next((p for p in self.items if p.text == text), None)

    def add(self, p: Prefix) -> None:
        self.items.append(p)
        self.items.sort(key=lambda q: -len(q.text))

    def encode(self, text: str, encode: Callable[[str], list[int]]) -> tuple[list[int], Prefix | None]:
        """(token ids of `text`, the longest registered prefix they start with)."""
        for p in self.items:
            if len(text) > len(p.text) and text.startswith(p.text):
                return p.ids + encode(text[len(p.text):]), p
        return encode(text), None


class StopText:
    """Text of a reply decoded so far -> pieces safe to show: stop strings never leak."""

    def __init__(self, stop: Sequence[str] | None):
        self.stop = [s for s in (stop or []) if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1  # chars that may start a stop string
        self.emitted = 0
        self.stopped = False

    def push(self, text: str) -> str:
        """The new piece to yield for the whole reply `text` (sets `stopped` at a stop string)."""
        start = max(0, self.emitted - self.hold)
        cuts = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        end = min(cuts) if cuts else len(text) - self.hold
        self.stopped = bool(cuts)
        if end <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted:end], end
        return piece

    def flush(self, text: str) -> str:
        """What is left to yield when decoding ended without a stop string."""
        if self.stopped or len(text) <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece


def first_tokens(choices: Sequence[str], encode: Callable[[str], list[int]]) -> list[int]:
    """Each choice's first token; choices that share one cannot be told apart."""
    if not choices:
        raise ValueError("classify needs at least one choice")
    ids = []
    for c in choices:
        toks = encode(c)
        if not toks:
            raise ValueError(f"choice {c!r} has no tokens")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"choices {list(choices)} share a first token; pick other words")
    return ids


def choice_probs(choices: Sequence[str], logits: Sequence[float]) -> dict[str, float]:
    """Softmax over the choices' logits alone, in float64."""
    top = max(logits)
    exp = [math.exp(float(x) - top) for x in logits]
    z = sum(exp)
    return {c: e / z for c, e in zip(choices, exp)}


def penalize(logits: np.ndarray, seen: set[int], penalty: float) -> None:
    """Damp tokens the reply already produced, in place (CTRL / HF rule: divide positives)."""
    if penalty == 1.0 or not seen:
        return
    idx = np.fromiter(seen, dtype=np.int64)
    vals = logits[idx]
    logits[idx] = np.where(vals > 0, vals / penalty, vals * penalty)


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else temperature, then nucleus (top_p) sampling.  logits: (V,) float32"""
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    x -= x.max()
    p = np.exp(x)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        sp = p[order]
        keep = np.cumsum(sp) - sp < top_p
        idx, sp = order[keep], sp[keep]
        return int(idx[rng.choice(len(idx), p=sp / sp.sum())])
    return int(rng.choice(len(p), p=p))


def cpu_threads(threads: int) -> int:
    """Configured threads, or every core this process may run on (0)."""
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_features() -> str:
    """The vector extensions that decide speed here: 'avx512_bf16', 'avx512', 'avx2' or ''."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ""
    for name, flag in (("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return ""


def cpu_device() -> str:
    feat = cpu_features()
    return f"cpu ({feat})" if feat else "cpu"
