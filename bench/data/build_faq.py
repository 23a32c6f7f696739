"""Build held-out retrieval sets from FAQ documents that ship in Debian packages.

Each set is a folder of markdown pages, one page per answer with the question
removed, and a JSON-lines query file whose queries are the FAQ's own questions:

    bench/data/<set>/pages/<chapter>/<n>.md   front matter `title:` + the answer
    bench/data/<set>/queries.jsonl            {"query", "page", "lang", "split"}

Sets (source package -> set):
    debian-faq-zh-cn -> debian-faq-zh   (Debian FAQ, Simplified Chinese)
    debian-faq       -> debian-faq-en   (the same FAQ in English; same page ids)
    python3.11-doc   -> python-faq-en   (Python 3.11 FAQ pages, Doc/faq/*.html)
and one cross-language set made of the two Debian ones:
    debian-faq-zh2en: the Chinese questions asked of the English pages.

Page ids are neutral (`<chapter file>/<section number>`): a slug of the question
would leak it into the id. The title is the chapter's name and the section's
number, never the question. `split` is "tune" or "heldout" by a hash of the
query text, so the halves never change when the script is re-run.

Install the sources first:  apt-get install debian-faq debian-faq-zh-cn python3-doc
Run:  python bench/data/build_faq.py            (rewrites bench/data/<set>/)
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEBIAN_FAQ = Path("/usr/share/doc/debian/FAQ")
PYTHON_FAQ = Path("/usr/share/doc/python3.11/html/faq")
VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr"}
SKIP = {"script", "style", "head", "img"}
MIN_ANSWER = 40  # weighted characters: shorter "answers" ("See the next question.") point elsewhere


# --- a small DOM from html.parser -------------------------------------------------------

@dataclass
class Node:
    tag: str
    attrs: dict = field(default_factory=dict)
    children: list = field(default_factory=list)  # Node or str

    def cls(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root")
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        # Pop to the matching open tag; a stray end tag is ignored (tolerant of sloppy HTML).
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse_html(path: Path) -> Node:
    """Parse an HTML file into a Node tree."""
    b = _Builder()
    b.feed(path.read_text(encoding="utf-8"))
    b.close()
    return b.root


# --- HTML -> markdown ------------------------------------------------------------------

def _inline(n, out: list[str]) -> None:
    if isinstance(n, str):
        out.append(n)
        return
    if n.tag in SKIP or "headerlink" in n.cls():
        return
    if n.tag == "br":
        out.append("\n")
        return
    if n.tag in ("code", "tt") or (n.tag == "span" and n.cls() & {"literal", "command", "filename"}):
        t = re.sub(r"\s+", " ", n.text()).strip()
        if t:
            out.append(f"`{t}`")
        return
    inner: list[str] = []
    for c in n.children:
        _inline(c, inner)
    s = "".join(inner)
    if n.tag in ("em", "i") and s.strip():
        out.append(f"*{s.strip()}*")
    elif n.tag in ("strong", "b") and s.strip():
        out.append(f"**{s.strip()}**")
    elif n.tag == "a" and n.attrs.get("href", "").startswith(("http://", "https://", "ftp://")) and s.strip():
        out.append(f"[{s.strip()}]({n.attrs['href']})")
    else:
        out.append(s)


def inline_text(n) -> str:
    """Render a node's inline content as one line of markdown."""
    out: list[str] = []
    _inline(n, out)
    s = "".join(out)
    s = re.sub(r"[ \t\r\f\v]*\n[ \t\r\f\v]*", "\n", s)
    # Chinese text wraps lines between characters: a newline there is not a space.
    s = re.sub(r"(?<=[\u3000-\u9fff\uff00-\uffef])\n(?=[\u3000-\u9fff\uff00-\uffef])", "", s)
    return re.sub(r"\s+", " ", s).strip()


BLOCK = {"p", "div", "ul", "ol", "li", "pre", "dl", "dt", "dd", "blockquote", "table", "section",
         "h1", "h2", "h3", "h4", "h5", "h6", "nav", "figure", "aside"}


def _has_block(n: Node) -> bool:
    return any(isinstance(c, Node) and (c.tag in BLOCK or _has_block(c)) for c in n.children)


