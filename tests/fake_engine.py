"""A pure-Python engine behind `kbgate.engine.Engine`, for fast tests: no model files, no torch.

Replies are scripted (streamed 3 characters a token); label probabilities are
scripted, or come from a deterministic rule over the prompt's last line; every call
is recorded. The same flows run on the real engines in the `slow` tests.

Tokens here are 3-character pieces of text, special markers included, so counts are
exact and easy to check by hand.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from kbgate.engine import EngineInfo, Finish

TRANSLATE_SYSTEM = (Path(__file__).resolve().parent.parent / "prompts" / "translate.system.txt").read_text(
    encoding="utf-8").rstrip()
TRANSLATE_SYSTEMS = {TRANSLATE_SYSTEM, (Path(__file__).resolve().parent.parent / "prompts" /
                                        "translate.en-zh.system.txt").read_text(encoding="utf-8").rstrip()}
NEGATIVE_WORDS = ("烦", "又", "崩", "垃圾", "broken", "again", "useless", "hate", "!!")
POSITIVE_WORDS = ("谢谢", "感谢", "太好", "thanks", "great", "love")


def rule(text: str, choices: Sequence[str]) -> dict[str, float]:
    """A deterministic stand-in for a model: complaint words favour the negative words, and so on.

    Choices are matched to labels by their position in the gate's labels file
    (positive words first, then neutral, then negative); other choice lists get
    uniform scores apart from a small per-choice tilt.
    """
    line = text.rsplit("文本：", 1)[-1].lower()
    n = len(choices)
    third = max(1, n // 3)
    neg = sum(w in line for w in NEGATIVE_WORDS)
    pos = sum(w in line for w in POSITIVE_WORDS)
    logits = []
    for i in range(n):
        band = min(i // third, 2)  # 0 positive, 1 neutral, 2 negative
        logits.append({0: 2.0 * pos, 1: 1.0, 2: 2.0 * neg}[band] - 0.1 * i)
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    return {c: v / sum(e) for c, v in zip(choices, e)}


class FakeEngine:
    """Scripted replies and label probabilities with a record of every call."""

    def __init__(self, reply: str = "", delay: float = 0.0,
                 labels: dict[str, float] | Callable[[str, Sequence[str]], dict] | None = None,
                 translations: dict[str, str] | None = None):
        self.reply, self.delay, self.labels = reply, delay, labels or rule
        self.translations = translations or {}  # query -> its English for the translate prompt ("" = none)
        self.generated = 0  # tokens streamed, all calls together
        self.calls: list[tuple[str, dict]] = []  # (method, arguments)
        self.prefixes: list[str] = []
        self.lock = threading.Lock()

    # ---- tokens -------------------------------------------------------------------
    @staticmethod
    def render(messages: Sequence[dict], open_last: bool = False, generation_prompt: bool = True) -> str:
        """ChatML, as Qwen's template renders it (an open last turn has no end marker)."""
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        if open_last and parts:
            parts[-1] = parts[-1][: -len("<|im_end|>\n")]
        elif generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def count_tokens(self, text: str) -> int:
        return -(-len(text) // 3)

    def prompt_tokens(self, messages, *, open_last: bool = False) -> int:
        return self.count_tokens(self.render(messages, open_last))

    def register_prefix(self, messages, *, open_last: bool = False) -> int:
        self.calls.append(("register_prefix", {"messages": list(messages), "open_last": open_last}))
        text = self.render(messages, open_last, generation_prompt=False)
        if text not in self.prefixes:
            self.prefixes.append(text)
        return self.count_tokens(text)

    def info(self) -> EngineInfo:
        return EngineInfo("fake", "fake-qwen", "none", "cpu", 1)

    # ---- roles --------------------------------------------------------------------
    def classify(self, messages, choices, *, open_last: bool = True) -> dict[str, float]:
        self.calls.append(("classify", {"messages": list(messages), "choices": list(choices),
                                        "open_last": open_last}))
        if len(set(c[:1] for c in choices)) != len(choices):
            raise ValueError(f"choices {list(choices)} share a first token; pick other words")
        if callable(self.labels):
            return self.labels(self.render(messages, open_last), choices)
        z = sum(self.labels.get(c, 0.0) for c in choices)
        return {c: self.labels.get(c, 0.0) / z for c in choices}

    def stream(self, messages, *, max_tokens: int, stop=None, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, repetition_penalty: float = 1.0) -> Iterator[str | Finish]:
        self.calls.append(("stream", {"messages": list(messages), "max_tokens": max_tokens, "stop": stop,
                                      "temperature": temperature, "top_p": top_p, "seed": seed,
                                      "repetition_penalty": repetition_penalty}))
        prompt = self.prompt_tokens(messages)
        reply = self.reply
        if messages and messages[0]["content"] in TRANSLATE_SYSTEMS:  # kbgate.translate asks, not an answer role
            reply = self.translations.get(messages[-1]["content"], "")
        pieces = [reply[i:i + 3] for i in range(0, len(reply), 3)][:max_tokens]
        text, n = "", 0
        for p in pieces:
            time.sleep(self.delay)
            with self.lock:
                self.generated += 1
            n += 1
            cut = min((i for i in ((text + p).find(s) for s in (stop or []) if s) if i >= 0), default=-1)
            if cut >= 0:
                if cut > len(text):
                    yield (text + p)[len(text):cut]
                yield Finish("stop", prompt, n)
                return
            text += p
            yield p
        yield Finish("stop" if len(pieces) < max_tokens else "length", prompt, len(pieces))
