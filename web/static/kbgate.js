// The search page: streams /api/search/stream with fetch() (EventSource cannot POST), shows the
// sentiment badge, the answer token by token (as text), then the server-sanitized answer HTML
// with [n] linked to its sources. History stays in localStorage; export as Markdown or JSON.
// Model text only ever reaches the DOM through textContent, except `answer_html`, which the
// server rendered with markdown-it (raw HTML escaped) and cleaned with nh3.
// 👍/👎 under an answer POST {answer_id, rating[, comment]} to /api/feedback.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const UI_LANG = document.documentElement.lang === "zh" ? "zh" : "en";
  const HISTORY_KEY = "kbgate.history.v1";
  const HISTORY_MAX = 50;

  const T = {
    zh: {
      positive: "正面", neutral: "中性", negative: "负面", sentiment: "情绪",
      troubleshooting: "🛠 排障模式", answer: "回答", no_answer: "没有找到答案",
      thinking: "正在分析问题…", searching: "正在检索 Wiki…", empty: "请输入问题。",
      network: "连接服务失败，请稍后再试。", cut: "回答中断了，请重试。",
      busy: "服务繁忙，请 {s} 秒后再试。", loading: "模型仍在加载，请稍候…",
      cleared: "历史记录已清空。", nothing: "还没有可导出的记录。", history_title: "kbgate 搜索历史",
      latency: "耗时", sources: "来源", route: "路由", time: "时间",
      helpful: "这个回答有帮助吗？", up: "有帮助", down: "没帮助", comment: "补充说明（可选）", send: "发送",
      recorded: "已记录，谢谢！", updated: "已更新，谢谢！",
    },
    en: {
      positive: "Positive", neutral: "Neutral", negative: "Negative", sentiment: "Sentiment",
      troubleshooting: "🛠 Troubleshooting", answer: "Answer", no_answer: "No answer found",
      thinking: "Reading your question…", searching: "Searching the wiki…", empty: "Type a question first.",
      network: "Could not reach the service; try again shortly.", cut: "The answer was cut off; try again.",
      busy: "The service is busy; try again in {s} s.", loading: "The models are still loading…",
      cleared: "History cleared.", nothing: "Nothing to export yet.", history_title: "kbgate search history",
      latency: "latency", sources: "Sources", route: "route", time: "time",
      helpful: "Was this helpful?", up: "Helpful", down: "Not helpful", comment: "Add a comment (optional)",
      send: "Send", recorded: "Recorded, thanks!", updated: "Updated, thanks!",
    },
  };
  const EMOJI = { positive: "😄", neutral: "😐", negative: "😟" };

  // Same rule as the server (kbgate.text.language): Chinese when CJK characters outnumber Latin words.
  function langOf(text) {
    const cjk = (text.match(/[\u3400-\u9fff\uf900-\ufaff]/g) || []).length;
    const words = (text.match(/[A-Za-z]+/g) || []).length;
    return cjk && cjk >= words ? "zh" : "en";
  }
  const tr = (key, lang = UI_LANG) => T[lang][key] || T.en[key] || key;

  function docsHref(page, anchor) {
    const path = "/docs/" + page.split("/").map(encodeURIComponent).join("/");
    return anchor ? path + "#" + encodeURIComponent(anchor) : path;
  }

  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  // ---- the current answer ------------------------------------------------------------------
  const form = $("search"), input = $("q"), notice = $("notice"), result = $("result");
  const badge = $("badge"), route = $("route"), answer = $("answer");
  let current = null; // AbortController of the query in flight

  function say(message, error = false) {
    notice.textContent = message || "";
    notice.classList.toggle("error", error);
  }

  function reset() {
    result.hidden = false;
    result.dataset.state = "streaming";
    delete result.dataset.route;
    badge.hidden = true; route.hidden = true;
    answer.textContent = "";
    answer.setAttribute("aria-busy", "true");
    for (const id of ["sources", "suggestions"]) { $(id).textContent = ""; $(id + "-box").hidden = true; }
    $("feedback").hidden = true;
  }

  function showBadge(s, lang) {
    badge.textContent = `${EMOJI[s.label] || ""} ${tr(s.label, lang)}`;
    badge.className = "badge badge-" + s.label;
    badge.dataset.label = s.label;
    const pct = Math.round((s.confidence || 0) * 100);
    badge.title = `${tr("sentiment", lang)}: ${tr(s.label, lang)} (${pct}%)`;
    badge.setAttribute("aria-label", badge.title);
    badge.hidden = false;
  }

  function showRoute(name, lang) {
    result.dataset.route = name;
    route.textContent = tr(name, lang);
    route.className = "route route-" + name;
    route.hidden = name === "answer";
  }

  function showSources(list, boxId) {
    const ol = $(boxId);
    ol.textContent = "";
    for (const s of list) {
      const li = el("li", { "data-n": String(s.n) });
      if (s.cited) li.classList.add("cited");
      const where = s.heading && s.heading !== s.title ? `${s.title} › ${s.heading.split(" › ").pop()}` : s.title;
      li.append(el("a", { href: docsHref(s.page, s.anchor), class: "source-link" }, where));
      if (boxId === "sources") li.append(el("span", { class: "score" }, ` ${Math.round((s.relevance || 0) * 100)}%`));
      if (s.snippet) li.append(el("p", { class: "snippet" }, plain(s.snippet)));
      ol.append(li);
    }
    $(boxId + "-box").hidden = list.length === 0;
  }

  // A snippet is raw markdown: show links as their text and drop emphasis and code marks.
  function plain(md) {
    return md.replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1").replace(/\*\*|__|`/g, "").replace(/^#{1,6}\s+/gm, "");
  }

  // Answer text with each valid [n] as a link to source n, built as DOM nodes (no HTML parsing).
  function linkedText(text, sources) {
    const frag = document.createDocumentFragment(), byN = new Map(sources.map((s) => [s.n, s]));
    let last = 0;
    for (const m of text.matchAll(/\[(\d{1,2})\]/g)) {
      const s = byN.get(Number(m[1]));
      if (!s) continue;
      frag.append(m.input.slice(last, m.index), el("a", { href: docsHref(s.page, s.anchor), class: "cite" }, m[0]));
      last = m.index + m[0].length;
    }
    frag.append(text.slice(last));
    return frag;
  }

  function finish(res, lang, fresh = true) {
    answer.setAttribute("aria-busy", "false");
    result.dataset.state = "done";
    showBadge(res.sentiment, lang);
    showRoute(res.route, lang);
    if (fresh && res.answer_html) answer.innerHTML = res.answer_html; // sanitized on the server (web/render.py)
    else { answer.textContent = ""; answer.append(linkedText(res.answer, res.sources || [])); }
    showSources(res.route === "no_answer" ? [] : res.sources, "sources");
    showSources(res.suggestions || [], "suggestions");
    showFeedback(res.answer_id, lang);
    const ms = res.timings_ms && res.timings_ms.total;
    $("sb-latency").textContent = ms != null ? Math.round(ms) : "–";
    say("");
  }

  function fail(message) {
    answer.setAttribute("aria-busy", "false");
    result.dataset.state = "error";
    say(message, true);
  }

  // ---- 👍/👎 --------------------------------------------------------------------------------
  const fb = $("feedback"), fbForm = $("fb-form"), fbComment = $("fb-comment"), fbStatus = $("fb-status");

  function showFeedback(answerId, lang) {
    fb.hidden = !answerId;
    fb.dataset.answerId = answerId || "";
    fb.dataset.lang = lang;
    delete fb.dataset.rating; delete fb.dataset.state;
    $("fb-ask").textContent = tr("helpful", lang);
    for (const b of fb.querySelectorAll(".vote")) {
      b.setAttribute("aria-pressed", "false");
      b.setAttribute("aria-label", tr(b.dataset.rating, lang));
      b.title = tr(b.dataset.rating, lang);
    }
    fbForm.hidden = true; fbComment.value = "";
    fbComment.placeholder = tr("comment", lang);
    $("fb-comment-label").textContent = tr("comment", lang);
    $("fb-send").textContent = tr("send", lang);
    fbStatus.textContent = "";
  }

  async function vote(rating, comment) {
    const lang = fb.dataset.lang || UI_LANG, body = { answer_id: fb.dataset.answerId, rating };
    if (comment) body.comment = comment;
    let res;
    try {
      res = await fetch("/api/feedback", {
        method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", "X-KBGate-Source": "page" },
      });
    } catch (e) { fbStatus.textContent = tr("network", lang); return; }
    if (!res.ok) { fbStatus.textContent = await errorMessage(res); return; }
    const done = await res.json();
    if (done.answer_id !== fb.dataset.answerId) return; // a newer answer is on the page now
    fb.dataset.rating = rating; fb.dataset.state = done.status;
    for (const b of fb.querySelectorAll(".vote")) b.setAttribute("aria-pressed", String(b.dataset.rating === rating));
    fbStatus.textContent = tr(done.status, lang);
    fbForm.hidden = false;
  }

  fb.addEventListener("click", (e) => {
    const b = e.target.closest(".vote");
    if (b) vote(b.dataset.rating, fbComment.value.trim());
  });
  fbForm.addEventListener("submit", (e) => {
    e.preventDefault();
    if (fb.dataset.rating) vote(fb.dataset.rating, fbComment.value.trim());
  });

  // ---- streaming ---------------------------------------------------------------------------
  function parseEvent(block) {
    let kind = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(5).replace(/^ /, "");
    }
    return { kind, data: data ? JSON.parse(data) : null };
  }

  async function errorMessage(res) {
    if (res.status === 503 && res.headers.get("Retry-After")) {
      try { const body = await res.json(); if (body.error.code === "not_ready") return tr("loading"); } catch (e) { /* fall through */ }
      return tr("busy").replace("{s}", res.headers.get("Retry-After"));
    }
    try { return (await res.json()).error.message; } catch (e) { return `${res.status} ${res.statusText}`; }
  }

  async function ask(query) {
    if (current) current.abort();
    const ctrl = current = new AbortController();
    const lang = langOf(query);
    reset();
    say(tr("thinking", lang));
    let res;
    try {
      res = await fetch("/api/search/stream", {
        method: "POST", signal: ctrl.signal,
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ query }),
      });
    } catch (e) {
      if (!ctrl.signal.aborted) fail(tr("network", lang));
      return;
    }
    if (ctrl.signal.aborted) return;
    if (!res.ok) { fail(await errorMessage(res)); return; }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const text = document.createTextNode("");
    answer.append(text);
    let buf = "", ended = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (ctrl.signal.aborted) return; // a newer query owns the page now
        if (done) break;
        buf += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const ev = parseEvent(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
          if (ev.kind === "sentiment") { showBadge(ev.data, lang); say(tr("searching", lang)); }
          else if (ev.kind === "sources") { showSources(ev.data, "sources"); say(""); }
          else if (ev.kind === "token") text.appendData(ev.data);
          else if (ev.kind === "done") { ended = true; finish(ev.data, lang); remember(ev.data, lang); }
          else if (ev.kind === "error") { ended = true; fail(ev.data.message); }
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
      fail(tr("cut", lang));
      return;
    }
    if (!ended && !ctrl.signal.aborted) fail(tr("cut", lang));
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const query = input.value.trim();
    if (!query) { say(tr("empty")); input.focus(); return; }
    ask(query);
  });

  // ---- status bar --------------------------------------------------------------------------
  async function loadStatus() {
    try {
      const res = await fetch("/readyz");
      if (res.ok) {
        const { model } = await res.json();
        $("sb-model").textContent = model.name;
        $("sb-device").textContent = model.device;
        $("sb-precision").textContent = model.precision;
        $("sb-engine").textContent = model.engine;
        return;
      }
    } catch (e) { /* retried below */ }
    $("sb-model").textContent = tr("loading");
    setTimeout(loadStatus, 3000);
  }

  // ---- history -----------------------------------------------------------------------------
  function history() {
    try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch (e) { return []; }
  }

  function keep(slim) {
    const list = [slim, ...history()].slice(0, HISTORY_MAX);
    try { localStorage.setItem(HISTORY_KEY, JSON.stringify(list)); } catch (e) { list.length = 0; }
    drawHistory();
  }

  function remember(res, lang) {
    const pick = (s) => ({ n: s.n, page: s.page, anchor: s.anchor, title: s.title, heading: s.heading,
                           snippet: s.snippet, relevance: s.relevance, cited: s.cited });
    keep({ time: new Date().toISOString(), lang, query: res.query, route: res.route, answer_id: res.answer_id,
           sentiment: { label: res.sentiment.label, confidence: res.sentiment.confidence },
           answer: res.answer, latency_ms: res.timings_ms.total,
           sources: res.sources.map(pick), suggestions: (res.suggestions || []).map(pick) });
  }

  function drawHistory() {
    const list = history(), ol = $("history");
    ol.textContent = "";
    $("history-empty").hidden = list.length > 0;
    list.forEach((h, i) => {
      const b = el("button", { type: "button", class: "history-item", "data-index": String(i) });
      b.append(el("span", { class: "h-badge" }, EMOJI[h.sentiment.label] || ""),
               el("span", { class: "h-query" }, h.query),
               el("time", { datetime: h.time, class: "muted" }, new Date(h.time).toLocaleString(UI_LANG === "zh" ? "zh-CN" : "en-GB")));
      const li = el("li");
      li.append(b);
      ol.append(li);
    });
  }

  $("history").addEventListener("click", (e) => {
    const b = e.target.closest(".history-item");
    if (!b) return;
    const h = history()[Number(b.dataset.index)];
    if (!h) return;
    if (current) current.abort();
    input.value = h.query;
    reset();
    finish({ ...h, timings_ms: { total: h.latency_ms } }, h.lang, false);
  });

  function toMarkdown(list) {
    const lines = [`# ${tr("history_title")}`, ""];
    list.forEach((h, i) => {
      lines.push(`## ${i + 1}. ${h.query}`, "",
                 `- ${tr("time")}: ${h.time}`,
                 `- ${tr("sentiment")}: ${EMOJI[h.sentiment.label] || ""} ${tr(h.sentiment.label, h.lang)} (${Math.round(h.sentiment.confidence * 100)}%)`,
                 `- ${tr("route")}: ${h.route}`, `- ${tr("latency")}: ${Math.round(h.latency_ms || 0)} ms`, "",
                 h.answer, "");
      const src = h.route === "no_answer" ? h.suggestions : h.sources;
      if (src.length) {
        lines.push(`${tr("sources")}:`, "");
        for (const s of src) lines.push(`${s.n}. [${s.title}${s.heading ? " › " + s.heading : ""}](${location.origin}${docsHref(s.page, s.anchor)})`);
        lines.push("");
      }
    });
    return lines.join("\n");
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function exporter(kind) {
    return () => {
      const list = history();
      if (!list.length) { say(tr("nothing")); return; }
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
      if (kind === "md") download(`kbgate-history-${stamp}.md`, "text/markdown;charset=utf-8", toMarkdown(list));
      else download(`kbgate-history-${stamp}.json`, "application/json", JSON.stringify(list, null, 2));
    };
  }

  $("export-md").addEventListener("click", exporter("md"));
  $("export-json").addEventListener("click", exporter("json"));
  $("clear-history").addEventListener("click", () => {
    localStorage.removeItem(HISTORY_KEY);
    drawHistory();
    say(tr("cleared"));
  });

  // Exposed for tests and for tools that export programmatically.
  window.kbgate = { toMarkdown: () => toMarkdown(history()), history };
  loadStatus();
  drawHistory();
})();
