"""Values in text (numbers with their units, times, codes) and whether a passage states them.

`values(text)` finds what a right answer must copy exactly: 15 天, ¥1,500, 10:00, E02,
AUTH-403, 3 working days, 10 个工作日, ext. 8000, and links (https://id.acme.example/reset,
mail addresses, host names), compared without scheme. Both sides are normalised the same
way first: full-width forms (NFKC), thousands separators (1,500 -> 1500), Chinese
numerals before a unit or measure word (十五天 -> 15 天, 两个工作日 -> 2 个工作日) and
English number words (three days -> 3 days; "one" only before a unit, it is also a pronoun).
Units fall into classes that cross the two languages (个工作日 = working days).

Not handled: dates written differently (July 1 vs 7 月 1 日), arithmetic, ordinals
spelled out (第三), values split across a line break.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# (class, pattern) in match order: "working days" before "days", 个月 before 月
UNITS = [
    ("workday", r"个?工作日|working[ -]days?|business[ -]days?|workdays?"),
    ("day", r"个?自然日|天|日|calendar[ -]days?|days?"),
    ("week", r"个?(?:星期|礼拜)|周|weeks?"),
    ("month", r"个月|月|months?"),
    ("year", r"周岁|岁|年|years?"),
    ("hour", r"个?小时|hours?|hrs?"),
    ("minute", r"分钟|minutes?|mins?"),
    ("second", r"秒|seconds?|secs?"),
    ("percent", r"%|percent|per cent"),
    ("usd", r"美元|美金|usd|us dollars?|dollars?"),  # before money: 60 美元 is not 60 元
    ("money", r"元|块|rmb|cny|yuan"),
    ("times", r"次|times"),
    ("people", r"人|名|位|员工|people|persons?|employees?|staff|members?|colleagues?"),
]
_UNIT = re.compile("|".join(f"(?P<{c}>{p})" for c, p in UNITS), re.I)
_UNIT_AFTER = "|".join(p for _, p in UNITS)
_NUM = r"\d+(?:\.\d+)?"
_QUANTITY = re.compile(
    rf"(?<![A-Za-z0-9_.])(?P<cur>[¥$]|us\$\s*|usd\s*|rmb\s*|cny\s*)?(?P<a>{_NUM})(?:\s*(?:-|–|—|~|至|到|to)\s*(?P<b>{_NUM}))?"
    rf"(?:\s*(?P<unit>{_UNIT_AFTER})(?![a-z]))?", re.I)
_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\[\]`'\"“”，。；、]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|"
                  r"(?<![\w.@/-])[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:example|internal|local|corp|com|net|org|io|cn)"
                  r"(?![\w-])(?:/[^\s<>()\[\]`'\"“”，。；、]*)?", re.IGNORECASE)
_TIME = re.compile(r"(?<![\d.])(\d{1,2})[:：](\d{2})(?!\d)")
_DOTTED = re.compile(r"(?<![A-Za-z0-9_.])\d+(?:\.\d+){2,}(?:/\d+)?(?![A-Za-z0-9_])"  # 10.10.0.53, 1.2.3
                     r"|(?<![A-Za-z0-9_-])\d+(?:-\d+){2,}(?![A-Za-z0-9_-])")  # 400-820-8820
_CODE = re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])"  # letters and digits: E02
                   r"[A-Za-z0-9]+(?:[-_.][A-Za-z0-9]+)*(?![A-Za-z0-9_-])")
_FUSED = re.compile(r"^(\d+(?:\.\d+)?)([a-z]+)$", re.I)  # 5GB, 2.4GHz, 3rd: a number with a word stuck on
_THOUSANDS = re.compile(r"(?<=\d)[,，](?=\d{3}(?!\d))")
_CITATION = re.compile(r"\[\d{1,2}\]")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]\s+)?\d{1,2}[.)、]\s+", re.M)

_ZH_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_NUMERAL = re.compile(r"(?<![零〇一二两三四五六七八九十百千])([零〇一二两三四五六七八九十百千]+)(?=\s*(?:"
                         r"个|天|日|年|周|月|小时|分钟|工作日|次|元|块|人|名|位|岁|星期|礼拜|秒|倍|步|张|份|项|条))")
_EN_NUMBER = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                         "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
                                         .split())}
_EN_NUMBER.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                   "ninety": 90, "hundred": 100})
_EN_WORD = re.compile(r"\b(" + "|".join(w for w in _EN_NUMBER if w != "one") + r")\b|\bone\b(?=\s+(?:"
                      + _UNIT_AFTER + r")\b)", re.I)


def zh_number(s: str) -> int | None:
    """十五 -> 15, 二十 -> 20, 一百零五 -> 105, 两 -> 2; None for what is not a plain numeral."""
    total, cur = 0, 0
    for ch in s:
        if ch in _ZH_DIGIT:
            cur = _ZH_DIGIT[ch]
        elif ch in "十百千":
            scale = {"十": 10, "百": 100, "千": 1000}[ch]
            total += (cur or 1) * scale
            cur = 0
        else:
            return None
    return total + cur


def normalise(text: str) -> str:
    """Full-width to ASCII, no thousands separators, numerals before units as digits."""
    text = unicodedata.normalize("NFKC", text)
    text = _THOUSANDS.sub("", text)
    text = _ZH_NUMERAL.sub(lambda m: f"{zh_number(m.group(1))}" if zh_number(m.group(1)) is not None
                           else m.group(1), text)
    return _EN_WORD.sub(lambda m: str(_EN_NUMBER[m.group(0).lower()]), text)


@dataclass(frozen=True)
class Value:
    kind: str  # "num" | "time" | "code"
    text: str  # canonical: "15", "9:00", "auth-403"
    unit: str | None = None  # a class of UNITS for numbers; None when no unit follows

    def __str__(self) -> str:
        return f"{self.text} {self.unit}" if self.unit else self.text


def _unit_class(word: str | None) -> str | None:
    if not word:
        return None
    m = _UNIT.fullmatch(word.strip())
    return next((k for k, v in m.groupdict().items() if v), None) if m else None


def _num(s: str) -> str:
    return str(float(s)).removesuffix(".0")  # 07 -> 7, 7.50 -> 7.5


def _address(url: str) -> str:
    """https://id.acme.example/reset. -> id.acme.example/reset: a link compared without scheme or end punctuation."""
    url = re.sub(r"^(?:https?://)?(?:www\.)?", "", url.lower())
    return url.rstrip(".,;:!?/")


