"""The query pipeline every front end shares: gate → route → retrieval → grounded answer.

`ask(query)` returns a `Result`; `ask(query, stream=True)` yields events
`("sentiment", {...})`, `("sources", [...])`, `("token", str)`... and
`("done", result_dict)`. Plain Python: no Flask here.

`caller` (kbgate.access.Caller) limits every stage to the pages that caller may read:
retrieval, sources, suggestions, the fix section quoted for a troubleshooting reply. None
means no restriction and is for in-process tools only (bench/, `kbgate eval`); the front
ends always pass a Caller for a request from the network (web.identity).

Every Result has an `answer_id` (kbgate.feedback.new_answer_id). An answer to a caller
(not None) is recorded in the feedback store for votes; the store's votes are the
ranking prior passed to every retrieval call (kbgate.prior; `[feedback] strength = 0`
ranks without them). Recording is one INSERT; a store that fails is logged, never fatal.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

from kbgate import metrics
from kbgate.admission import Admission, Cancelled, Ticket
from kbgate.answer import Assistant
from kbgate.grounding import (Passage, attribute, citations, copies_example, count_steps, drop_copied, drop_echo,
                              drop_passage_headers, fix_steps, is_fix, message, quoted_steps_reply, with_ack,
                              without_contact)
from kbgate.decide import asks_value, extract, quote_value
from kbgate.quotes import check_values, is_yes_no, quote_verdict
from kbgate.retrieval import bilingual, is_steps_section
from kbgate.config import Config
from kbgate.errors import KBGateError
from kbgate.feedback import Feedback, caller_identity, new_answer_id
from kbgate.gate import SentimentGate
from kbgate.engine import Finish
from kbgate.translate import fuse_hits, other_language
from kbgate.text import check_query, language
from kbgate.values import asked_kinds

log = logging.getLogger("kbgate.pipeline")
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}


@dataclass
class Source:
    n: int
    page: str
    title: str
    heading: str
    anchor: str
    path: str
    url: str
    score: float
    relevance: float
    type: str
    snippet: str
    text: str
    cited: bool = False


@dataclass
class Result:
    query: str
    sentiment: dict  # {"label", "confidence", "kind", "probs"}
    route: str  # "answer" | "troubleshooting" | "no_answer"
    reason: str
    answer: str  # the final text every front end ends with (it ends with escalation["text"] when set)
    sources: list[Source] = field(default_factory=list)
    suggestions: list[Source] = field(default_factory=list)
    timings_ms: dict = field(default_factory=dict)
    escalation: dict | None = None  # {"contact", "url", "text"}: the human to reach, for front ends to render once
    answer_id: str = ""  # "ans_<16 hex>": what a 👍/👎 names (POST /api/feedback, the page, Slack)

    def as_dict(self) -> dict:
        return asdict(self)


class Events:
    """The event stream of one query, already started: admission (Busy) and the gate ran
    when it was made. Closing it (or dropping it) frees the job slot.

    "token" events are the model's reply as it is decoded: provisional. The final text is
    `done`'s `answer` (grounding may move citations, drop sentences or quote the wiki's steps).
    """

    def __init__(self, gen: Iterator[tuple[str, object]]):
        self._gen = gen
        self._first = [next(gen)]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, object]:
        item = self._first.pop() if self._first else next(self._gen)
        if item[0] == "done":
            metrics.record_result(item[1])  # stage histograms, counters and the request's log line
        return item

    def close(self) -> None:
        self._gen.close()


def _snippet(text: str, n: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[:n].rstrip() + "…"


def with_other_language(retriever, relevant: list, query: str, n: int, deeper=lambda: []) -> list:
    """The first `n` relevant sources, the last of them given to the best one in the wiki's other language when
    all `n` are in the query's own language (and one passed the relevance bar).

    Why: BM25 and MiniLM read only the query's language, so for an English question every English page that
    shares a word ("days", "request") outranks the Chinese page that answers it ("married" -> the 婚假 row);
    the cross-language list brings that page to rank 4-10, short of the passages. A slot for it lets the
    model see the answer (kb/ answers set, tune half, 10 hits deep: the right page among English questions'
    passages 15/24 -> 18/24, none lost, no off-topic question gained a passage). It needs no translation
    decode. `deeper()`: relevant hits ranked after `relevant`, asked for only when the slot is open. Not used when a
    translated pass ran (kbgate.translate): there the other language had its own search, and a slot taken
    from it cost Chinese questions their third passage (tune half: 2 right pages lost, none gained). Nor on the
    troubleshooting route, where the third passage is often the page's own fix section.
    """
    top = relevant[:n]
    if n < 2 or len(top) < n:
        return top  # every relevant source is already among the passages
    if other_language(retriever, top, query):
        return top  # the other language has a passage already
    other = other_language(retriever, list(relevant[n:]), query) or other_language(retriever, deeper(), query)
    if not other:
        return top
    return top[: n - 1] + [other[0]]


class Pipeline:
    """Owns the gate, the retriever and the assistant; every model job passes `admission`."""

    def __init__(self, cfg: Config, gate: SentimentGate, retriever, assistant: Assistant, translator=None):
        self.cfg, self.gate, self.retriever, self.assistant = cfg, gate, retriever, assistant
        self.translator = translator  # kbgate.translate.QueryTranslator: a second pass in English, or None
        s = cfg.server  # max_pending bounds everything admitted; engine_slots of it run at once
        slots = min(s.engine_slots, s.max_pending)
        self.admission = Admission(slots, s.max_pending - slots, s.deadline_s)
        self.feedback = Feedback(cfg)  # a shallow copy (a hot-reloaded index) shares it

    def admit(self, kind: str = "search", cancelled: Callable[[], bool] | None = None) -> Ticket:
        """A job slot (release it, or use it as a context manager), or Busy at once."""
        return self.admission.enter(kind, cancelled)

    def url(self, page: str, anchor: str = "") -> str:
        base = self.cfg.server.wiki_base_url.rstrip("/")
        return f"{base}/docs/{page}" + (f"#{anchor}" if anchor else "")

    def search(self, query: str, k: int, *, troubleshooting: bool = False, tags=None, caller=None,
               also: str | None = None) -> list[Source]:
        """Sources for `query` among the pages `caller` may read (None: all); `also`: the query in the
        wiki's other language, searched beside it and fused (kbgate.translate)."""
        prior = self.prior()
        queries = [query] + ([also] if also else [])
        lists = self.retriever.search_many(queries, k=3 * k if also else k, prefer_troubleshooting=troubleshooting,
                                           tags=tags, caller=caller, **({"prior": prior} if prior is not None else {}))
        hits = lists[0]
        if also:
            own, crossed = lists[0][:k], other_language(self.retriever, lists[1], query)
            if self.translator.target(query) == "zh":
                # an English question: the `cross` list already brings Chinese pages into its own pass, and
                # reinforcing them put them above the right English page (kbgate.translate.other_language);
                # the Chinese pass only adds pages, two at most
                hits = fuse_hits([own, other_language(self.retriever, crossed, query, own=own)[:2]], k)
            else:
                hits = fuse_hits([own, crossed[:k]], k)
            # a page in the other language is judged by the pass in its own language: the translated
            # question's relevance, where that pass found the same section
            lifted = {(h.page, h.heading): h.relevance for h in crossed}
            hits = [replace(h, relevance=max(h.relevance, lifted.get((h.page, h.heading), 0.0))) for h in hits]
        return [self._source(i + 1, h, caller) for i, h in enumerate(hits)]

    def index_dir(self):
        """The folder of the index searched (the feedback file's default home); None without one."""
        return getattr(getattr(self.retriever, "index", None), "dir", None)

    def prior(self):
        """The votes' ranking prior, or None (feedback or the prior off, or its file unusable: logged)."""
        try:
            return self.feedback.prior(self.index_dir())
        except KBGateError as e:
            if not getattr(self.feedback, "warned", False):  # once, not at every search
                log.warning("ranking without feedback votes: %s", e.message)
                self.feedback.warned = True
            return None

    def _finish(self, result: Result, caller) -> Result:
        """Give the result its answer id and record it for votes (when a caller asked and feedback is on)."""
        result.answer_id = new_answer_id()
        if caller is None or not self.feedback.enabled:
            return result
        cited = list(dict.fromkeys(s.page for s in result.sources if s.cited))
        shown = list(dict.fromkeys(s.page for s in result.sources + result.suggestions))
        try:
            self.feedback.store(self.index_dir()).record(result.answer_id, result.query, result.route,
                                                         str(result.sentiment.get("label", "")), cited, shown,
                                                         caller_identity(caller))
        except (KBGateError, sqlite3.Error) as e:  # the answer still goes out; a vote on it will be a 404
            log.warning("answer %s not recorded for feedback: %s", result.answer_id, getattr(e, "message", e))
        return result

    def _source(self, n: int, h, caller=None) -> Source:
        return Source(n, h.page, h.title, h.heading, h.anchor, h.path, self.url(h.page, h.anchor),
                      round(float(h.score), 5), round(float(h.relevance), 4), h.type, _snippet(h.text),
                      self.retriever.section_text(h, caller))

    def ask(self, query: str, *, stream: bool = False, k: int | None = None, tags=None,
            max_new_tokens: int | None = None, cancelled: Callable[[], bool] | None = None, caller=None):
        """Answer one query: a Result, or with stream=True an iterator of (event, data).

        `cancelled()` true (the client is gone) stops the work between decode steps with Cancelled.
        `caller`: only pages it may read reach the answer, its sources and suggestions (None: all;
        never None for a network request).
        """
        query = check_query(query, self.cfg.gate.max_query_chars)
        events = Events(self._run(query, k or self.cfg.retrieval.k, tags, max_new_tokens, cancelled, caller))
        if stream:
            return events
        for kind, data in events:
            if kind == "done":
                return data
        raise RuntimeError("pipeline ended without a result")

    def _run(self, query: str, k: int, tags, max_new_tokens, cancelled, caller) -> Iterator[tuple[str, object]]:
        with self.admit("search", cancelled) as ticket:
            try:
                yield from self._stages(query, k, tags, max_new_tokens, cancelled or (lambda: False), ticket.overdue,
                                        caller)
            except (Cancelled, GeneratorExit):
                ticket.record = False  # cut short: its duration would skew the expected wait
                raise

    def _stages(self, query: str, k: int, tags, max_new_tokens, cancelled,
                overdue=lambda: False, caller=None) -> Iterator[tuple[str, object]]:
        t0 = time.perf_counter()
        ms = lambda: round((time.perf_counter() - t0) * 1000, 1)  # noqa: E731
        timings: dict = {}
        lang = language(query)
        s = self.gate.classify([query])[0]
        timings["gate"] = ms()
        sentiment = {k_: v for k_, v in s.as_dict().items() if k_ != "ms"}
        yield "sentiment", sentiment
        trouble = self.gate.is_troubleshooting(s)
        route = "troubleshooting" if trouble else "answer"
        reason = (f"negative with confidence {s.probs['negative']:.2f} ≥ {self.cfg.gate.negative_threshold}"
                  if trouble else f"{s.label} ({s.confidence:.2f}): not confidently negative")
        if cancelled():
            raise Cancelled("the client went away")
        also = None
        if self.translator is not None and self.translator.wanted(query):
            t_t = time.perf_counter()
            also = self.translator.translate(query, cancelled)
            timings["translate"] = round((time.perf_counter() - t_t) * 1000, 1)
            if also:
                reason += f"; also searched in {LANGUAGE_NAMES[self.translator.target(query)]} as “{also}”"
        t_r = time.perf_counter()
        n = max(k, self.cfg.answer.passages)
        hits = self.search(query, n, troubleshooting=trouble, tags=tags, caller=caller, also=also)
        relevant = [h for h in hits if h.relevance >= self.cfg.answer.min_score]
        # a second, deeper search (only when it is needed) offers a page in the other language
        deeper = lambda: [h for h in self.search(query, 2 * n, tags=tags, caller=caller)[n:]  # noqa: E731
                          if h.relevance >= self.cfg.answer.min_score]
        passages = relevant[: self.cfg.answer.passages] if also or trouble else \
            with_other_language(self.retriever, relevant, query, self.cfg.answer.passages, deeper)
        timings["retrieval"] = round((time.perf_counter() - t_r) * 1000, 1)
        for i, p in enumerate(passages, 1):
            p.n = i  # numbered as the model sees them and cites them
        if not passages:
            yield from self._no_answer(query, sentiment, hits, lang, trouble, timings, ms,
                                       "no passage reached the relevance threshold", caller)
            return
        yield "sources", [asdict(p) for p in passages]
        role = "troubleshoot" if trouble else "answer"
        text, first = "", None
        given = [Passage(p.n, p.title, p.heading, p.text, p.page) for p in passages]
        with closing(self.assistant.stream(role, query, given, max_new_tokens)) as pieces:
            for piece in pieces:
                if isinstance(piece, Finish):
                    metrics.tokens_generated(piece.completion_tokens, role)  # the engine's own count
                    break
                if cancelled():  # between decode steps: closing the stream stops the engine
                    raise Cancelled("the client went away")
                if overdue():  # [server] deadline_s: the reply so far is checked and answered like a full one
                    reason += f"; the reply was cut at the {self.cfg.server.deadline_s:g} s deadline"
                    break
                if first is None:
                    first = timings["first_token"] = ms()
                text += piece
                yield "token", piece
        # keep the model's [n] where its passage supports the sentence; cite what else a passage supports
        text, cited = attribute(drop_passage_headers(text), given, verify=self.cfg.answer.verify_citations)
        if cited and self.cfg.answer.verify_citations:
            text = drop_echo(text, query)  # the complaint repeated back is not an answer
            cited = citations(text, len(given))
        example = self.assistant.example_reply[role]
        if cited and self.cfg.answer.verify_citations and copies_example(text, example, given):
            cited = []  # the worked example parroted back: not an answer from these passages
        if cited:
            text, cited, notes = self._check(text, given, query, lang, trouble)
            reason += "".join(f"; {x}" for x in notes)
        checks = self.cfg.answer.verify_citations and self.cfg.answer.check_values
        if not trouble and checks:
            text, cited, note = self._decide(text, cited, given, passages, query, lang, caller)
            reason += note
        steps = True  # the reply ends with the escalation line for "if these steps did not help"
        if trouble:
            text, cited, note = self._troubleshoot(text, cited, given, passages, lang, example, caller)
            reason += note
            if cited and checks and asked_kinds(query):
                # "保安电话到底是多少": a complaint that asks for a kind of value gets the wiki's line with it
                # after the acknowledgement, above the steps
                text, cited, note = self._decide(text, cited, given, passages, query, lang, caller, at=1)
                reason += note
            elif not cited and checks:
                # no fix section to quote ("lost my badge a second time, how much is the replacement?"): a
                # complaint that asks for a value, or yes or no, gets the wiki's line that answers it
                text, cited, note = self._decide(text, cited, given, passages, query, lang, caller)
                reason += note
                steps = False
        if not cited:
            yield from self._no_answer(query, sentiment, hits, lang, trouble, timings, ms,
                                       "the reply is not grounded in any passage" if text.strip()
                                       else "the model found no answer in the passages", caller)
            return
        for p in passages:
            p.cited = p.n in cited
        text, escalation = self._escalate(text, lang, trouble, after_steps=steps)
        timings.setdefault("first_token", None)
        timings["total"] = ms()
        yield "done", self._finish(Result(query, sentiment, route, reason, text, passages, [], timings, escalation),
                                   caller)

    def _escalate(self, text: str, lang: str, trouble: bool, after_steps: bool) -> tuple[str, dict | None]:
        """The final text and, on the troubleshooting route, the contact it ends with (as a field too)."""
        text = text.strip()
        if not trouble:
            return text, None
        line = self.assistant.escalation_text(lang, after_steps=after_steps)
        esc = self.cfg.escalation
        return f"{text}\n\n{line}", {"contact": esc.contact, "url": esc.url, "text": line}

    def _check(self, text: str, given: list[Passage], query: str, lang: str, trouble: bool):
        """Values the cited passage lacks, and yes/no verdicts, give way to the passage's own line."""
        if not (self.cfg.answer.check_values and self.cfg.answer.verify_citations):
            return text, citations(text, len(given)), []  # unverified: the model's replies are trusted
        text, notes = check_values(text, given, query, lang, topic=not trouble)
        if not trouble:
            cited = [p for p in given if p.n in citations(text, len(given))]
            text, quoted = quote_verdict(text, cited or given, query, lang)
            notes += ["a yes/no question: the deciding line is quoted"] if quoted else []
        return text, citations(text, len(given)), notes

    def _decide(self, text: str, cited: list[int], given: list[Passage], passages: list[Source], query: str,
                lang: str, caller=None, at: int = 0) -> tuple[str, list[int], str]:
        """A value question whose reply leaves the value out gets the wiki's line holding it quoted first; one
        whose reply is not grounded (though the passages passed the relevance bar) gets that line, or for a
        yes/no question the deciding line, as its answer instead of "no answer" (kbgate.decide).

        The line is looked for in the cited passages, then the others, then the rest of the best of
        them's page (the value may sit in another section: the leave table beside 生育津贴); a section
        quoted from there joins the sources. `at`: the reply's line the quote goes before (1: after a
        troubleshooting reply's acknowledgement).
        """
        if not given or not (asks_value(query) or is_yes_no(query)) or (cited and is_yes_no(query)):
            return text, cited, ""  # nothing to look up, or a yes/no reply whose deciding line _check quoted
        first = [p for p in given if p.n in cited]
        pool = first + [p for p in given if p not in first]
        extra = self._page_rest((first or given)[0].page, passages, caller)
        pool += [Passage(x.n, x.title, x.heading, x.text, x.page) for x in extra]
        if cited:
            out, quoted = quote_value(text, pool, query, lang, self.similar(), at, self.glossed())
            note = "; a value question the reply left unanswered: the wiki's line is quoted"
        else:
            out = extract(query, pool, lang, self.similar(), self.glossed()) or ""
            quoted, note = bool(out), "; the model's reply was not grounded, so the wiki's line that answers it is quoted"
        if not quoted:
            return text, cited, ""
        for x in [x for x in extra if f"[{x.n}]" in out]:  # joins the sources (the done event carries them),
            n = len(passages) + 1                              # numbered right after them
            out, x.n = out.replace(f"[{x.n}]", f"[{n}]"), n
            passages.append(x)
        return out, citations(out, len(passages)), note

    def _page_rest(self, page: str, passages: list[Source], caller=None) -> list[Source]:
        """The sections of `page` not among the passages, as sources numbered after them."""
        have = {(p.page, p.heading) for p in passages}
        rest = [h for h in self.retriever.page_sections(page, caller) if (h.page, h.heading) not in have]
        return [self._source(len(passages) + i, h, caller) for i, h in enumerate(rest, 1)]

    def glossed(self):
        """text -> its terms on the dictionary's English side (the index's, kbgate.retrieval), or None."""
        return getattr(self.retriever, "gloss_text", None)

    def similar(self):
        """(query, lines) -> cosines by the first embedder that compares Chinese with English, or None."""
        e = next((e for e in getattr(self.retriever, "embedders", ()) if bilingual(e)), None)
        if e is None:
            return None
        from indexer.embedders import embed_queries
        return lambda query, lines: e.embed(lines) @ embed_queries(e, [query])[0]

    def _troubleshoot(self, text: str, cited: list[int], given: list[Passage], passages: list[Source],
                      lang: str, example: str, caller=None) -> tuple[str, list[int], str]:
        """At least two steps from the best page's fix section, an acknowledgement in
        the query's language, no copied example and no contact (it is appended once)."""
        # the best-ranked troubleshooting page with a fix section, else any page with one (an FAQ chunk is
        # typed troubleshooting but has no steps; a how-to page's "连接步骤" are not a fix)
        fixes = {p.page: self.retriever.steps_section(p.page, caller) for p in passages}
        target = (next((pg for pg, fix in fixes.items() if fix and fix.type == "troubleshooting"), None)
                  or next((p.page for p in passages if is_steps_section(p.heading) or fixes[p.page]), None))
        esc = self.cfg.escalation
        text = without_contact(drop_copied(text, example, given), esc.contact, esc.url)
        if not any(is_fix(g) for g in given) and target is None and cited and count_steps(text) >= 2:
            return with_ack(text, lang, example), citations(text, len(given)), ""  # no fix section to hold it to
        steps, n = fix_steps(text, given, target)
        if cited and n >= 2:
            return with_ack(steps, lang, example), citations(steps, len(given)), ""
        # The 0.5B model sometimes echoes the complaint, copies its worked example or lists
        # symptoms; a frustrated user still gets the wiki's own fix steps, quoted and cited: the
        # target page's, else the next page among the passages that has a fix section.
        pages = [target] if target else []
        pages += [p.page for p in passages if p.page not in pages and (fixes[p.page] or is_steps_section(p.heading))]
        for page in pages or [None]:
            quoted = self._quote_fix(page, given, passages, lang, caller)
            if quoted:
                return (*quoted, "; the model's reply had no grounded steps from a fix section, "
                                 "so the wiki's steps are quoted")
        return text, cited, ""

    def _quote_fix(self, page: str | None, given: list[Passage], passages: list[Source], lang: str, caller=None):
        """The quoted steps of `page`'s fix section (among the passages, or fetched from the index)."""
        quoted = quoted_steps_reply([g for g in given if page is None or g.page == page], lang)
        if quoted or page is None:
            return quoted
        fix = self.retriever.steps_section(page, caller)  # None for a page the caller may not read
        if fix and (fix.page, fix.heading) not in {(p.page, p.heading) for p in passages}:
            # the page's own fix section, though it did not rank among the passages
            extra = self._source(len(passages) + 1, fix, caller)
            quoted = quoted_steps_reply([Passage(extra.n, extra.title, extra.heading, extra.text, extra.page)], lang)
            if quoted:
                passages.append(extra)  # the done event carries the final sources
        return quoted

    def _no_answer(self, query, sentiment, hits, lang, trouble, timings, ms, why, caller=None):
        text = message("no_answer", lang)
        seen: set = set()
        suggestions = [h for h in hits if not (h.page in seen or seen.add(h.page))][:3]  # best chunk per page
        if suggestions:
            text += "\n" + message("suggest", lang) + " " + "; ".join(h.title for h in suggestions)
        text, escalation = self._escalate(text, lang, trouble, after_steps=False)
        timings.setdefault("first_token", None)
        timings["total"] = ms()
        yield "done", self._finish(Result(query, sentiment, "no_answer", why, text, [], suggestions, timings,
                                          escalation), caller)
