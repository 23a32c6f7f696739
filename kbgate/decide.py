"""Quote the wiki's line for a question that asks for a value: "陪产假可以休几天？", "daily per diem?".

The 0.5B model often answers such a question around the value ("上海公司提供生育津贴"),
or with a neighbouring row's value ("200 元" for the weekend, where the weekend row
says 400 元). `kbgate.quotes.check_values` catches a wrong value the reply states, but
not a value it leaves out. So for a value question the line that holds the answer is
found in the cited passages and quoted first, unless the reply already states one of
that line's values: the user always sees the wiki's own number, cited.

The line: among the passages' lines that state a value, a table row the question names
(陪产假, or a range holding its quantity: 工作三年 -> 满 1 年不满 10 年) first, then the
most topic terms shared with the question. An English question on a Chinese page shares
no term with a line; there the terms are compared on the dictionary's English side
(`glossed`, indexer.gloss: 北京 员工 700 元 shares "beijing" and "employee" with "max hotel
rate for an employee travelling to Beijing"), and a bilingual embedder's cosine
(`similar`) decides among the lines that share as many.
"""
from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

from indexer.tokenize import detect_lang, is_cjk
from kbgate.quotes import _quantities, _quote, _terms, _topic, deciding_line, in_range, is_yes_no, passage_lines
from kbgate.values import asked_kinds, kind_fits, normalise, stated, values

# questions whose answer is a number, amount, duration, time, date or code
ASKS_ZH = re.compile(r"多少|多久|多长|多大|多高|多远|多晚|多早|几[天个次点号月年周岁张人位成倍小分级]|第几|"
                     r"什么时候|啥时候|何时|哪天|哪一天|几时|截止|期限|上限|限额|标准是|额度|电话|分机|号码|地址|网址")
ASKS_EN = re.compile(r"\bhow (?:many|much|long|far|often|soon|late|early|old|big|high)\b|\bwhat time\b|\bwhen\b|"
                     r"\bwhich (?:day|date|number|extension)\b|\bdeadline\b|\bby when\b|"
                     r"\b(?:max(?:imum)?|minimum|limit|cap|rate|allowance|per diem|budget|fee|cost|price|"
                     r"amount|number|extension|phone|address|url)\b", re.I)

Similar = Callable[[str, list[str]], Sequence[float]]  # (query, lines) -> one cosine per line
Glossed = Callable[[str], set]  # text -> its terms on the dictionary's English side (indexer.gloss)


def asks_value(query: str) -> bool:
    """Whether the question asks for a value a right answer must state."""
    q = normalise(query)
    return bool(ASKS_ZH.search(q) or ASKS_EN.search(q))


class Line(NamedTuple):
    named: int  # how strongly the question names this table row (kbgate.decide.names)
    fits: bool  # holds a value of the kind asked for
    shared: int  # topic terms shared with the question
    order: int  # the passage's rank (0 = best)
    text: str
    n: int  # the passage's number


def value_line(query: str, passages: list, similar: Similar | None = None,
               glossed: Glossed | None = None) -> tuple[str, int] | None:
    """(line, passage n) of the line that answers a value question, or None (no line with a value)."""
    topic, nums, low, kinds = _topic(query), _quantities(query), normalise(query).lower(), asked_kinds(query)
    asked = values(query)
    zh_query = detect_lang(query) == "zh"
    q_gloss: set | None = None  # the question's English side, looked up once a line in the other language needs it
    cands = []
    for order, p in enumerate(passages):
        for key, line in passage_lines(p.text):
            own = values(line) - asked  # the question's own numbers answer nothing
            if own:
                named = (names(key, low) or 2 * in_range(key, nums)) if key else 0
                shared = len(topic & _terms(line))
                if glossed is not None and (detect_lang(line) == "zh") != zh_query:  # across languages
                    q_gloss = glossed(query) if q_gloss is None else q_gloss
                    # on the English side, with the section's own heading (住宿标准（每晚）: "night")
                    heading = (getattr(p, "heading", "") or "").rsplit("›", 1)[-1]
                    shared = max(shared, len(q_gloss & glossed(f"{heading} {line}")))
                cands.append(Line(named, kind_fits(own, line, kinds), shared, order, line, p.n))
    if kinds:  # a line with the kind of value asked for, or none: "how much" is not answered by a date
        cands = [c for c in cands if c.fits]
    if not cands or (similar is None and not any(c.named or c.shared for c in cands)):
        return None  # no line, or nothing ties one to the question (another language, no embedder)

    def lead(c: Line):
        # one shared word ("days") ties an English line of a wrong page as well as the right Chinese row:
        # words lead from two up; below that the cosine decides
        return c.named, c.shared if c.shared >= 2 else 0
    top = max(map(lead, cands))
    cands = [c for c in cands if lead(c) == top]  # only these can win: the embedder compares just them
    cos = list(similar(query, [c.text for c in cands])) if similar is not None and len(cands) > 1 else \
        [0.0] * len(cands)
    best = cands[max(range(len(cands)), key=lambda i: (cos[i], cands[i].shared, -cands[i].order))]
    return best.text, best.n


def names(key: str, query: str) -> int:
    """How strongly the question names a table row by its key: the length of the longest run of the key's
    characters in the question, from two ("陪产" names 陪产假 with 2, 陪产假 itself with 3; 假 alone names
    nothing), 0 if none. The longer match wins: "陪产假有几天" names 陪产假 (3) before 产假 (2)."""
    key = normalise(key).lower()
    if len(key) >= 2 and key in query:
        return len(key)
    best = 0
    for i in range(len(key) - 1):
        j = i + 2
        while j <= len(key) and all(is_cjk(c) for c in key[i:j]) and key[i:j] in query:
            best, j = max(best, j - i), j + 1
    return best



def quoted_line(found: tuple[str, int], lang: str) -> str:
    """The line as the reply's own quoted sentence, cited."""
    return _quote(found[0], found[1], lang) + ("。" if lang == "zh" else ".")


def quote_value(text: str, passages: list, query: str, lang: str,
                similar: Similar | None = None, at: int = 0, glossed: Glossed | None = None) -> tuple[str, bool]:
    """For a value question: the answering line quoted before the reply's line `at` (0: first), unless the
    reply states one of its values. Returns (text, changed). Passages: the cited ones, best first."""
    if not passages or not asks_value(query):
        return text, False
    found = value_line(query, passages, similar, glossed)
    if not found:
        return text, False
    own = values(found[0]) - values(query)
    if any(stated(v, own) for v in values(text)):
        return text, False
    lines = text.strip().split("\n")
    return "\n".join(lines[:at] + [quoted_line(found, lang)] + lines[at:]).strip(), True


def extract(query: str, passages: list, lang: str, similar: Similar | None = None,
            glossed: Glossed | None = None) -> str | None:
    """A reply of the wiki's own line, quoted and cited, for a yes/no or value question (None: neither,
    or no line decides it): what the user gets when the model's reply is not grounded."""
    if is_yes_no(query):
        found = deciding_line(query, passages)
    elif asks_value(query):
        found = value_line(query, passages, similar, glossed)
    else:
        return None
    return quoted_line(found, lang) if found else None
