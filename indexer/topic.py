"""Tell a query's topic terms from its venting: "VPN 根本连不上，折腾一上午了，气死我了！" is about VPN.

Venting words (根本, 折腾, 一上午, 气死, ridiculous, again, seriously) carry most
of a frustrated query's IDF and occur in no wiki page, so counted as terms they
sink both the BM25 rank and the "does the wiki cover this" relevance. This
small lexicon, in the tokenizer's own term forms, lists words that say how the
user feels or how long it has gone on, never what it is about. Words that can
be a topic ("never arrives", "broken", "locked", "three days", 三天) are deliberately not in it.
"""
from __future__ import annotations

from indexer.tokenize import tokenize

VENT_ZH = frozenset("""
根本 完全 简直 实在 真是 真的 到底 究竟 居然 竟然 老是 总是 又 又是 还是 一直 每次 天天 反复 好几次
一次次 几次 折腾 折腾半天 搞 搞了 弄 弄了 一上 上午 一上午 下午 一下午 一晚 一晚上 晚上 整天 一整天
半天 好久 气死 气死我 气死我了 烦死 烦死了 烦 烦人 烦躁 郁闷 崩溃 无语 受够 受够了 受不了 抓狂 急死
急死了 着急 急 恶心 头疼 头大 垃圾 破 坑 坑爹 靠 我靠 妈的 尼玛 什么鬼 搞什么 怎么回事 离谱 太离谱
无奈 失望 生气 愤怒 心累 累 服了 醉了 真服了 谢谢 求求 求助 救命 拜托 赶紧 马上 立刻 快点 急用 紧急
今天 今天上午 早上 一早
""".split())
VENT_EN = frozenset(tokenize("""
ridiculous again seriously serious annoying annoyed annoy frustrating frustrated frustration frustrate
hate hated stupid useless terrible awful horrible damn damned dammit wtf ugh argh omg sick tired fed
literally totally completely absolutely insane crazy joke nightmare sucks suck pathetic unbelievable
whole morning afternoon evening forever wasted waste
still keep keeps kept always constantly every single yet another annoyingly honestly
urgent urgently asap immediately help thanks thank hell god jesus lol
""") + ["again", "still"])


def is_venting(term: str) -> bool:
    """True for a term that says how the user feels, not what the query is about."""
    return term in VENT_ZH or term in VENT_EN


def topic_terms(tokens: list[str]) -> list[str]:
    """Drop venting terms from tokenized query terms; if nothing is left, keep them all (an all-venting query)."""
    kept = [t for t in tokens if not is_venting(t)]
    return kept or list(tokens)
