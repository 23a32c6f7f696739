"""Split a page into heading-scoped chunks under a token cap (pure: no I/O, no models).

Each H1-H4 heading starts a section; the chunk keeps the heading path
("VPN 远程访问指南 › 安装客户端") and the section's anchor, made by `slugify`, the one
function the web renderer also uses for heading ids. A section longer than the
cap is packed into pieces at paragraph / list-item boundaries, consecutive
pieces sharing about `overlap` tokens; a paragraph longer than the cap is cut at
sentence ends. A single code block or table bigger than the cap stays whole in
a piece of its own: cutting it would make both halves meaningless, and the
embedder merely truncates the tail.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

from indexer.blocks import Block, Heading, parse, sentences

VERSION = 1  # bump when chunk boundaries or texts change: indexes record it and re-chunk
SEP = " › "
TROUBLE = re.compile(r"故障排查|常见问题|排错|症状|解决步骤|\b(?:troubleshooting|faqs?|symptoms?|fix(?:es)?)\b", re.I)
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9]+")
_SYMBOL = re.compile(r"[^\sA-Za-z0-9\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HTML = re.compile(r"<[^>]+>")
_MARKS = re.compile(r"\*\*|__|[*`]")


@dataclass(frozen=True)
class Chunk:
    id: str  # "it/vpn#安装客户端" (+ "~2", "~3" for later pieces of a long section)
    page: str  # page id, "it/vpn"
    title: str  # page title
    heading: str  # heading path, "VPN 远程访问指南 › 安装客户端"; "" before the first heading
    anchor: str  # slug of the section's heading, "" before the first heading
    text: str  # markdown body of this piece
    type: str  # "troubleshooting", else the page's type or "doc"
    tags: tuple[str, ...]
    hash: str  # sha256 of embed_text
    audience: tuple[str, ...] = ()  # the page's readers (indexer.audience); not in the hash: changing it re-embeds nothing

    @property
    def embed_text(self) -> str:
        """Text given to the embedder and to BM25: `title › heading`, a blank line, the body."""
        return embed_text(self.title, self.heading, self.text)


def embed_text(title: str, heading: str, body: str) -> str:
    """Prefix the body with the page title and heading path (title not repeated when H1 equals it)."""
    if not heading:
        head = title
    elif heading.split(SEP, 1)[0].strip().lower() == title.strip().lower():
        head = heading
    else:
        head = f"{title}{SEP}{heading}"
    return f"{head}\n\n{body}"


def approx_tokens(text: str) -> int:
    """Cheap token estimate: 1 per CJK character or symbol, 1.3 per Latin word."""
    return len(_CJK_CHAR.findall(text)) + len(_SYMBOL.findall(text)) + round(1.3 * len(_WORD.findall(text)))


def plain_heading(text: str) -> str:
    """Drop inline markdown from a heading: links keep their text, emphasis and code marks go."""
    return " ".join(_MARKS.sub("", _HTML.sub("", _LINK.sub(r"\1", text))).split())


def slugify(heading_text: str) -> str:
    """GitHub-style anchor: lower-case, keep letters (CJK too), digits, '-' and '_', spaces -> '-'."""
    t = plain_heading(heading_text).lower()
    return "".join(c for c in t if c.isalnum() or c in "-_ ").replace(" ", "-")


class Slugger:
    """Make unique anchors on one page like GitHub: `faq`, `faq-1`, `faq-2`."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def slug(self, heading_text: str) -> str:
        """Return the next unique slug for this heading text."""
        base = result = slugify(heading_text)
        while result in self.seen:
            self.seen[base] += 1
            result = f"{base}-{self.seen[base]}"
        self.seen[result] = 0
        return result


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]  # plain heading texts, outermost first
    anchor: str
    blocks: tuple[Block, ...]


