"""Slack messages for kbgate: Block Kit dicts, mrkdwn escaping and Slack's limits. Pure functions.

Every piece of user, wiki or model text is escaped (`&`, `<`, `>`), so `<!channel>` or
`<script>` arrive as text, never as a mention, a link or markup; link labels also lose
`|`. Slack's limits are kept: 50 blocks, 3,000 characters per section, 150 for the
plain-text header, 10 context elements. An answer with an `answer_id` ends with 👍/👎
buttons (action ids `VOTE_ACTIONS`, the id as their value) for web.slack_actions. Not handled: Markdown beyond `**bold**` (which
becomes mrkdwn `*bold*`); tables and code fences pass through as they are.
"""
from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from kbgate.text import language  # torch-free, so the proxy process can use it

MAX_BLOCKS = 50
SECTION_CHARS = 3000
HEADER_CHARS = 150
CONTEXT_ELEMENTS = 10
FALLBACK_CHARS = 3000

_BOLD = re.compile(r"\*\*(.+?)\*\*")

BADGES = {"positive": ("😄", "正面", "positive"), "neutral": ("😐", "中性", "neutral"),
          "negative": ("😟", "负面", "negative")}
ROUTES = {"answer": ("回答", "answer"), "troubleshooting": ("故障排查", "troubleshooting"),
          "no_answer": ("未找到答案", "no answer")}
USAGE = ("Usage: `{cmd} &lt;question&gt;`, e.g. `{cmd} how do I connect to the VPN?` "
         "(add `{kw}` to answer in the channel: `{cmd} {kw} &lt;question&gt;`).\n"
         "用法：`{cmd} 你的问题`，例如 `{cmd} 在家怎么连 VPN？`（加 `{kw}` 在频道里公开回答）。")
TEXT = {  # (zh, en); values are escaped before they are filled in
    "ack": ("🔎 正在 Wiki 中搜索：{q}", "🔎 Searching the wiki for: {q}"),
    "usage": (USAGE, USAGE),
    "busy": ("⏳ 正在回答的问题太多了，请一分钟后再试。",
             "⏳ kbgate is busy answering other questions; try again in a minute."),
    "error": ("⚠️ 抱歉，没能回答这个问题：{message}", "⚠️ Sorry, I could not answer that: {message}"),
    "sources": ("来源", "Sources"),
    "closest": ("最接近的页面", "Closest pages"),
    "escalate": ("🆘 *仍未解决？* 请联系 {contact}，或{ticket}。", "🆘 *Still stuck?* Contact {contact}, or {ticket}."),
    "ticket": ("提交工单", "open a ticket"),
    "up": ("👍 有帮助", "👍 Helpful"),
    "down": ("👎 没帮助", "👎 Not helpful"),
    "voted": ("{emoji} 已记录，谢谢反馈！", "{emoji} Recorded, thanks for the feedback!"),
    "revoted": ("{emoji} 已更新你的反馈。", "{emoji} Your feedback is updated."),
    "vote_error": ("⚠️ 没能记录你的反馈：{message}", "⚠️ Your feedback was not recorded: {message}"),
}
VOTE_ACTIONS = {"kbgate_vote_up": "up", "kbgate_vote_down": "down"}  # button action_id -> rating
VOTE_EMOJI = {"up": "👍", "down": "👎"}


def say(key: str, lang: str = "en", **values) -> str:
    zh, en = TEXT[key]
    return (zh if lang == "zh" else en).format(**values)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe_cut(s: str, limit: int) -> int:
    """A cut position ≤ limit that does not split an entity like `&amp;`."""
    amp = s.rfind("&", 0, limit)
    if amp > 0 and s.find(";", amp) >= limit:
        return amp
    return limit


def fit(text: str, limit: int) -> str:
    """Escape `text` and trim it to at most `limit` characters, ending in '…' when trimmed."""
    out = escape(text)
    if len(out) <= limit:
        return out
    return out[: _safe_cut(out, limit - 1)].rstrip() + "…"


def split(text: str, limit: int = SECTION_CHARS) -> list[str]:
    """Escape `text` and split it into pieces of at most `limit` characters, at line breaks if possible."""
    pieces, rest = [], escape(text).strip()
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = rest.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = _safe_cut(rest, limit)
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return [p for p in pieces + [rest] if p.strip()]


