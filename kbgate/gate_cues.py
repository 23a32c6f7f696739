"""Lexical cues of frustration beside the gate's label probabilities, in one small logistic model.

The 0.5B analyst reads surface words: "Of course it does." or "这都第二次了，真服了" look
calm or even positive to it. A few cheap counts (venting words, repeated failure, !!/??,
shouted words, sarcasm markers) catch much of what it misses. They are combined with the
model's own log-odds in a logistic regression whose weights are fitted offline
(bench/fit_gate_cues.py) and shipped as `prompts/<name>.cues.tsv`; P(negative) is the
regression's, positive and neutral share the rest in the model's own ratio.
Computing the cues costs microseconds; the model still runs once per text.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from indexer.tokenize import tokenize
from indexer.topic import VENT_EN, VENT_ZH

FEATURES = ("model_neg", "model_pos", "vent", "repeat", "persist", "shout", "caps", "sarcasm")
CAP = 3  # counts above this add nothing: a long rant must not outweigh the model on its own
CLIP = 1e-4  # model probabilities are clipped to [CLIP, 1-CLIP] before the log-odds

# Venting terms are indexer.topic's lexicon less what also marks a calm query: thanks, urgency,
# times of day (紧急, ASAP and "今天上午" are labelled neutral in the helpdesk set), and the
# repeat words, which are a feature of their own.
_NOT_VENT = frozenset("""
谢谢 求求 求助 救命 拜托 赶紧 马上 立刻 快点 急用 紧急 急 今天 今天上午 早上 一早 上午 下午 晚上 搞 搞了 弄 弄了
又 又是 还是 一直 每次 天天 反复 好几次 一次次 几次 老是 总是
help thanks thank urgent urgently asap immediately lol morning afternoon evening
again still keep keeps kept always constantly every single yet another
""".split())
VENT = (VENT_ZH | VENT_EN) - _NOT_VENT
# Complaint words that topic.py leaves out (some can be a topic there), matched in the raw text.
_VENT_MORE = re.compile(r"反人类|要死|炸了|疯了|寒心|差劲|太差|"
                        r"\b(?:furious|livid|garbage|trash|rubbish|unacceptable|nuts|gross|angry|worst)\b", re.I)

_NUM_ZH = "两二三四五六七八九十"
_REPEAT = [re.compile(p, re.I) for p in (
    r"又", r"再次", r"还是[不没]", r"一直", r"老是", r"总是", r"每次", r"天天", r"反复", r"动不动", r"一次次",
    r"好几次", rf"第\s*[{_NUM_ZH}N\d]+\s*[次回遍]", rf"(?<![第{_NUM_ZH}\d])[{_NUM_ZH}\d]+\s*[次遍]了",
    r"\bagain\b", r"\bstill\b", r"\bkeeps?\s+\w+ing\b", r"\b(?:every|each)\s+(?:single\s+)?time\b",
    r"\bevery single\b", r"\byet another\b", r"\btwice\b",
    r"\b(?:second|third|fourth|fifth|\d+(?:st|nd|rd|th))\s+(?:time|attempt)\b",
    r"\b(?:\d+|two|three|four|five|six|seven|eight|nine|ten)\s+times\b", r"\bsame\s+(?:error|problem|issue)\b",
)]
# Something that has gone on for a while: "折腾一上午", "半小时了", "for three hours", "since lunch".
_PERSIST = [re.compile(p, re.I) for p in (
    r"一上午|一下午|一整天|一晚上|老半天|半天|好久", rf"[一{_NUM_ZH}几半\d]+\s*个?\s*(?:分钟|小时|天|周|星期|礼拜|月)了",
    r"\ball\s+(?:day|morning|afternoon|night|week)\b", r"\bwhole\s+(?:day|morning|afternoon|night|week)\b",
    r"\bforever\b", r"\bfor\s+(?:\d+|an?|two|three|four|five|several|many)\s+(?:min(?:ute)?s?|hours?|days?|weeks?)\b",
    r"\b(?:min(?:ute)?s?|hours?|days?|weeks?)\s+(?:now|ago)\b", r"\bsince\s+(?:this\s+morning|lunch|yesterday|last\s+\w+)\b",
)]
_SHOUT = re.compile(r"[!?！？]{2,}")
_CAPS = re.compile(r"(?<![\w-])[A-Z]{4,}(?![\w-])")
_ACRONYMS = frozenset({"JIRA", "SAML", "OKTA", "HTTP", "HTTPS", "JSON", "YAML", "ASAP", "URGENT", "SYSTEM", "LDAP"})
# Praise said of a failure: a clause that opens with it, or markers that are rarely sincere.
_SARCASM = [re.compile(p, re.I) for p in (
    r"(?:^|[。！？!?.，,])\s*(?:太好了|真棒|好极了|厉害了|太贴心了|恭喜|哇)\s*[，,！!]", r"呵呵", r"真是谢谢", r"谢谢你们?让我",
    r"(?:感谢|谢谢).{0,12}让我", r"[真太][“\"]", r"🙃|🙄",
    r"\bof course\b", r"\boh\s+(?:great|good|cool|wonderful|joy|perfect|nice)\b",
    r"(?:^|[.!?]\s*)(?:great|fantastic|perfect|wonderful|brilliant)\s*[,.!]",
    r"\bjust great\b", r"\blove (?:it|how|a|that|when)\b", r"\bcan'?t wait\b", r"\bso glad\b", r"\bas always\b",
    r"\bnothing says\b", r"\bwhat a joke\b", r"\byay\b", r"\bsure, let me\b", r"\bsuper helpful\b",
)]


def features(text: str, probs: dict[str, float]) -> dict[str, float]:
    """The cue model's inputs for one text and the model's label probabilities."""
    def logodds(p: float) -> float:
        p = min(max(p, CLIP), 1 - CLIP)
        return math.log(p / (1 - p))

    terms = set(tokenize(text))
    return {
        "model_neg": logodds(probs["negative"]),
        "model_pos": logodds(probs["positive"]),
        "vent": min(CAP, len(terms & VENT) + len(_VENT_MORE.findall(text))),
        "repeat": min(CAP, sum(bool(r.search(text)) for r in _REPEAT)),
        "persist": min(CAP, sum(bool(r.search(text)) for r in _PERSIST)),
        "shout": min(CAP, len(_SHOUT.findall(text))),
        "caps": min(CAP, sum(w not in _ACRONYMS for w in _CAPS.findall(text))),
        "sarcasm": min(CAP, sum(bool(r.search(text)) for r in _SARCASM)),
    }


@dataclass(frozen=True)
class CueModel:
    """P(negative) = sigmoid(bias + sum(weight * feature))."""

    bias: float
    weights: dict[str, float]  # feature -> weight, every name in FEATURES

    def p_negative(self, x: dict[str, float]) -> float:
        z = self.bias + sum(w * x[f] for f, w in self.weights.items())
        return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))

    def combine(self, text: str, probs: dict[str, float]) -> dict[str, float]:
        """Label probabilities with the cues: P(negative) from the regression, the rest in the model's ratio."""
        neg = self.p_negative(features(text, probs))
        rest = probs["positive"] + probs["neutral"]
        share = probs["positive"] / rest if rest > 0 else 0.5
        return {"positive": (1 - neg) * share, "neutral": (1 - neg) * (1 - share), "negative": neg}


def parse_cues(text: str, source: str) -> CueModel:
    """A cues file: 'feature<TAB>weight' rows, one per name in FEATURES plus 'bias'; '#' starts a comment."""
    got: dict[str, float] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = [c.strip() for c in line.split("\t")]
        where = f"{source} line {n}"
        if len(cols) != 2:
            raise ValueError(f"{where}: want 'feature<TAB>weight', got {line!r}")
        name, value = cols
        if name != "bias" and name not in FEATURES:
            raise ValueError(f"{where}: unknown feature {name!r}; known: bias, {', '.join(FEATURES)}")
        if name in got:
            raise ValueError(f"{where}: {name!r} is given twice")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{where}: the weight of {name!r} is not a number: {value!r}") from None
        if not math.isfinite(weight):
            raise ValueError(f"{where}: the weight of {name!r} must be finite, got {value!r}")
        got[name] = weight
    missing = [f for f in ("bias", *FEATURES) if f not in got]
    if missing:
        raise ValueError(f"{source} has no weight for {', '.join(missing)} (refit with bench/fit_gate_cues.py)")
    return CueModel(got.pop("bias"), {f: got[f] for f in FEATURES})
