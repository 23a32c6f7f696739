"""Clean and validate user text at the boundary, before it reaches a model or an index."""
from __future__ import annotations

import re
import unicodedata

from indexer.tokenize import detect_lang as language  # noqa: F401  (one language rule for everything)
from kbgate.errors import BadInput, TooLarge

SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


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
