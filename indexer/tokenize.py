"""Turn Chinese, English or mixed text into BM25 terms, and guess a text's language.

Chinese runs go through jieba's search mode (`lcut_for_search`, which also emits
the dictionary sub-words of long words, so 打印机 matches 打印); Latin runs become
lower-cased word tokens with a light plural strip (printers -> printer). Stop
words and punctuation are dropped.

Not handled: real stemming, traditional/simplified folding, languages other
than Chinese and English (their words pass through as lower-cased tokens).
"""
from __future__ import annotations

import logging
import re
import threading

VERSION = 2  # bump when tokens change: indexes record it and rebuild BM25 on a mismatch
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUNS = re.compile(rf"[{_CJK}]+|[A-Za-z0-9][A-Za-z0-9_.\-+#'’]*[A-Za-z0-9+#]|[A-Za-z0-9]")
_CONTRACTION = re.compile(r"(?i)n['’]t$|['’](?:s|re|ve|ll|d|m)$")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_SPLIT = re.compile(r"[_.\-]+")

STOP_EN = frozenset("""
a an and are as at be been but by can could did do does doing for from had has have how i if in into
is it its me my no not of on or our so than that the their them then there these they this to too
us was we were what when where which who why will with would you your yours get got i'm i've it's
please should shall may might any some all just about after before also am up down out off over very
s t d ll re ve m much many
""".split())
STOP_ZH = frozenset("""
的 了 是 在 我 你 他 她 它 我们 你们 他们 和 与 及 或 或者 吗 呢 吧 啊 呀 嘛 么 怎么 怎么办 怎样 怎么样 如何
什么 为什么 哪 哪里 哪儿 哪个 能 能否 可以 可 要 需要 应该 一个 这 那 这个 那个 这样 那样 有 就 还 也 都 请 把
被 给 对 从 到 会 让 做 得 地 着 过 又 再 该 用 个 之 其 如果 但是 但 而 并 等 时候 一下 现在 已经 很 比较
多少 多久 多大 多长 几 几个 几天 几点 几年 谁 是否 有没有 能不能 可不可以 一直 老是 总是 还是 就是
""".split())

_jieba = None
_jieba_lock = threading.Lock()


def _seg():
    """Initialise jieba once (quietly) and return it."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                import jieba
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _jieba = jieba
    return _jieba


def _norm_en(word: str) -> str:
    """Lower-case and strip a plain English plural (no stemming beyond that)."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def tokenize(text: str) -> list[str]:
    """Split text into BM25 terms (jieba for Chinese runs, words for the rest), stop words dropped."""
    out: list[str] = []
    for m in _RUNS.finditer(text):
        run = m.group()
        if _CJK_CHAR.match(run):
            for t in _seg().lcut_for_search(run):
                if t not in STOP_ZH:
                    out.append(t)
        else:
            if "'" in run or "’" in run:
                if re.search(r"(?i)n['’]t$", run):
                    continue  # don't, won't, isn't: negated auxiliaries, no topic
                run = _CONTRACTION.sub("", run)  # doctor's -> doctor, it's -> it
            parts = _SPLIT.split(run)
            # a compound (vpn-sh.acme.example, AUTH-403) counts whole and by its parts
            for w in ([run] if len(parts) == 1 else [run.lower(), *parts]):
                if w.lower() in STOP_EN:
                    continue  # checked before the plural strip too: "does" is not "doe"
                w = _norm_en(w)
                if w and w not in STOP_EN:
                    out.append(w)
    return out


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph."""
    return _CJK_CHAR.match(ch) is not None


def detect_lang(text: str) -> str:
    """Return "zh" when CJK characters make up at least 40% of the text's words, else "en"."""
    cjk = len(_CJK_CHAR.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    if cjk == 0:
        return "en"
    return "zh" if cjk / (cjk + latin) >= 0.4 else "en"
