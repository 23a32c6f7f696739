"""The HTML pages and the markdown renderer: anchors match the chunker, raw HTML never survives."""
import re
from html.parser import HTMLParser

import pytest

from indexer.chunking import chunk_page
from web import create_app
from web.render import render_answer, render_page, sanitize, wiki_link

EVIL = """# Evil page

<script>window.__xss=1</script>

<img src=x onerror="window.__xss=1">

Inline <b onclick="window.__xss=1">bold</b> and [a link](javascript:window.__xss=1) and ![pic](https://evil.example/t.png).

## Details
"""


@pytest.fixture
def services(make_services):
    return make_services("答案 [1]。")


@pytest.fixture
def client(services):
    return create_app(services.cfg, services=services).test_client()


def test_search_page_has_the_form_status_bar_and_no_inline_code(client):
    r = client.get("/", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert '<html lang="en">' in html and 'id="q"' in html and 'role="search"' in html
    assert ">Clear<" in html and "built-in method" not in html  # every label is a string, not a dict method
    assert 'id="sb-model"' in html and 'id="sb-latency"' in html and 'aria-live="polite"' in html
    assert re.search(r'<script src="/static/kbgate.js"', html) and 'href="/static/kbgate.css"' in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]


def test_page_language_follows_the_browser_or_the_switch(client):
    assert '<html lang="zh">' in client.get("/", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "提问" in client.get("/?lang=zh", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert ">Ask<" in client.get("/?lang=en").get_data(as_text=True)


def test_static_files_are_served(client):
    assert client.get("/static/kbgate.js").status_code == 200
    assert client.get("/static/kbgate.css").status_code == 200


def test_doc_page_shows_title_tags_back_link_and_rewritten_links(client):
    r = client.get("/docs/it/vpn", headers={"Accept-Language": "en"})
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert "<title>VPN 远程访问指南 · kbgate</title>" in html and "<li>vpn</li>" in html
    assert 'href="/?lang=en">← Back to search' in html
    assert '<h2 id="安装客户端">安装客户端</h2>' in html
    assert 'href="/docs/it/vpn-no-intranet"' in html and 'href="/docs/hr/business-travel"' in html
    assert 'rel="noopener noreferrer"' in html


def test_every_chunk_anchor_of_the_wiki_is_a_heading_id(services):
    index = services.retriever.index
    for page in index.page_list():
        html = render_page(page.text, page.id)
        ids = set(re.findall(r'<h[1-6] id="([^"]*)"', html))
        anchors = {c.anchor for c in chunk_page(page) if c.anchor}
        assert anchors <= ids, f"{page.id}: {sorted(anchors - ids)} not anchored"


def test_duplicate_headings_get_github_style_ids():
    html = render_page("# FAQ\n\n## FAQ\n\ntext\n\n## FAQ\n\n```\n# not a heading\n```\n", "x/y")
    assert re.findall(r'id="([^"]*)"', html) == ["faq", "faq-1", "faq-2"]


def elements(html: str) -> list[tuple[str, dict]]:
    """Every start tag in `html` with its attributes, as a browser's parser sees them."""
    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))
    Collect().feed(html)
    return found


def test_raw_html_in_a_wiki_page_never_survives():
    html = render_page(EVIL, "evil/page")
    tags = elements(html)
    assert {t for t, _ in tags} <= {"h1", "h2", "p", "a"}
    assert not [a for _, attrs in tags for a in attrs if a.startswith("on") or a == "style"]
    assert all(attrs.get("href", "https:").startswith(("https:", "/")) for t, attrs in tags if t == "a")
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html  # shown as text, not run
    assert '<a href="https://evil.example/t.png" rel="noopener noreferrer">pic</a>' in html  # no img: a link


def test_sanitizer_is_the_second_lock():
    dirty = '<p onclick="x()">a<script>b()</script><img src=x onerror=y()><a href="javascript:z()">c</a>' \
            '<a href="http://ok.example" target="_blank">d</a><iframe src="/"></iframe></p>'
    clean = sanitize(dirty)
    assert clean == '<p>a<a rel="noopener noreferrer">c</a><a href="http://ok.example" rel="noopener noreferrer">d</a></p>'


@pytest.mark.parametrize("href,expected", [
    ("software-requests.md", "/docs/it/software-requests"),
    ("../hr/business-travel.md#申请", "/docs/hr/business-travel#%E7%94%B3%E8%AF%B7"),
    ("/eng/oncall.md", "/docs/eng/oncall"),
    ("https://example.com/x.md", "https://example.com/x.md"),
    ("mailto:it@acme.example", "mailto:it@acme.example"),
    ("../../etc/passwd.md", None),
])
def test_wiki_links(href, expected):
    assert wiki_link(href, "it/vpn") == expected


def test_answer_citations_link_to_their_sections_and_html_is_escaped():
    sources = [{"n": 1, "page": "it/vpn", "anchor": "安装客户端"}, {"n": 2, "page": "hr/leave", "anchor": ""}]
    html = render_answer("装客户端 [1]，请假看 [2]，不存在 [7]。<img src=x onerror=alert(1)>\n第二行 `[1]`", sources)
    assert '<a href="/docs/it/vpn#%E5%AE%89%E8%A3%85%E5%AE%A2%E6%88%B7%E7%AB%AF" class="cite"' in html
    assert '<a href="/docs/hr/leave" class="cite"' in html and "[7]" in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;<br>" in html and "<code>[1]</code>" in html


def test_doc_list_page_links_every_page_an_anonymous_caller_may_read(client, services):
    html = client.get("/docs").get_data(as_text=True)
    public = [p for p in services.retriever.index.page_list() if not p.audience]
    assert html.count('href="/docs/') == len(public) and all(f'href="/docs/{p.id}"' in html for p in public)


def test_unknown_page_is_an_html_404_with_the_message_escaped(client):
    r = client.get("/docs/<script>alert(1)</script>")
    assert r.status_code == 404 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    r = client.get("/no/such/path")
    assert r.status_code == 404 and "no such endpoint or page: /no/such/path" in r.get_data(as_text=True)


def test_doc_pages_are_503_html_while_loading(services):
    import threading
    release = threading.Event()
    client = create_app(services.cfg, loader=lambda: release.wait(10) and services).test_client()
    try:
        assert client.get("/").status_code == 200  # the page itself needs no model
        r = client.get("/docs/it/vpn")
        assert r.status_code == 503 and r.mimetype == "text/html" and r.headers["Retry-After"]
    finally:
        release.set()
