"""A readable page that links to a restricted one does not give it away: for a reader outside the
target's audience the link keeps its text and loses its href (exactly as a link to a missing page),
in web.render and through /docs/<page> over a real (hash) index."""
from __future__ import annotations

import re

import pytest
from fake_engine import FakeEngine
from index_fixtures import SMALL_KB, write_kb

from indexer.index import load_index
from indexer.store import build_index
from kbgate.retrieval import Retriever
from web import create_app
from web.render import link_target, redact_links, render_page

LINKS = """# Payroll notes

See [the bands](confidential/bands.md#p5), [payroll](../hr/leave.md), [a gone page](nope.md),
[site path](/docs/hr/confidential/bands), [full URL](http://127.0.0.1:8080/docs/hr/confidential/bands),
[bare](confidential/bands), [encoded](/docs/hr%2Fconfidential%2Fbands), [elsewhere](https://example.com/docs/hr/confidential/bands),
![a chart](confidential/bands.md) and [top](#payroll-notes).
"""
HIDDEN_TEXTS = ("the bands", "a gone page", "site path", "full URL", "bare", "encoded", "a chart")
BASE = "http://127.0.0.1:8080"


def hrefs(html: str) -> dict[str, str]:
    """{link text: href} of every link with an href."""
    out = {}
    for attrs, text in re.findall(r"<a ([^>]*)>([^<]*)</a>", html):
        m = re.search(r'href="([^"]*)"', attrs)
        if m:
            out[text] = m.group(1)
    return out


@pytest.mark.parametrize("href,target", [
    ("confidential/bands.md", "hr/confidential/bands.md"),  # as the browser would resolve it: no such page
    ("/docs/hr/confidential/bands", "hr/confidential/bands"),
    ("confidential/bands", "hr/confidential/bands"),
    ("../../docs/eng/x", "eng/x"),
    ("../../static/app.js", None),
    ("http://127.0.0.1:8080/docs/it/vpn#x", "it/vpn"),
    ("HTTP://127.0.0.1:8080/docs/it/vpn", "it/vpn"),
    ("https://127.0.0.1:8080/docs/it/vpn", None),
    ("https://example.com/docs/it/vpn", None),
    ("#anchor", None), ("?lang=en", None), ("/docs/", None), ("mailto:hr@acme.example", None),
])
def test_link_target(href, target):
    assert link_target(href, "hr/payroll-notes", BASE) == target


def test_a_link_to_a_page_the_reader_may_not_open_is_text_only():
    readable = {"hr/payroll-notes", "hr/leave"}
    html = render_page(LINKS, "hr/payroll-notes", readable.__contains__, BASE)
    got = hrefs(html)
    assert got == {"payroll": "/docs/hr/leave", "elsewhere": "https://example.com/docs/hr/confidential/bands",
                   "top": "#payroll-notes"}
    assert "confidential" not in html.replace("https://example.com/docs/hr/confidential/bands", "")
    assert all(t in html for t in HIDDEN_TEXTS)  # the words the author wrote stay
    everything = hrefs(render_page(LINKS, "hr/payroll-notes", lambda t: True, BASE))
    assert set(everything) >= {"the bands", "site path", "full URL", "bare", "a chart"}  # a reader of all: links
    assert hrefs(render_page(LINKS, "hr/payroll-notes")) == everything  # no rights given: as before
    restricted = render_page("[x](confidential/bands.md)", "hr/p", lambda t: False)
    assert restricted == render_page("[x](nope.md)", "hr/p", lambda t: False) == "<p>x</p>\n"  # alike


def test_raw_markdown_can_be_redacted_the_same_way():
    """redact_links: for APIs that return a page's markdown (web/api.py's /api/docs/<id> may use it)."""
    readable = {"hr/payroll-notes", "hr/leave"}
    md = LINKS + "\n[ref]: confidential/bands.md\n[ok]: ../hr/leave.md \"Leave\"\n<http://127.0.0.1:8080/docs/hr/confidential/bands>\n"
    out = redact_links(md, "hr/payroll-notes", readable.__contains__, BASE)
    assert "confidential" not in out.replace("https://example.com/docs/hr/confidential/bands", "")
    assert all(t in out for t in HIDDEN_TEXTS) and "[payroll](../hr/leave.md)" in out and "[top](#payroll-notes)" in out
    assert '[ok]: ../hr/leave.md "Leave"' in out
    assert redact_links(md, "hr/payroll-notes", lambda t: True, BASE) == md


@pytest.fixture
def app(tmp_path, index_cfg, hash_embedder):
    kb = write_kb(tmp_path / "kb", {**SMALL_KB, "hr/payroll-notes.md": "---\ntitle: Payroll notes\n---\n\n" + LINKS,
                                    "hr/confidential/bands.md": "---\ntitle: Salary bands\naudience: [hr]\n---\n\n"
                                                                "# Salary bands\n\nP5 band 28000 to 44000 (BANDS-CANARY-1).\n"})
    build_index(index_cfg, kb, tmp_path / "ix", hash_embedder, progress=False)
    from kbgate.config import load_config
    from kbgate.service import build

    cfg = load_config().replace(auth={"trusted_proxies": ["127.0.0.1"]})
    return create_app(cfg, services=build(cfg, FakeEngine(""), Retriever(load_index(tmp_path / "ix", hash_embedder),
                                                                         hash_embedder)))


def test_docs_page_links_follow_the_reader(app):
    c = app.test_client()
    hr = {"X-Forwarded-User": "hana", "X-Forwarded-Groups": "hr"}
    outsider = {"X-Forwarded-User": "omar", "X-Forwarded-Groups": "eng"}
    pages = {who: c.get("/docs/hr/payroll-notes", headers=h).get_data(as_text=True)
             for who, h in (("hr", hr), ("outsider", outsider), ("anonymous", {}))}
    for who in ("outsider", "anonymous"):
        assert "confidential" not in pages[who].replace("https://example.com/docs/hr/confidential/bands", ""), who
        assert "the bands" in pages[who] and hrefs(pages[who])["payroll"] == "/docs/hr/leave"
    assert hrefs(pages["hr"])["the bands"] == "/docs/hr/confidential/bands#p5"
    assert hrefs(pages["hr"])["full URL"] == f"{BASE}/docs/hr/confidential/bands"
    assert "a gone page" not in hrefs(pages["hr"])  # a missing page is text for everyone
    assert c.get("/docs/hr/confidential/bands", headers=outsider).status_code == 404
    assert "BANDS-CANARY-1" in c.get("/docs/hr/confidential/bands", headers=hr).get_data(as_text=True)


def test_api_docs_markdown_hides_links_the_reader_may_not_follow(app):
    c = app.test_client()
    hr = {"X-Forwarded-User": "hana", "X-Forwarded-Groups": "hr"}
    outsider = {"X-Forwarded-User": "omar", "X-Forwarded-Groups": "eng"}
    md = {who: c.get("/api/docs/hr/payroll-notes", headers=h).get_json()["markdown"]
          for who, h in (("hr", hr), ("outsider", outsider), ("anonymous", {}))}
    for who in ("outsider", "anonymous"):
        assert "confidential" not in md[who].replace("https://example.com/docs/hr/confidential/bands", ""), who
        assert "the bands" in md[who] and "[payroll](../hr/leave.md)" in md[who]
    assert "confidential/bands" in md["hr"]  # the HR reader keeps the link
