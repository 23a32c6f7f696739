"""Markdown (wiki pages, model answers) to HTML that is safe to put in a page.

Two locks, either enough on its own: markdown-it's "js-default" preset never
passes raw HTML through (it is escaped as text), and nh3 then keeps only an
allow-list of tags and attributes (no `img`, no `style`, no event handlers;
`a[href]` only http, https, mailto or relative, with rel="noopener noreferrer").

Heading ids are the chunker's anchors (`indexer.chunking.Slugger` over the
headings `indexer.blocks.parse` sees), so a source link `/docs/it/vpn#安装客户端`
lands on its section. Relative `.md` links between wiki pages become `/docs/<id>`;
a link to a page the reader may not read (or one that does not exist: they must look
alike) keeps its text and loses its link, so a readable page does not give away a
restricted page's id.

Not handled: headings the chunker does not see (setext `===` underlines,
headings inside lists or quotes) get ids of their own that no source links to.
"""
from __future__ import annotations

import posixpath
import re
from urllib.parse import quote, unquote, urlsplit

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

from indexer.blocks import Heading, parse
from indexer.chunking import Slugger, slugify
from kbgate.grounding import CITATION

TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "a", "strong", "em", "s", "del", "code", "pre",
        "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td"}
ATTRIBUTES = {"a": {"href", "title", "class"}, "ol": {"start"}, "code": {"class"}, "th": {"class"},
              "td": {"class"}, **{f"h{i}": {"id"} for i in range(1, 7)}}
CLASSES = {"a": {"cite"}, "th": {"al-left", "al-center", "al-right"}, "td": {"al-left", "al-center", "al-right"}}
_LANG_CLASS = re.compile(r"^language-[\w+-]{1,30}$")
_ALIGN = re.compile(r"text-align:(left|center|right)")


def sanitize(html: str) -> str:
    """Keep only the allow-listed tags and attributes (the last line of defence)."""
    return nh3.clean(html, tags=TAGS, clean_content_tags={"script", "style"}, attributes=ATTRIBUTES,
                     url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer",
                     attribute_filter=_keep_attribute)


def _keep_attribute(tag: str, attr: str, value: str):
    if attr == "class":
        if tag == "code":
            return value if _LANG_CLASS.match(value) else None
        return value if value in CLASSES.get(tag, ()) else None
    return value


def _markdown(breaks: bool = False) -> MarkdownIt:
    return MarkdownIt("js-default", {"html": False, "linkify": False, "typographer": False, "breaks": breaks})


def docs_href(page_id: str, anchor: str = "") -> str:
    """The page's own URL for a wiki page (and section)."""
    return "/docs/" + quote(page_id, safe="/") + (f"#{quote(anchor, safe='')}" if anchor else "")


def wiki_link(href: str, page_id: str) -> str | None:
    """Rewrite a relative `.md` link on page `page_id` to /docs/<id>; None for one leaving the wiki."""
    parts = urlsplit(href)
    path = unquote(parts.path)
    if parts.scheme or parts.netloc or not path.endswith(".md"):
        return href
    base = "" if path.startswith("/") else posixpath.dirname(page_id)
    target = posixpath.normpath(posixpath.join(base, path.lstrip("/")))
    if target.startswith("..") or target.startswith("/"):
        return None
    return docs_href(target[:-3], unquote(parts.fragment))


def _cells_to_classes(tokens: list[Token]) -> None:
    """Table alignment comes as style="" (blocked by the CSP); turn it into a class."""
    for t in tokens:
        if t.type in ("th_open", "td_open") and t.attrs.get("style"):
            m = _ALIGN.search(str(t.attrs.pop("style")))
            if m:
                t.attrs["class"] = f"al-{m.group(1)}"


def heading_ids(body: str) -> list[tuple[str, str]]:
    """(heading text, anchor) for each heading, exactly as the chunker names its sections."""
    slugger = Slugger()
    return [(el.text, slugger.slug(el.text)) for el in parse(body) if isinstance(el, Heading)]


def _anchor_headings(tokens: list[Token], body: str) -> None:
    """Give each heading the chunker's anchor, matching headings in order by their text."""
    expected = heading_ids(body)
    used = {slug for _, slug in expected}
    pos = 0
    for i, t in enumerate(tokens):
        if t.type != "heading_open":
            continue
        text = tokens[i + 1].content.strip()
        found = next((j for j in range(pos, len(expected)) if expected[j][0].strip() == text), None)
        if found is not None:
            t.attrs["id"], pos = expected[found][1], found + 1
            continue
        slug, n = slugify(text) or "section", 0
        while slug in used:  # a heading only markdown-it sees: unique, but nothing links to it
            n += 1
            slug = f"{slugify(text) or 'section'}-x{n}"
        used.add(slug)
        t.attrs["id"] = slug