def split_sections(body: str) -> list[Section]:
    """Group a markdown body's blocks under their H1-H4 headings (H5/H6 stay in the text)."""
    slugger = Slugger()
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    anchor, blocks = "", []
    for el in parse(body):
        if isinstance(el, Heading):
            slug = slugger.slug(el.text)  # every level counts for dedupe, as in the renderer
            if el.level > 4:
                blocks.append(Block("para", f"{'#' * el.level} {el.text}"))
                continue
            if blocks:
                sections.append(Section(tuple(t for _, t in stack), anchor, tuple(blocks)))
            while stack and stack[-1][0] >= el.level:
                stack.pop()
            stack.append((el.level, plain_heading(el.text)))
            anchor, blocks = slug, []
        else:
            blocks.append(el)
    if blocks:
        sections.append(Section(tuple(t for _, t in stack), anchor, tuple(blocks)))
    return sections


def _fit_sentences(text: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Greedily join sentences into parts of at most `budget` tokens (one long sentence stays whole)."""
    parts, cur = [], ""
    for s in sentences(text):
        if cur and count(cur + s) > budget:
            parts.append(cur.strip())
            cur = ""
        cur += s
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _tail(units: list[tuple[Block, int]], overlap: int, count: Callable[[str], int]) -> list[tuple[Block, int]]:
    """Return the trailing blocks (or sentences of the last prose block) worth about `overlap` tokens."""
    out, left = [], overlap
    for b, n in reversed(units[1:] if len(units) > 1 else units):
        if n <= left:
            out.insert(0, (b, n))
            left -= n
            continue
        if b.splittable:
            tail = ""
            for s in reversed(sentences(b.text)):
                if count(s + tail) > left:
                    break
                tail = s + tail
            if tail.strip() and tail.strip() != b.text.strip():
                out.insert(0, (Block(b.kind, tail.strip()), count(tail)))
        break
    return out


def pack(blocks: list[Block], budget: int, overlap: int, count: Callable[[str], int]) -> list[str]:
    """Pack blocks into texts of at most `budget` tokens, consecutive texts overlapping by <= `overlap`."""
    units: list[tuple[Block, int]] = []
    for b in blocks:
        n = count(b.text)
        if n > budget and b.splittable:
            units += [(Block(b.kind, p), count(p)) for p in _fit_sentences(b.text, budget, count)]
        else:
            units.append((b, n))  # code / table over budget: kept whole, see module docstring
    pieces: list[list[tuple[Block, int]]] = []
    cur: list[tuple[Block, int]] = []
    for b, n in units:
        if cur and sum(m for _, m in cur) + n > budget:
            pieces.append(cur)
            tail = _tail(cur, overlap, count) if overlap > 0 else []
            cur = tail if sum(m for _, m in tail) + n <= budget else []
        cur.append((b, n))
    if cur:
        pieces.append(cur)
    return ["\n\n".join(b.text for b, _ in p) for p in pieces]


def is_troubleshooting(page_type: str, heading: str) -> bool:
    """True for troubleshooting pages and for sections whose heading path names a symptom/fix/FAQ."""
    return page_type == "troubleshooting" or TROUBLE.search(heading) is not None


def chunk_page(page, max_tokens: int = 200, overlap: int = 40,
               count_tokens: Callable[[str], int] = approx_tokens) -> list[Chunk]:
    """Split a `Page` (id, title, tags, type, text) into chunks of at most `max_tokens` (see module doc)."""
    chunks = []
    for sec in split_sections(page.text):
        heading = SEP.join(sec.path)
        head = embed_text(page.title, heading, "")
        budget = max(max_tokens - count_tokens(head), max_tokens // 2)
        ctype = "troubleshooting" if is_troubleshooting(page.type, heading) else (page.type or "doc")
        for n, text in enumerate(pack(list(sec.blocks), budget, overlap, count_tokens), 1):
            cid = f"{page.id}#{sec.anchor}" + (f"~{n}" if n > 1 else "")
            digest = hashlib.sha256(embed_text(page.title, heading, text).encode("utf-8")).hexdigest()
            chunks.append(Chunk(cid, page.id, page.title, heading, sec.anchor, text, ctype, tuple(page.tags), digest,
                                tuple(getattr(page, "audience", ()))))
    return chunks
