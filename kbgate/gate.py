"""The sentiment gate: the LM as a cold analyst, one forward pass per batch of texts.

The analyst prompt (system text plus worked examples) is fixed, so its KV cache
is computed once; each query only runs its own few tokens. The label is read
off the next-token logits of the label words, softmaxed over the labels alone:
no text is generated and no model prose is parsed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from kbgate.config import GateConfig
from kbgate.lm import LanguageModel
from kbgate.prompts import Prompts, fill
from kbgate.text import clean_text

LABELS = ("positive", "neutral", "negative")


@dataclass(frozen=True)
class Sentiment:
    label: str  # one of LABELS
    confidence: float  # softmax probability of `label` over the three labels
    probs: dict  # label -> probability
    ms: float  # wall time of the forward pass this text was in

    def as_dict(self) -> dict:
        return {"label": self.label, "confidence": round(self.confidence, 4),
                "probs": {k: round(v, 4) for k, v in self.probs.items()}, "ms": round(self.ms, 1)}


class SentimentGate:
    """Label texts positive / neutral / negative and decide the route."""

    def __init__(self, lm: LanguageModel, prompts: Prompts, cfg: GateConfig):
        self.lm, self.cfg = lm, cfg
        name = cfg.prompt
        self.words = dict(prompts.table(f"{name}.labels.tsv"))  # label -> word, e.g. negative -> 负面
        missing = set(LABELS) - set(self.words)
        if missing:
            raise ValueError(f"{name}.labels.tsv lacks {sorted(missing)}")
        self.user_template = prompts.text(f"{name}.user.txt")
        messages = [{"role": "system", "content": prompts.text(f"{name}.system.txt")}]
        for label, text in prompts.table(f"{name}.examples.tsv"):
            messages += [{"role": "user", "content": fill(self.user_template, text=text)},
                         {"role": "assistant", "content": self.words[label]}]
        self.messages = messages
        self.prefix_tokens = lm.register_prefix(lm.render(messages, generation_prompt=False))
        self.label_ids = self._label_ids()

    def _label_ids(self) -> list[int]:
        """First token of each label word; they must differ for the logits to tell them apart."""
        ids = [self.lm.encode(self.words[label])[0] for label in LABELS]
        if len(set(ids)) != len(ids):
            raise ValueError(f"label words {self.words} share a first token; pick other words")
        return ids

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of the whole analyst prompt for one text (the text goes in as delimited data)."""
        text = clean_text(text).replace("<<<", "«").replace(">>>", "»")
        user = {"role": "user", "content": fill(self.user_template, text=text)}
        return self.lm.encode(self.lm.render(self.messages + [user]))

    def classify(self, texts: list[str]) -> list[Sentiment]:
        """Label each text; texts are batched `batch_size` per forward pass."""
        out: list[Sentiment] = []
        for i in range(0, len(texts), self.cfg.batch_size):
            batch = [self.prompt_ids(t) for t in texts[i:i + self.cfg.batch_size]]
            t0 = time.perf_counter()
            logits = self.lm.last_logits(batch, vocab=self.label_ids)  # (B, 3)
            ms = (time.perf_counter() - t0) * 1000
            for row in torch.softmax(logits, dim=-1).tolist():
                best = max(range(len(LABELS)), key=row.__getitem__)
                out.append(Sentiment(LABELS[best], row[best], dict(zip(LABELS, row)), ms))
        return out

    def is_troubleshooting(self, s: Sentiment) -> bool:
        """P(negative) at or above the threshold (0.5 or more means negative is also the top label)."""
        return s.probs["negative"] >= self.cfg.negative_threshold
