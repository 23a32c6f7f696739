"""Grounding: check a reply against the passages it cites, and the wiki's own steps.

Pure text functions (no model): sentence-level attribution of `[n]` citations,
detection of a parroted worked example, and troubleshooting replies built from a
page's numbered fix steps. The pipeline applies them after the model's reply.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from kbgate.prompts import fill
from kbgate.retrieval import is_cause_section, is_steps_section

CITATION = re.compile(r"\[(\d{1,2})\]")

MESSAGES = {
    "no_answer": {
        "zh": "抱歉，Wiki 里没有找到能回答这个问题的内容。",
        "en": "Sorry, the wiki has no answer to this question.",
    },
    "suggest": {"zh": "最接近的页面：", "en": "Closest pages:"},
    "escalate": {
        "zh": "如果以上步骤仍不能解决，请联系 {contact}，或提交工单：{url}",
        "en": "If these steps don't fix it, contact {contact}, or open a ticket: {url}",
    },
    "ack": {
        "zh": "遇到这种情况确实让人着急，可以按 Wiki 里的这些步骤排查：",
        "en": "Sorry this keeps getting in your way. These are the wiki's steps for it:",
    },
    "human": {
        "zh": "需要人工帮助？请联系 {contact}，或提交工单：{url}",
        "en": "Need a human? Contact {contact}, or open a ticket: {url}",
    },
}


def message(key: str, lang: str, **values: str) -> str:
    return fill(MESSAGES[key]["zh" if lang == "zh" else "en"], **values)


def citations(text: str, n_passages: int) -> list[int]:
    """Passage numbers cited as [n] in `text`, in order of first use, valid ones only."""
    seen: list[int] = []
    for m in CITATION.finditer(text):
        n = int(m.group(1))
        if 1 <= n <= n_passages and n not in seen:
            seen.append(n)
    return seen


_SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=[.;；])(?=\s)")  # zero-width: split keeps every character
_END_PUNCT = "。！？.!?；;：:，,"
_CITED = re.compile(r"\s*\[\d{1,2}\]")


def attribute(text: str, passages: list["Passage"], min_share: float = 0.5,
              min_cited_share: float = 0.3, verify: bool = True) -> tuple[str, list[int]]:
    """Ground the reply sentence by sentence; return (cited text, passage numbers cited).

    A sentence's support from a passage is the share of its terms the passage holds.
    The model's own [n] stays where passage n gives at least `min_cited_share`
    (half that across languages: an English answer from a Chinese page shares only
    names, numbers and Latin terms);
    an uncited or wrongly cited sentence gets the passage with the largest share if
    that is at least `min_share`. A sentence stating values (15 天, 10:00, E02) that all
    occur in a passage is grounded by that passage whatever its words: values cross
    languages where words do not ("the 10th" from "每月 10 日"), and the value check
    (kbgate.quotes) judges them next. When fewer than half of the sentences are grounded
    (a small model may parrot its worked example) the reply is not grounded: the
    list comes back empty. `verify=False` trusts the model's own citations (fakes in tests).
    """
    from indexer.tokenize import detect_lang, tokenize

    from kbgate.values import stated, values

    vocab = {p.n: set(tokenize(p.text)) for p in passages}
    lang = {p.n: detect_lang(p.text) for p in passages}
    held = {p.n: values(p.text) for p in passages}

    def by_values(said: set) -> list[int]:
        """The passages stating every value of a sentence (none when it states none)."""
        return [n for n, pool in held.items() if said and all(stated(v, pool) for v in said)]
    counts = {"sentences": 0, "grounded": 0}

    def cite(sentence: str) -> str:
        bare = _CITED.sub("", sentence)
        terms = set(tokenize(bare))
        if len(terms) < 2:
            return sentence  # too short to judge: "1." or "好的"
        counts["sentences"] += 1
        share = {n: len(terms & v) / len(terms) for n, v in vocab.items()}
        own = [int(m) for m in CITATION.findall(sentence)]
        here = detect_lang(bare)
        said = values(bare)
        backed = by_values(said)
        keep = [n for n in dict.fromkeys(own) if n in vocab and (not verify or n in backed or
                share[n] >= (min_cited_share if lang[n] == here else min_cited_share / 2))]
        if keep and keep == list(dict.fromkeys(own)):
            counts["grounded"] += 1
            return sentence  # the model's citations all hold: leave them where it put them
        if not keep:
            best, n = max((v, n) for n, v in share.items())
            keep = [n] if best >= min_share else max(((share[m], m) for m in backed), default=(0, None))[1:]
            keep = [m for m in keep if m is not None]
        if not keep:
            return bare
        counts["grounded"] += 1
        marks = "".join(f" [{n}]" for n in keep)
        body = bare.rstrip()
        tail = bare[len(body):]
        if body and body[-1] in _END_PUNCT:
            return f"{body[:-1]}{marks}{body[-1]}{tail}"
        return f"{body}{marks}{tail}"

    if not vocab:
        return text, []
    cited = "\n".join("".join(cite(x) for x in _SENTENCE_END.split(line)) for line in text.split("\n"))
    if verify and counts["grounded"] * 2 < counts["sentences"]:
        return cited, []
    return cited, citations(cited, max(vocab))


_STEP = re.compile(r"^ {0,3}\d{1,2}[.)、]\s+(\S.*)$")
_MD = [(re.compile(r"<(https?://[^>\s]+)>"), r"\1"), (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),
       (re.compile(r"\*\*|__|<[^>]+>"), ""),
       (re.compile(r"`([^`]*)`"), r"\1")]


def _sentences(text: str) -> list[set]:
    from indexer.tokenize import tokenize

    parts = (x for line in text.split("\n") for x in _SENTENCE_END.split(line))
    return [t for t in (set(tokenize(_CITED.sub("", x))) for x in parts) if len(t) >= 3]


def _copied(example: str, passages) -> Callable[..., bool]:
    """A test for one sentence's terms: the example holds `min_share` of them, and more than any passage."""
    from indexer.tokenize import tokenize

    theirs = _sentences(example)
    vocab = [set(tokenize(p.text)) for p in passages]

    def copied(m: set, min_share: float = 0.7) -> bool:
        if not theirs or not m:
            return False
        from_example = max(len(m & t) / len(m) for t in theirs)
        from_passages = max((len(m & v) / len(m) for v in vocab), default=0.0)
        return from_example >= min_share and from_example > from_passages
    return copied


