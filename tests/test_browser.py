"""The search page in a real headless Chromium (Debian's, driven by Playwright) against the served app.

`make browser` installs /usr/bin/chromium; without it these tests skip. Never `playwright install`.
"""
import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from web import create_app
from web.server import serve_in_thread

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot.png"
EVIL_PAGE = """---
title: Evil page
tags: [test]
---

# Evil page

<script>window.__xss=1</script>

<img src=x onerror="window.__xss=1">

Click [here](javascript:window.__xss=1) for the VPN gateway list.
"""
EVIL_REPLY = '<img src=x onerror="window.__xss=1"> 见 [1]。<script>window.__xss=1</script>'
STEPS = "".join(f"第{i}步，按页面操作 [1]。" for i in range(1, 16))

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def serve():
    """serve(services) -> base URL of the app on 127.0.0.1 (waitress, as `kbgate serve`)."""
    servers = []

    def start(services):
        server, url = serve_in_thread(create_app(services.cfg, services=services))
        servers.append(server)
        return url
    yield start
    for s in servers:
        s.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(locale="en-US", viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def ask(page, query: str, timeout_ms: int = 30_000):
    """Type a query with the keyboard and send it with Enter; wait for the badge."""
    page.locator("#q").focus()
    page.keyboard.type(query)
    page.keyboard.press("Enter")
    page.wait_for_selector("#badge:not([hidden])", timeout=timeout_ms)


def wait_done(page, timeout_ms: int = 30_000) -> str:
    page.wait_for_selector("#result[data-state=done], #result[data-state=error]", timeout=timeout_ms)
    assert page.get_attribute("#result", "data-state") == "done", page.inner_text("#notice")
    return page.get_attribute("#result", "data-route")


def follow_first_source(page) -> str:
    """Click the first source link; return the id of the element the browser scrolled to."""
    link = page.locator("#sources .source-link").first
    href = link.get_attribute("href")
    link.click()
    page.wait_for_url("**/docs/**")
    assert unquote(page.url).endswith(unquote(href))
    return page.evaluate("document.querySelector(':target') ? document.querySelector(':target').id : ''")


@pytest.fixture
def evil_services(tmp_path, hash_embedder):
    """Services over a wiki holding a page with <script> and <img onerror>; the model replies with HTML."""
    from index_fixtures import SMALL_KB, write_kb
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.config import load_config
    from kbgate.retrieval import Retriever
    from kbgate.service import build
    from fake_engine import FakeEngine

    # grounding off: the model's HTML must reach the page as written (a reply can pass grounding and still
    # carry markup; the page's escaping is what is under test here)
    cfg = load_config().replace(gate={"negative_threshold": 1.01}, answer={"min_score": 0.0, "verify_citations": False})
    kb = write_kb(tmp_path / "kb", {**SMALL_KB, "evil/page.md": EVIL_PAGE})
    build_index(cfg, kb, tmp_path / "index", hash_embedder, progress=False)
    retriever = Retriever(load_index(tmp_path / "index", hash_embedder), hash_embedder, cfg.retrieval)
    return build(cfg, FakeEngine(EVIL_REPLY), retriever)


@pytest.mark.parametrize("csp", ["with CSP", "sanitizer alone"])
def test_raw_html_in_a_wiki_page_or_a_model_reply_never_runs(browser, serve, evil_services, csp):
    # "sanitizer alone": the browser ignores the CSP, so only markdown-it + nh3 stand in the way
    context = browser.new_context(bypass_csp=csp == "sanitizer alone")
    page = context.new_page()
    url = serve(evil_services)
    page.goto(f"{url}/docs/evil/page")
    assert page.evaluate("window.__xss") is None
    assert "<script>window.__xss=1</script>" in page.inner_text(".doc-body")  # shown, not run
    assert page.locator(".doc-body img, .doc-body script").count() == 0
    page.goto(url)
    ask(page, "VPN gateway list")
    wait_done(page)
    assert page.evaluate("window.__xss") is None
    assert '<img src=x onerror="window.__xss=1">' in page.inner_text("#answer")
    assert page.locator("#answer img, #answer script").count() == 0
    context.close()


def test_keyboard_query_streams_badge_answer_sources_and_history(page, serve, make_services):
    services = make_services(STEPS, delay=0.08, gate={"negative_threshold": 1.01}, answer={"min_score": 0.0})
    url = serve(services)
    page.set_viewport_size({"width": 375, "height": 740})  # a phone
    page.goto(url)
    page.wait_for_function("() => document.getElementById('sb-model').textContent !== 'loading…'")
    assert page.inner_text("#sb-model") == services.model_info()["name"]
    ask(page, "在家怎么连公司内网")
    assert page.inner_text("#badge").split()[1] in ("正面", "中性", "负面")  # Chinese query, Chinese badge
    page.wait_for_function("() => document.getElementById('result').dataset.state === 'streaming'"
                           " && document.getElementById('answer').textContent.length > 0")  # partial answer
    assert wait_done(page) == "answer"
    assert page.locator("#answer a.cite").first.get_attribute("href").startswith("/docs/")
    assert int(page.inner_text("#sb-latency")) > 0
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
    anchor = services.pipeline.ask("在家怎么连公司内网").sources[0].anchor
    assert follow_first_source(page) == anchor
    page.go_back()
    page.wait_for_selector("#history .history-item")
    assert "在家怎么连公司内网" in page.inner_text("#history")
    with page.expect_download() as dl:
        page.click("#export-md")
    markdown = Path(dl.value.path()).read_text(encoding="utf-8")
    assert "## 1. 在家怎么连公司内网" in markdown and "/docs/" in markdown
    with page.expect_download() as dl:
        page.click("#export-json")
    assert json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))[0]["route"] == "answer"


@pytest.mark.slow
def test_real_models_answer_then_troubleshoot(page, serve, real_services, tmp_path):
    """The flow from the issue with the real Qwen and MiniLM (each answer takes 10-40 s on a CPU)."""
    url = serve(real_services)
    page.goto(f"{url}/?lang=zh")
    ask(page, "在家怎么连接公司 VPN？", timeout_ms=120_000)
    badge = page.inner_text("#badge")
    assert badge.split()[1] in ("正面", "中性", "负面")
    page.wait_for_function("() => document.getElementById('answer').textContent.length > 0", timeout=120_000)
    assert wait_done(page, timeout_ms=240_000) == "answer"
    assert page.locator("#sources .source-link").count() >= 1
    shot = tmp_path / "answered.png"
    page.screenshot(path=str(shot), full_page=True)
    if not SCREENSHOT.exists() or os.environ.get("KBGATE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT)
    assert follow_first_source(page)  # landed on a section
    page.goto(f"{url}/?lang=zh")
    ask(page, "打印机又卡纸了，气死我了，怎么办？", timeout_ms=120_000)
    assert page.get_attribute("#badge", "data-label") == "negative"
    assert wait_done(page, timeout_ms=240_000) == "troubleshooting"
    assert real_services.cfg.escalation.url in page.inner_text("#answer")
    assert page.locator("#route").inner_text() == "🛠 排障模式"
