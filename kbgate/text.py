"""Clean and validate user text at the boundary, before it reaches a model or an index."""
from __future__ import annotations

import re
import unicodedata

from kbgate.errors import BadInput, TooLarge

SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def strip_special(text: str) -> str:
    """Remove chat-control tokens like <|im_end|> from untrusted text before it enters a prompt."""
    return SPECIAL.sub("", text)


def clean_text(text: str) -> str:
    """Drop control characters, lone surrogates and chat-control tokens; normalize to NFC."""
    text = _SURROGATE.sub("", text)
    text = _CONTROL.sub(" ", text)
    return unicodedata.normalize("NFC", strip_special(text)).strip()


def check_query(query, max_chars: int, field: str = "query") -> str:
    """Return the cleaned query or raise a clear 4xx error naming what is wrong."""
    if query is None:
        raise BadInput(f"{field} is required")
    if not isinstance(query, str):
        raise BadInput(f"{field} must be a string, got {type(query).__name__}")
    if len(query) > max_chars:
        raise TooLarge(f"{field} is longer than {max_chars:,} characters ({len(query):,}); shorten it")
    cleaned = clean_text(query)
    if not cleaned:
        raise BadInput(f"{field} is empty")
    return cleaned


def language(text: str) -> str:
    """'zh' when CJK characters make up a fair share of the letters, else 'en'."""
    cjk = len(_CJK.findall(text))
    latin_words = len(re.findall(r"[A-Za-z]+", text))
    return "zh" if cjk and cjk >= latin_words else "en"
