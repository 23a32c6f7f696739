"""The warm assistant: grounded answers and troubleshooting replies from wiki passages.

Each role's system prompt is a fixed prefix whose KV cache is computed once.
Passages enter the prompt as numbered data; the answer must cite them as [n].
"""
from __future__ import annotations

from typing import Iterator

from kbgate.compress import compress
from kbgate.config import AnswerConfig, EscalationConfig
from kbgate.engine import Engine, Finish
from kbgate.grounding import Passage, message
from kbgate.prompts import Prompts, fill
from kbgate.text import strip_special

NO_ANSWER = "NO_ANSWER"


class Assistant:
    """Write answers grounded in passages; one instance per LM, roles picked by prompt."""

    ROLES = ("answer", "troubleshoot")

    def __init__(self, engine: Engine, prompts: Prompts, cfg: AnswerConfig, escalation: EscalationConfig):
        self.engine, self.cfg, self.escalation = engine, cfg, escalation
        self.user = {r: prompts.text(f"{r}.user.txt") for r in self.ROLES}
        # each role's fixed prefix: its system prompt and, where prompts/ has one, a worked
        # example; the engine caches it once
        self.prefix, self.example_reply = {}, {}
        for r in self.ROLES:
            self.prefix[r] = [{"role": "system", "content": prompts.text(f"{r}.system.txt")}]
            self.example_reply[r] = ""  # a reply copying it is not grounded (see copies_example)
            if prompts.exists(f"{r}.example.user.txt"):
                self.example_reply[r] = prompts.text(f"{r}.example.reply.txt")
                self.prefix[r] += [{"role": "user", "content": prompts.text(f"{r}.example.user.txt")},
                                   {"role": "assistant", "content": self.example_reply[r]}]
        self.chat_system = prompts.text("chat.system.txt")
        self.answer_in = dict(prompts.table("languages.tsv"))  # "zh" -> "请用中文回答"
        for r in self.ROLES:
            engine.register_prefix(self.prefix[r])
        engine.register_prefix([{"role": "system", "content": self.chat_system}])

    def format_passages(self, passages: list[Passage], question: str) -> str:
        blocks = []
        for p in passages:
            body = compress(strip_special(p.text).strip(), question, self.cfg.passage_tokens, self.engine.count_tokens)
            where = " › ".join(x for x in (p.title, p.heading) if x and x != p.title) or p.title
            blocks.append(f"[{p.n}] ({where})\n{body}")
        return "\n\n".join(blocks)

    def prompt_messages(self, role: str, question: str, passages: list[Passage]) -> list[dict]:
        from kbgate.text import language
        user = fill(self.user[role], passages=self.format_passages(passages, question), question=question,
                    answer_in=self.answer_in.get(language(question), self.answer_in.get("en", "")))
        return self.prefix[role] + [{"role": "user", "content": user}]

    def prompt_tokens(self, role: str, question: str, passages: list[Passage]) -> int:
        return self.engine.prompt_tokens(self.prompt_messages(role, question, passages))

    def stream(self, role: str, question: str, passages: list[Passage],
               max_new_tokens: int | None = None) -> Iterator[str | Finish]:
        """Stream the reply; a reply that starts with NO_ANSWER yields nothing but the Finish."""
        messages = self.prompt_messages(role, question, passages)
        gen = self.engine.stream(messages, max_tokens=max_new_tokens or self.cfg.max_new_tokens,
                                 repetition_penalty=self.cfg.repetition_penalty)
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
                    yield Finish("stop", self.engine.prompt_tokens(messages), 0)
                    return
                piece, head = head, None
            yield piece

    def chat_messages(self, messages: list[dict]) -> list[dict]:
        """The plain assistant role (no retrieval); our system prompt unless the caller gave one."""
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.chat_system}, *messages]
        return messages

    def escalation_text(self, lang: str, after_steps: bool = True) -> str:
        return message("escalate" if after_steps else "human", lang,
                       contact=self.escalation.contact, url=self.escalation.url)