def _table(n: Node) -> list[str]:
    rows = [r for r in n.iter() if r.tag == "tr"]
    cells = [[inline_text(c).replace("|", "\\|") for c in r.children if isinstance(c, Node) and c.tag in ("td", "th")]
             for r in rows]
    cells = [r for r in cells if r]
    if not cells:
        return []
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return ["\n".join(lines)]


def blocks(nodes, depth: int = 0) -> list[str]:
    """Render a list of nodes as markdown blocks (paragraphs, lists, code, tables)."""
    out: list[str] = []
    run: list = []  # inline content between blocks

    def flush():
        if run:
            t = inline_text(Node("span", children=list(run)))
            if t:
                out.append(t)
            run.clear()

    for n in nodes:
        if isinstance(n, str) or (n.tag not in BLOCK and not _has_block(n)):
            run.append(n)
            continue
        flush()
        if n.tag in SKIP or n.cls() & {"toc", "contents", "navheader", "navfooter", "titlepage"} or n.tag == "nav":
            continue
        if n.tag == "pre":
            code = n.text().strip("\n")
            if code.strip():
                out.append("```\n" + code + "\n```")
        elif n.tag in ("ul", "ol"):
            items = [c for c in n.children if isinstance(c, Node) and c.tag == "li"]
            for i, li in enumerate(items, 1):
                mark = f"{i}. " if n.tag == "ol" else "- "
                body = blocks(li.children, depth + 1)
                if not body:
                    continue
                pad = " " * len(mark)
                text = "\n\n".join(body).replace("\n", "\n" + pad)
                out.append(mark + text)
            # List items are separate blocks; join them tightly below.
            if items:
                k = sum(1 for li in items if blocks(li.children, depth + 1))
                if k > 1:
                    tail = out[-k:]
                    del out[-k:]
                    out.append("\n".join(tail))
        elif n.tag == "dl":
            for c in n.children:
                if isinstance(c, Node) and c.tag == "dt":
                    t = inline_text(c)
                    if t:
                        out.append(f"**{t}**")
                elif isinstance(c, Node) and c.tag == "dd":
                    out.extend(blocks(c.children, depth + 1))
        elif n.tag == "blockquote":
            inner = blocks(n.children, depth + 1)
            if inner:
                out.append("\n".join("> " + line if line else ">" for line in "\n\n".join(inner).split("\n")))
        elif n.tag == "table":
            out.extend(_table(n))
        elif n.tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            t = inline_text(n)
            if t:
                out.append(f"**{t}**")  # a heading inside an answer (a note's title): keep it as bold text
        elif "admonition-title" in n.cls():
            out.append(f"**{inline_text(n)}**")
        else:
            out.extend(blocks(n.children, depth))
    flush()
    return [b for b in out if b.strip()]


# --- sections ----------------------------------------------------------------------------

@dataclass
class Section:
    title: str
    number: str  # "1.2" for the Debian FAQ, "" for Sphinx pages
    content: list  # nodes of its own text
    children: list[Section] = field(default_factory=list)


_NUM = re.compile(r"^\s*(\d+(?:\.\d+)*)\.\s*")


def docbook_sections(node: Node) -> list[Section]:
    """Sections of a DocBook XSL page: div.section with the title in div.titlepage."""
    out = []
    for c in node.children:
        if not isinstance(c, Node):
            continue
        if c.tag == "div" and "section" in c.cls():
            head = next((h for h in c.iter() if h.tag in ("h2", "h3", "h4", "h5")), None)
            raw = inline_text(head) if head else ""
            m = _NUM.match(raw)
            own = [x for x in c.children if not (isinstance(x, Node) and (
                "titlepage" in x.cls() or (x.tag == "div" and "section" in x.cls())))]
            out.append(Section(_NUM.sub("", raw).strip(), m.group(1) if m else "", own, docbook_sections(c)))
        else:
            out.extend(docbook_sections(c))
    return out


def sphinx_sections(node: Node) -> list[Section]:
    """Sections of a Sphinx page: <section> (or div.section) with its first heading as the title."""
    out = []
    for c in node.children:
        if not isinstance(c, Node):
            continue
        if c.tag == "section" or (c.tag == "div" and "section" in c.cls()):
            head = next((x for x in c.children if isinstance(x, Node) and re.fullmatch(r"h[1-6]", x.tag)), None)
            own = [x for x in c.children if x is not head and not (isinstance(x, Node) and (
                x.tag == "section" or (x.tag == "div" and "section" in x.cls())))]
            out.append(Section(inline_text(head) if head else "", "", own, sphinx_sections(c)))
        else:
            out.extend(sphinx_sections(c))
    return out