def values(text: str) -> set[Value]:
    """The numbers (with unit classes), times and codes `text` states; citations and list marks are not values."""
    text = normalise(_LIST_MARK.sub("", _CITATION.sub(" ", text)))
    out: set[Value] = set()

    def take(pattern, make):
        nonlocal text
        for m in pattern.finditer(text):
            out.update(make(m))
        text = pattern.sub(" ", text)

    take(_URL, lambda m: [Value("code", _address(m.group(0)))])
    take(_TIME, lambda m: [Value("time", f"{int(m.group(1))}:{m.group(2)}")])
    take(_DOTTED, lambda m: [Value("code", m.group(0))])
    def code(m) -> str:
        f = _FUSED.match(m.group(0))
        if f and (_unit_class(f.group(2)) or f.group(2).lower() in ("st", "nd", "rd", "th")):
            return m.group(0)  # 3days, 2nd: left to the quantity pattern
        out.add(Value("num", _num(f.group(1))) if f else Value("code", m.group(0).lower()))
        return " "

    text = _CODE.sub(code, text)
    for m in _QUANTITY.finditer(text):
        cur = (m.group("cur") or "").strip().lower()
        unit = ("usd" if cur in ("$", "us$", "usd") else "money") if cur else _unit_class(m.group("unit"))
        for n in filter(None, (m.group("a"), m.group("b"))):
            out.add(Value("num", _num(n), unit))
    return out


LENIENT = {"money", "usd", "percent"}  # a table column may carry these units in its header only


def stated(v: Value, pool: set[Value]) -> bool:
    """True when `pool` (a passage's or query's values) states `v`."""
    if v in pool:
        return True
    if v.kind != "num":
        return False
    if v.unit is None:
        return any(p.kind == "num" and p.text == v.text for p in pool)
    return v.unit in LENIENT and Value("num", v.text) in pool


def missing(sentence: str, passage: str, query: str = "") -> list[Value]:
    """Values the sentence states that neither the passage nor the query holds (sorted for messages)."""
    pool = values(passage) | values(query)
    return sorted((v for v in values(sentence) if not stated(v, pool)), key=str)


# What kind of value a question asks for (answer-type matching, as in classic QA): kbgate.decide picks the
# line holding one, kbgate.quotes.check_values quotes no line without one.
DURATION = {"workday", "day", "week", "month", "year", "hour", "minute", "second"}
ASKED = [
    (re.compile(r"几点|几时|what time|\bat what\b", re.I), {"time"}),
    (re.compile(r"多久|多长时间|多长|几天|多少天|几个?月|几周|几个?星期|几年|多少年|第几天|有效期|提前多少|"
                r"\bhow (?:long|soon|often|far in advance)\b|\bhow many (?:\w+ ){0,3}(?:days|weeks|months|years|hours|minutes)\b|"
                r"\bhow (?:many )?days\b", re.I), DURATION),
    (re.compile(r"多少钱|多少元|几块|费用|补贴|津贴|报销.{0,6}多少|多少.{0,4}报|预算|价格|"
                r"\bhow much\b|\b(?:cost|price|fee|allowance|per diem|budget|rate|reimburse\w*)\b", re.I), {"money", "usd"}),
    (re.compile(r"比例|百分之|多少%|\bpercent|%", re.I), {"percent"}),
    (re.compile(r"几个人|多少人|几名|几位|人数|多少(?:员工|同事|名)|"
                r"\bhow many (?:people|persons|employees|staff|members|approv\w+|reviewers)\b", re.I), {"people"}),
    (re.compile(r"几次|多少次|\bhow many times\b", re.I), {"times"}),
    (re.compile(r"分机|电话|号码|\b(?:extension|phone|number to call)\b", re.I), {"phone"}),
]
_MONEY_WORD = re.compile(r"元|¥|\$|rmb|cny|usd", re.I)


def asked_kinds(query: str) -> set[str]:
    """The value kinds a question asks for (unit classes of kbgate.values, "time", "phone"); empty: any."""
    q = normalise(query)
    return set().union(*(kinds for pattern, kinds in ASKED if pattern.search(q)))


def kind_fits(own: set, line: str, kinds: set[str]) -> bool:
    """Whether a line's values (not the question's) include one of the kinds asked for."""
    for v in own:
        if v.kind == "time" and "time" in kinds or v.unit in kinds:
            return True
        if "phone" in kinds and (v.kind == "code" and sum(c.isdigit() for c in v.text) >= 3 or
                                 v.kind == "num" and v.unit is None and len(v.text) >= 3):
            return True
        if v.kind == "num" and v.unit is None and kinds & {"money", "usd"} and _MONEY_WORD.search(line):
            return True  # a table column that carries its unit in the header: "金额（元）: 150"
    return False
