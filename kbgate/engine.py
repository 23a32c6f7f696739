"""The one model boundary: what the gate, the answer roles, the OpenAI layer and the
benchmarks may ask of a language model, whatever runs it.

Callers speak in chat messages and label words; each engine owns its tokenizer,
chat template, KV prefix reuse and threads. Backends live in `kbgate.engines.*`
(llama.cpp in-process, transformers as the reference, any OpenAI-compatible
server) and are picked by `[model] engine`; nothing outside them imports torch,
llama_cpp or an HTTP client for the model.

Messages are `{"role": "system" | "user" | "assistant", "content": str}`. With
`open_last=True` the last message is left open: the template's end-of-turn marker
is not added, so the model continues that message's text (the gate's few-shot
list ends with '类别：' inside the user turn and reads the next token there).

Not handled here: batching of several prompts in one call (a server engine batches
concurrent requests itself), tool calls, images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

Message = dict  # {"role": str, "content": str}


@dataclass(frozen=True)
class Finish:
    """The last item of `Engine.stream`: why it stopped and the token counts."""
    reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class EngineInfo:
    """What runs the model, for status bars, /v1/models, logs and benchmarks."""
    engine: str  # "llamacpp" | "transformers" | "openai" | "fake"
    model: str  # the model's display name
    quantization: str  # "Q4_K_M", "bf16", "float32", "remote", ...
    device: str  # "cpu", "cpu (avx512_bf16)", "http://host:8000/v1"
    threads: int  # compute threads in this process (0 = not ours to set: a remote server)

    def as_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Engine(Protocol):
    """A language model behind one lock-free face; implementations serialize internally."""

    def classify(self, messages: Sequence[Message], choices: Sequence[str], *,
                 open_last: bool = True) -> dict[str, float]:
        """One forward pass: each choice's next-token probability after the prompt.

        The probability of a choice is that of its first token, softmaxed over the
        choices' first tokens only (so the values sum to 1). Choices whose first
        tokens coincide are a `ValueError`: the logits could not tell them apart.
        """

    def stream(self, messages: Sequence[Message], *, max_tokens: int, stop: Sequence[str] | None = None,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               repetition_penalty: float = 1.0) -> Iterator[str | Finish]:
        """Yield text pieces of the assistant's reply as they are decoded, then one `Finish`.

        Greedy when `temperature` is 0. `repetition_penalty` > 1 damps tokens the
        reply already produced. Text before a `stop` string is yielded, the stop
        string itself never. Closing the iterator stops decoding.
        """

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's tokenizer (no special tokens added)."""

    def prompt_tokens(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        """Tokens of the rendered prompt for `messages` (for usage and context limits)."""

    def register_prefix(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        """Hint that prompts will often start with these messages: cache their state once.

        Returns the prefix's length in tokens. Engines whose server caches prefixes
        itself may only count them.
        """

    def info(self) -> EngineInfo:
        """Engine, model, quantization, device and threads."""