def link(url: str, label: str) -> str:
    """`<url|label>` for http(s) URLs (spaces, `<`, `>`, `|` percent-encoded); the escaped label otherwise."""
    label = escape(label).replace("|", "¦")
    if urlsplit(url or "").scheme not in ("http", "https"):
        return label
    url = quote(url, safe=":/?#[]@!$&'()*+,;=%~")
    return f"<{url.replace('&', '&amp;')}|{label}>"


def badge(label: str, confidence: float | None, lang: str) -> str:
    emoji, zh, en = BADGES.get(label, ("❔", escape(str(label)), escape(str(label))))
    pct = f" ({confidence:.0%})" if isinstance(confidence, (int, float)) else ""
    return f"{emoji} {zh if lang == 'zh' else en}{pct}"


def ephemeral(text: str) -> dict:
    """A plain ephemeral reply; `text` must already be escaped mrkdwn."""
    return {"response_type": "ephemeral", "text": text}


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _source_label(s: dict) -> str:
    title, heading = s.get("title") or s.get("page") or "?", s.get("heading") or ""
    where = f"{title} › {heading}" if heading and heading != title else title
    return f"[{s.get('n', '?')}] {where}"


def _context(title: str, sources: list[dict]) -> dict:
    elements = [{"type": "mrkdwn", "text": f"*{title}*"}]
    for s in sources[: CONTEXT_ELEMENTS - 1]:
        elements.append({"type": "mrkdwn", "text": link(s.get("url", ""), _source_label(s)[:200])})
    return {"type": "context", "elements": elements}


def vote_buttons(answer_id: str, lang: str) -> dict:
    """The 👍/👎 actions block of one answer (web.slack_actions takes the clicks)."""
    return {"type": "actions", "block_id": "kbgate_feedback",
            "elements": [{"type": "button", "action_id": action, "value": answer_id,
                          "text": {"type": "plain_text", "text": say(rating, lang), "emoji": True}}
                         for action, rating in VOTE_ACTIONS.items()]}


def answer_message(result: dict, *, contact: str, ticket_url: str, public: bool = False) -> dict:
    """The message for one pipeline result (`Result.as_dict()` or /api/search JSON).

    The answer's sections are the final text without its closing contact line, which is
    rendered once as the 🆘 section from `result["escalation"]` (`contact`/`ticket_url` stand in
    for an upstream that predates that field). The notification `text` is the whole final text.
    """
    query, answer, route = result.get("query") or "?", result.get("answer") or "", result.get("route", "")
    lang = language(query)
    sentiment = result.get("sentiment") or {}
    status = f"{badge(sentiment.get('label', '?'), sentiment.get('confidence'), lang)} · " \
             f"*{ROUTES.get(route, (escape(str(route)),) * 2)[0 if lang == 'zh' else 1]}*"
    head = [{"type": "header", "text": {"type": "plain_text", "text": fit(query, HEADER_CHARS), "emoji": True}},
            _section(status)]
    tail = []
    esc = result.get("escalation")
    if esc:  # the final text ends with the contact; here it is shown once, as its own section
        answer = answer.removesuffix(esc.get("text") or "").rstrip()
        contact, ticket_url = esc.get("contact") or contact, esc.get("url") or ticket_url
    if esc or ("escalation" not in result and route == "troubleshooting"):  # an upstream without the field
        ticket = link(ticket_url, say("ticket", lang))
        tail.append(_section(say("escalate", lang, contact=escape(contact), ticket=ticket)))
    if result.get("sources"):
        tail.append(_context(say("sources", lang), result["sources"]))
    elif result.get("suggestions"):
        tail.append(_context(say("closest", lang), result["suggestions"]))
    if isinstance(result.get("answer_id"), str) and 0 < len(result["answer_id"]) <= 255:
        tail.append(vote_buttons(result["answer_id"], lang))
    body = split(_BOLD.sub(r"*\1*", answer)) or ["…"]
    room = MAX_BLOCKS - len(head) - len(tail)
    if len(body) > room:
        body = body[:room]
        body[-1] = body[-1][: _safe_cut(body[-1], SECTION_CHARS - 2)].rstrip() + " …"
    return {"response_type": "in_channel" if public else "ephemeral",
            "text": fit(f"{query}\n{result.get('answer') or ''}", FALLBACK_CHARS),  # the final text, contact and all
            "blocks": head + [_section(p) for p in body] + tail}