def link_target(href: str, page_id: str, base_url: str = "") -> str | None:
    """The wiki page id a link on page `page_id` leads to, as the browser resolves it; None off the wiki."""
    parts = urlsplit(href)
    path = unquote(parts.path)
    if parts.scheme or parts.netloc:  # absolute: ours only when it is the wiki's own base URL
        base = urlsplit(base_url) if base_url else None
        root = base.path.rstrip("/") if base else ""
        if not base or (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()) \
                or not path.startswith(root + "/docs/"):
            return None
        path = path[len(root):]
    elif not path:
        return None  # '#anchor', '?lang=en': this page
    elif not path.startswith("/"):
        path = posixpath.join(posixpath.dirname("/docs/" + page_id), path)
    path = posixpath.normpath(path)
    if not path.startswith("/docs/"):
        return None
    return path[len("/docs/"):] or None


def _rewrite_links(tokens: list[Token], page_id: str, may_link=None, base_url: str = "") -> None:
    """Point .md links at /docs/<id>; an image becomes a link to it (no `img`: it would load by itself).

    With `may_link(page_id) -> bool`, a link to a wiki page the reader may not open (restricted,
    or missing: the two must look alike) loses its tags and keeps its text.
    """
    def hidden(href: str) -> bool:
        target = link_target(href, page_id, base_url) if may_link else None
        return target is not None and not may_link(target)

    for t in tokens:
        if not t.children:
            continue
        children, hiding = [], False
        for child in t.children:
            if child.type == "image":
                src, alt = str(child.attrs.get("src", "")), child.content or "image"
                children += [_text(alt)] if hidden(src) else [
                    Token("link_open", "a", 1, attrs={"href": src}), _text(alt), Token("link_close", "a", -1)]
            elif child.type == "link_open":
                href = wiki_link(str(child.attrs.get("href", "")), page_id)
                if href is not None and hidden(href):
                    hiding = True  # links do not nest in markdown: the next link_close is this one's
                    continue
                if href is None:
                    child.attrs.pop("href", None)
                else:
                    child.attrs["href"] = href
                children.append(child)
            elif child.type == "link_close" and hiding:
                hiding = False
            else:
                children.append(child)
        t.children = children


_MD_LINK = re.compile(r"(!?)\[((?:[^\[\]\\\n]|\\.)*)\]\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"
                      r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^)\n]*\)))?\s*\)")
_MD_REF = re.compile(r"^ {0,3}\[(?:[^\]\\\n]|\\.)+\]:[ \t]*(<[^>\n]*>|\S+).*$", re.M)
_MD_AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*)>")


def redact_links(markdown: str, page_id: str, may_link, base_url: str = "") -> str:
    """The markdown with each link to a page the reader may not open cut down to its text (for raw-text APIs).

    Inline links and images keep their text; reference definitions and autolinks to such a
    page go (in code too: it errs on hiding). A URL typed out as plain text is not found.
    """
    def hidden(href: str) -> bool:
        href = href.strip().removeprefix("<").removesuffix(">")
        target = link_target(wiki_link(href, page_id) or href, page_id, base_url)
        return target is not None and not may_link(target)

    out = _MD_LINK.sub(lambda m: m.group(2) if hidden(m.group(3)) else m.group(0), markdown)
    out = _MD_REF.sub(lambda m: "" if hidden(m.group(1)) else m.group(0), out)
    return _MD_AUTOLINK.sub(lambda m: "" if hidden(m.group(1)) else m.group(0), out)


def render_page(body: str, page_id: str, may_link=None, base_url: str = "") -> str:
    """Render a wiki page's markdown body to safe HTML with anchored headings and /docs links.

    `may_link(target_id) -> bool`: the reader's rights; a link to a page it may not read is text only.
    """
    md = _markdown()
    tokens = md.parse(body)
    _anchor_headings(tokens, body)
    _rewrite_links(tokens, page_id, may_link, base_url)
    _cells_to_classes(tokens)
    return sanitize(md.renderer.render(tokens, md.options, {}))


def _cite(children: list[Token], hrefs: dict[int, str]) -> list[Token]:
    """Split text tokens so each valid `[n]` becomes a link to source n (never inside a link)."""
    out, depth = [], 0
    for tok in children:
        depth += tok.type == "link_open"
        depth -= tok.type == "link_close"
        if tok.type != "text" or depth or not CITATION.search(tok.content):
            out.append(tok)
            continue
        last = 0
        for m in CITATION.finditer(tok.content):
            href = hrefs.get(int(m.group(1)))
            if href is None:
                continue
            if m.start() > last:
                out.append(_text(tok.content[last:m.start()]))
            link = Token("link_open", "a", 1, attrs={"href": href, "class": "cite"})
            out += [link, _text(m.group(0)), Token("link_close", "a", -1)]
            last = m.end()
        if last < len(tok.content):
            out.append(_text(tok.content[last:]))
    return out


def _text(s: str) -> Token:
    t = Token("text", "", 0)
    t.content = s
    return t


def render_answer(answer: str, sources: list[dict]) -> str:
    """Render a model answer to safe HTML; `[n]` links to source n's page section; newlines stay."""
    md = _markdown(breaks=True)
    tokens = md.parse(answer)
    hrefs = {s["n"]: docs_href(s["page"], s.get("anchor", "")) for s in sources}
    for t in tokens:
        if t.type == "inline" and t.children:
            t.children = _cite(t.children, hrefs)
    _cells_to_classes(tokens)
    return sanitize(md.renderer.render(tokens, md.options, {}))
