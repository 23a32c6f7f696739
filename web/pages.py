"""The HTML pages: the search page, rendered wiki pages, the page list and error pages.

The page language is `?lang=zh|en`, else the browser's Accept-Language, else Chinese.
All script and style come from /static (the CSP forbids inline ones); wiki markdown
goes through `web.render` (escaped raw HTML, then nh3) before it reaches a template.
The page list and the pages show only what the request's caller may read (web.identity);
a restricted page is the same 404 as a missing one, and a link to it is text only.
"""
from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, make_response, render_template, request

from kbgate.errors import IndexUnavailable, KBGateError
from web import identity, state
from web.identity import request_caller
from web.render import docs_href, render_page

bp = Blueprint("pages", __name__)
# app-wide caller hooks, on the blueprint every app registers: bearer tokens checked before
# any /api or /v1 view (and before the rate limit), 401s for tokens marked WWW-Authenticate
bp.before_app_request(identity.authenticate)
bp.after_app_request(identity.challenge)


@bp.record_once
def _identities(setup):
    """Read the tokens and Slack users files when the app is built: a bad line stops the start."""
    identity.init_app(setup.app, setup.app.extensions["kbgate"].cfg)

LANGS = ("zh", "en")
UI = {
    "zh": {"title": "Wiki 搜索", "search_label": "搜索 Wiki", "placeholder": "输入问题，例如：在家怎么连公司 VPN？",
           "ask": "提问", "sources": "来源", "suggestions": "最接近的页面", "history": "历史记录",
           "export_md": "导出 Markdown", "export_json": "导出 JSON", "clear_history": "清空",
           "history_empty": "还没有提问。", "model": "模型", "device": "设备", "precision": "精度", "engine": "引擎",
           "latency": "上次耗时", "loading": "加载中…", "back": "← 返回搜索", "all_pages": "全部页面",
           "tags": "标签", "skip": "跳到搜索框", "skip_content": "跳到正文", "error": "出错了", "switch": "English",
           "status_label": "服务状态"},
    "en": {"title": "Wiki search", "search_label": "Search the wiki",
           "placeholder": "Ask a question, e.g. how do I connect to the VPN from home?",
           "ask": "Ask", "sources": "Sources", "suggestions": "Closest pages", "history": "History",
           "export_md": "Export Markdown", "export_json": "Export JSON", "clear_history": "Clear",
           "history_empty": "No questions yet.", "model": "Model", "device": "Device", "precision": "Precision",
           "engine": "Engine",
           "latency": "Last latency", "loading": "loading…", "back": "← Back to search", "all_pages": "All pages",
           "tags": "Tags", "skip": "Skip to the search box", "skip_content": "Skip to the content", "error": "Error",
           "switch": "中文", "status_label": "Service status"},
}


def page_lang() -> str:
    """zh or en: ?lang= first, then Accept-Language (zh when neither says)."""
    asked = request.args.get("lang", "")
    if asked in LANGS:
        return asked
    return request.accept_languages.best_match(LANGS, default="zh") or "zh"


def _render(template: str, http_status: int = 200, **values):
    lang = page_lang()
    other = "en" if lang == "zh" else "zh"
    html = render_template(template, lang=lang, t=UI[lang], other_lang=other, **values)
    return html, http_status


def wiki_index():
    """The loaded index (NotReady while loading, IndexUnavailable when there is none)."""
    retriever = state().get().retriever
    if retriever is None:
        raise IndexUnavailable("no index is loaded")
    return retriever.index


@bp.get("/")
def index():
    """The search page."""
    return _render("index.html")


@bp.get("/docs", strict_slashes=False)
def doc_list():
    """Every wiki page the caller may read, grouped by folder."""
    index = wiki_index()
    groups: dict[str, list] = defaultdict(list)
    for p in index.page_list(request_caller(state().cfg)):
        groups[p.id.split("/", 1)[0] if "/" in p.id else ""].append((p, docs_href(p.id)))
    return _render("docs.html", groups=sorted(groups.items()))


@bp.get("/docs/<path:page_id>")
def doc(page_id: str):
    """One wiki page rendered to safe HTML, headings anchored like the chunker's sections."""
    index, caller = wiki_index(), request_caller(state().cfg)
    page = index.readable(page_id, caller)  # NotFound (also: not readable) -> 404
    html = render_page(page.text, page.id, lambda target: index.may_read(target, caller),
                       state().cfg.server.wiki_base_url)
    return _render("doc.html", page=page, body=html, has_h1="<h1" in html,
                   meta={k: v for k, v in page.meta.items() if isinstance(v, (str, int, float))})


def error_page(status: int, message: str):
    """A short HTML error page (the app's handler calls this for non-API paths)."""
    return _render("error.html", status, status=status, message=message)


@bp.errorhandler(KBGateError)
def domain_error(e: KBGateError):
    """Domain errors on pages (unknown page, still loading) as HTML, not the API's JSON."""
    html, status = error_page(e.status, e.message)
    resp = make_response(html, status)
    if status == 503:
        resp.headers["Retry-After"] = str(getattr(e, "retry_after", None) or 5)
    return resp