_ZH_Q = re.compile(r"吗|呢|什么|如何|怎么|怎样|哪|为什么|是否|有没有|能否|可否")
_EN_Q = re.compile(r"^(what|how|why|where|which|who|when|is|are|can|could|do|does|did|should|must|will|would|"
                   r"may|has|have|i|you|\(how\))\b", re.IGNORECASE)


def is_question(title: str) -> bool:
    """True when a heading asks something (the FAQ's questions, not its topic headings)."""
    return bool("?" in title or "？" in title or _ZH_Q.search(title) or _EN_Q.match(title))


def _weight(text: str) -> int:
    """Length with a Chinese character counted twice (one carries about a word's worth)."""
    return len(text) + sum(1 for ch in text if "\u3400" <= ch <= "\u9fff")


@dataclass
class Item:
    question: str
    number: str
    category: str
    body: str


def items_of(sections: list[Section], category: str, level: int = 2) -> list[Item]:
    """Turn a section tree into answers: each question section is one; topic sections nest in it."""
    out: list[Item] = []
    for s in sections:
        # A leaf under a topic heading is an FAQ entry even when worded as a statement
        # ("My class defines __del__ but it is not called ...").
        if is_question(s.title) or (category is not None and not s.children):
            parts = blocks(s.content)
            nested: list[Item] = []
            _fold(s.children, parts, nested, category, level)
            body = "\n\n".join(parts).strip()
            if _weight(body) >= MIN_ANSWER:
                out.append(Item(s.title, s.number, category, body))
            out.extend(nested)
        else:
            # A topic heading (a chapter, "Core Language"): its questions are the items.
            out.extend(items_of(s.children, s.title if category is None else category, level))
    return out


def _fold(children: list[Section], parts: list[str], nested: list[Item], category: str, level: int) -> None:
    for c in children:
        if is_question(c.title):
            nested.extend(items_of([c], category, level))
        else:
            parts.append("#" * level + " " + c.title)
            parts.extend(blocks(c.content))
            _fold(c.children, parts, nested, category, level + 1)


# --- the sets ----------------------------------------------------------------------------

def split_of(query: str) -> str:
    """'tune' or 'heldout', fixed by a hash of the query text."""
    return "tune" if hashlib.sha256(query.encode("utf-8")).digest()[0] % 2 == 0 else "heldout"


def need(path: Path, package: str) -> None:
    if not path.exists():
        sys.exit(f"error: {path} is missing; install it with `apt-get install {package}` and re-run")


def debian_faq(lang: str) -> list[tuple[str, str, Item]]:
    """(page id, title, item) for the Debian FAQ in 'en' or 'zh-cn'."""
    folder = DEBIAN_FAQ / "zh-cn" if lang == "zh-cn" else DEBIAN_FAQ
    need(folder / f"index.{lang}.html", "debian-faq-zh-cn" if lang == "zh-cn" else "debian-faq")
    out = []
    for f in sorted(folder.glob(f"*.{lang}.html")):
        chapter = f.name[: -len(f".{lang}.html")]
        if chapter in ("index", "faqinfo", "nextrelease"):
            continue  # the table of contents, the FAQ's own colophon, plans for a next release: no Q&A
        root = parse_html(f)
        h1 = next((h for h in root.iter() if h.tag == "h1"), None)
        chap_title = re.sub(r"^(第\s*\d+\s*章|Chapter\s+\d+\.)\s*", "", inline_text(h1) if h1 else chapter)
        for it in items_of(docbook_sections(root), chap_title):
            pid = f"{chapter}/{it.number.replace('.', '-')}"
            out.append((pid, f"{chap_title} {it.number}", it))
    return out


def python_faq() -> list[tuple[str, str, Item]]:
    """(page id, title, item) for the Python FAQ pages."""
    need(PYTHON_FAQ / "programming.html", "python3-doc (it pulls in python3.11-doc)")
    out = []
    for f in sorted(PYTHON_FAQ.glob("*.html")):
        if f.stem == "index":
            continue
        root = parse_html(f)
        body = next((n for n in root.iter() if n.attrs.get("role") == "main" or "body" in n.cls()), root)
        tops = sphinx_sections(body)
        doc_title = tops[0].title if tops else f.stem  # "Programming FAQ"
        for n, it in enumerate(items_of(tops[0].children if tops else [], None), 1):
            cat = f"{doc_title}: {it.category}" if it.category else doc_title
            out.append((f"{f.stem}/q{n:03d}", f"{cat} {n}", it))
    return out