def copies_example(reply: str, example: str, passages: list["Passage"] = (), min_share: float = 0.7) -> bool:
    """True when most of the reply's sentences are the worked example's own (a 0.5B model
    parrots its example; the wiki may share enough words with it to pass the grounding check).

    A sentence counts as copied when the example holds `min_share` of its terms and more
    of them than any passage does: copying what the passages also say is fine.
    """
    mine = _sentences(reply)
    copied = _copied(example, passages)
    return bool(mine) and sum(copied(m, min_share) for m in mine) * 2 >= len(mine)


def drop_copied(reply: str, example: str, passages: list["Passage"] = (), min_share: float = 0.6) -> str:
    """The reply without the sentences it copied from the worked example (its acknowledgement, say)."""
    from indexer.tokenize import tokenize

    copied = _copied(example, passages)
    lines = []
    for line in reply.split("\n"):
        kept = [x for x in _SENTENCE_END.split(line)
                if not ((t := set(tokenize(_CITED.sub("", x)))) and len(t) >= 3 and copied(t, min_share))]
        if "".join(kept).strip() or not line.strip():
            lines.append("".join(kept).rstrip())
    return "\n".join(lines).strip()


def drop_echo(reply: str, query: str, min_share: float = 0.8) -> str:
    """The reply without sentences that mostly repeat the query (a small model echoes the complaint)."""
    from indexer.tokenize import tokenize

    asked = set(tokenize(query))
    lines = []
    for line in reply.split("\n"):
        kept = [x for x in _SENTENCE_END.split(line)
                if not ((t := set(tokenize(_CITED.sub("", x)))) and len(t) >= 2
                        and len(t & asked) >= min_share * len(t))]
        if "".join(kept).strip() or not line.strip():
            lines.append("".join(kept).rstrip())
    return "\n".join(lines).strip()


_PASSAGE_HEADER = re.compile(r"^\[\d{1,2}\] \([^\n]*(?:\)[ \t]*)?(?:\n|$)", re.M)  # also one cut off by max_new_tokens


