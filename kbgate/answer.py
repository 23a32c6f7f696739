"""The warm assistant: grounded answers and troubleshooting replies from wiki passages.

Each role's system prompt is a fixed prefix whose KV cache is computed once.
Passages enter the prompt as numbered data; the answer must cite them as [n].
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from kbgate.config import AnswerConfig, EscalationConfig
from kbgate.lm import Finish, LanguageModel, strip_special
from kbgate.prompts import Prompts, fill

NO_ANSWER = "NO_ANSWER"
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


@dataclass(frozen=True)
class Passage:
    n: int
    title: str
    heading: str
    text: str


class Assistant:
    """Write answers grounded in passages; one instance per LM, roles picked by prompt."""

    ROLES = ("answer", "troubleshoot")

    def __init__(self, lm: LanguageModel, prompts: Prompts, cfg: AnswerConfig, escalation: EscalationConfig):
        self.lm, self.cfg, self.escalation = lm, cfg, escalation
        self.system = {r: prompts.text(f"{r}.system.txt") for r in self.ROLES}
        self.user = {r: prompts.text(f"{r}.user.txt") for r in self.ROLES}
        self.chat_system = prompts.text("chat.system.txt")
        for r in self.ROLES:
            lm.register_prefix(lm.render([{"role": "system", "content": self.system[r]}], generation_prompt=False))
        lm.register_prefix(lm.render([{"role": "system", "content": self.chat_system}], generation_prompt=False))

    def format_passages(self, passages: list[Passage]) -> str:
        blocks = []
        for p in passages:
            body = strip_special(p.text).strip()
            if len(body) > self.cfg.passage_chars:
                body = body[: self.cfg.passage_chars].rstrip() + " …"
            where = " › ".join(x for x in (p.title, p.heading) if x and x != p.title) or p.title
            blocks.append(f"[{p.n}] ({where})\n{body}")
        return "\n\n".join(blocks)

    def prompt_ids(self, role: str, question: str, passages: list[Passage]) -> list[int]:
        user = fill(self.user[role], passages=self.format_passages(passages), question=question)
        return self.lm.encode(self.lm.render([{"role": "system", "content": self.system[role]},
                                              {"role": "user", "content": user}]))

    def stream(self, role: str, question: str, passages: list[Passage],
               max_new_tokens: int | None = None) -> Iterator[str | Finish]:
        """Stream the reply; a reply that starts with NO_ANSWER yields nothing but the Finish."""
        ids = self.prompt_ids(role, question, passages)
        gen = self.lm.generate(ids, max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)
        head = ""
        for piece in gen:
            if isinstance(piece, Finish):
                if head and not head.lstrip().startswith(NO_ANSWER):
                    yield head
                yield piece
                return
            if head is not None and len(head) < len(NO_ANSWER) + 1:
                head += piece  # hold the first characters back: they may be the sentinel
                if len(head) <= len(NO_ANSWER):
                    continue
                if head.lstrip().startswith(NO_ANSWER):
                    gen.close()
                    yield Finish("stop", len(ids), 0)
                    return
                piece, head = head, None
            yield piece

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The plain assistant role (no retrieval); our system prompt unless the caller gave one."""
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.chat_system}, *messages]
        return self.lm.encode(self.lm.render(messages))

    def escalation_text(self, lang: str) -> str:
        return message("escalate", lang, contact=self.escalation.contact, url=self.escalation.url)