CHANGES = ("Changes made: the HTML was converted to markdown; each FAQ answer became one page with\n"
           "its question removed (the questions are the queries in queries.jsonl); navigation,\n"
           "tables of contents and footnotes were dropped; headings inside an answer were kept.\n")


def licence_text(source: str) -> str:
    """The licence notice of a source package, with the summary of changes that it asks for."""
    if source == "python":
        need(Path("/usr/share/doc/python3.11-doc/copyright"), "python3.11-doc")
        text = Path("/usr/share/doc/python3.11-doc/copyright").read_text(encoding="utf-8")
        m = re.search(r"PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2.*?(?=\n\n\n)", text, re.DOTALL)
        head = ("Derived from the Python 3.11 documentation (Debian package python3.11-doc),\n"
                "Doc/faq/*.html. Copyright (c) 2001-2026 Python Software Foundation; All Rights Reserved.\n"
                "The pages are licensed under the Python Software Foundation License Version 2:\n\n")
    else:
        pkg = "debian-faq-zh-cn" if source == "zh-cn" else "debian-faq"
        need(Path(f"/usr/share/doc/{pkg}/copyright"), pkg)
        text = Path(f"/usr/share/doc/{pkg}/copyright").read_text(encoding="utf-8")
        m = re.search(r"The copyright and license statement for the Debian FAQ:.*?original English\.", text, re.DOTALL)
        head = f"Derived from the Debian FAQ (Debian package {pkg}).\n\n"
    if not m:
        sys.exit(f"error: cannot find the licence notice for {source}; check /usr/share/doc/*/copyright")
    return head + m.group(0).strip() + "\n\n" + CHANGES


def write_set(name: str, lang: str, items: list[tuple[str, str, Item]], licence: str, queries=None) -> None:
    """Write bench/data/<name>/pages and queries.jsonl (queries default to the items' own questions)."""
    root = HERE / name
    if root.exists():
        shutil.rmtree(root)
    (root / "pages").mkdir(parents=True)
    for pid, title, it in items:
        p = root / "pages" / f"{pid}.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"---\ntitle: {json.dumps(title, ensure_ascii=False)}\n---\n\n{it.body}\n", encoding="utf-8")
    (root / "LICENSE.txt").write_text(licence, encoding="utf-8")
    if queries is None:
        queries = [(it.question, pid) for pid, _, it in items]
    with (root / "queries.jsonl").open("w", encoding="utf-8") as f:
        for q, pid in queries:
            f.write(json.dumps({"query": q, "page": pid, "lang": lang, "split": split_of(q)},
                               ensure_ascii=False) + "\n")
    n_tune = sum(split_of(q) == "tune" for q, _ in queries)
    print(f"{name}: {len(items)} pages, {len(queries)} queries ({n_tune} tune, {len(queries) - n_tune} heldout)")


def check_unique(name: str, items) -> None:
    ids = [pid for pid, _, _ in items]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        sys.exit(f"error: {name}: duplicate page ids {sorted(dup)}")


def main() -> None:
    print("reading the Debian FAQ (zh-cn) ...")
    zh = debian_faq("zh-cn")
    print("reading the Debian FAQ (en) ...")
    en = debian_faq("en")
    print("reading the Python FAQ ...")
    py = python_faq()
    for name, items in (("debian-faq-zh", zh), ("debian-faq-en", en), ("python-faq-en", py)):
        check_unique(name, items)
    write_set("debian-faq-zh", "zh", zh, licence_text("zh-cn"))
    write_set("debian-faq-en", "en", en, licence_text("en"))
    write_set("python-faq-en", "en", py, licence_text("python"))
    en_ids = {pid for pid, _, _ in en}
    cross = [(it.question, pid) for pid, _, it in zh if pid in en_ids]
    write_set("debian-faq-zh2en", "zh", en, licence_text("zh-cn") + "\n" + licence_text("en"), queries=cross)


if __name__ == "__main__":
    main()