def drop_passage_headers(text: str) -> str:
    """Remove '[2] (Title › Heading)' lines: the model copying the prompt's passage layout."""
    return re.sub(r"\n{3,}", "\n\n", _PASSAGE_HEADER.sub("", text)).strip()


def is_fix(p: "Passage") -> bool:
    """A passage from a fix section (解决步骤 / Fix / Steps), never one of causes or symptoms."""
    return is_steps_section(p.heading) and not is_cause_section(p.heading)


def fix_steps(text: str, passages: list["Passage"], page: str | None = None) -> tuple[str, int]:
    """Keep the reply's numbered steps that cite only fix sections (of `page` when given), renumbered.

    Returns (text, steps kept). A step citing Symptoms or Cause, or nothing, is dropped:
    a list of symptoms is not a list of things to do.
    """
    fix = {p.n for p in passages if is_fix(p) and (page is None or p.page == page)}
    out, n = [], 0
    for line in text.split("\n"):
        m = _STEP.match(line.strip())
        if not m:
            out.append(line)
            continue
        cited = {int(x) for x in CITATION.findall(line)}
        if cited and cited <= fix:
            n += 1
            out.append(f"{n}. {m.group(1)}")
    return "\n".join(out).strip(), n


def with_ack(text: str, lang: str, example: str = "") -> str:
    """The reply opening with one acknowledgement in the query's language (ours when the model's is
    in another language, copies the worked example, or is missing)."""
    from indexer.tokenize import detect_lang

    lines = text.split("\n")
    first = next((i for i, x in enumerate(lines) if x.strip()), None)
    if first is None or _STEP.match(lines[first].strip()):
        return message("ack", lang) + ("\n" + text if text else "")
    head = lines[first]
    if detect_lang(_CITED.sub("", head)) != lang or (example and copies_example(head, example, ())):
        lines[first] = message("ack", lang)
    return "\n".join(lines[first:])


def without_contact(text: str, *contacts: str) -> str:
    """The reply without lines giving the human contact: the pipeline appends it once."""
    return "\n".join(x for x in text.split("\n") if not any(c and c in x for c in contacts)).strip()


def count_steps(text: str) -> int:
    """Numbered lines ('1. ...') in a reply."""
    return sum(1 for line in text.splitlines() if _STEP.match(line.strip()))


def wiki_steps(passages: list["Passage"], max_steps: int = 6, max_chars: int = 220) -> tuple[list[str], int] | None:
    """The numbered steps of the best passage that has them, as plain text, and its number.

    Passages come best first; only a section headed like a fix (解决步骤, Fix, Steps, 处理)
    gives steps: cause or symptom lists (原因, Symptoms) and how-to lists are never quoted.
    """
    for p in passages:
        if not is_fix(p):
            continue
        steps, lines = [], p.text.splitlines()
        for i, line in enumerate(lines):
            m = _STEP.match(line)
            if m:
                step = m.group(1)
                for pattern, repl in _MD:
                    step = pattern.sub(repl, step)
                step = " ".join(step.split())
                if step.endswith((":", "：")):  # 'run this:' -> the first line of the code block after it
                    code = _first_code_line(lines[i + 1:])
                    step += f" `{code}`" if code else ""
                steps.append(step if len(step) <= max_chars else step[: max_chars - 1] + "…")
        if len(steps) >= 2:
            return steps[:max_steps], p.n
    return None


def _first_code_line(lines: list[str]) -> str:
    """The first line inside the fenced code block that opens the lines (blank lines skipped)."""
    it = iter(x.strip() for x in lines)
    for line in it:
        if not line:
            continue
        if not line.startswith(("```", "~~~")):
            return ""
        return next((x for x in it if x and not x.startswith(("```", "~~~", "#", "//"))), "")  # no comments
    return ""


def quoted_steps_reply(passages: list["Passage"], lang: str) -> tuple[str, list[int]] | None:
    """A troubleshooting reply built from the wiki's own numbered steps, each cited; None if none."""
    found = wiki_steps(passages)
    if not found:
        return None
    steps, n = found
    lines = [message("ack", lang)] + [f"{i}. {step} [{n}]" for i, step in enumerate(steps, 1)]
    return "\n".join(lines), [n]


@dataclass(frozen=True)
class Passage:
    n: int
    title: str
    heading: str
    text: str
    page: str = ""  # page id, "it/vpn-auth-failed": which page a troubleshooting step comes from
