"""The `openai` engine: any OpenAI-compatible server (llama.cpp, llama-cpp-python, vLLM, Ollama).

The scale-out path: several kbgate processes share one model server that batches their
requests. Configured by `[remote]` (base_url, model, timeouts, template); the bearer key
comes from the environment variable named by `api_key_env`.

- `template = "chatml"` (default, Qwen models): prompts are rendered here in Qwen's ChatML
  and sent raw to `/v1/completions`, so the gate's open last turn works exactly as in the
  in-process engines.
- `template = "server"`: generation goes to `/v1/chat/completions` with the server's own
  template; the gate's last turn is then closed and the label word is read as the first
  token of the assistant's reply (`logprobs` + `top_logprobs`), a different prompt shape.

classify reads the label words' first-token log-probabilities from `top_logprobs` (20);
a word outside the top 20 gets the 20th value as an upper bound, and when none is there
it falls back to an `echo` scoring request (one prompt per word). A start-up probe finds
which of these the server does; one that does neither (for example llama-cpp-python
started with `--logits_all false`, or a server whose completions carry no logprobs)
makes classify fail with a message saying so, never a made-up label. Known to score:
llama-cpp-python's server (tested here), vLLM (`top_logprobs` up to its `--max-logprobs`).
Tokens are counted by the server's tokenize endpoint where it has one (llama-cpp-python
`/extras/tokenize`, llama.cpp and vLLM `/tokenize`), else estimated locally (`info()` says).

Every request carries the configured connect/read timeouts: an unreachable or hung server
is `EngineUnavailable` (503 with Retry-After), a malformed answer `EngineBadResponse` (502).
Not handled: tool calls, several prompts per request (the server batches concurrent ones).
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator, Sequence

import requests

from kbgate.config import Config
from kbgate.engine import EngineInfo, Finish, Message
from kbgate.errors import ConfigError, EngineBadResponse, EngineUnavailable

TOP = 20  # top_logprobs asked for: vLLM's default --max-logprobs
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHATML_STOPS = ["<|im_end|>", "<|endoftext|>"]
TOKENIZERS = (  # (dialect, path under the server root, request body, key of the token list)
    ("llama-cpp-python", "/extras/tokenize", lambda t, m: {"input": t, "model": m}),
    ("llama.cpp", "/tokenize", lambda t, m: {"content": t}),
    ("vllm", "/tokenize", lambda t, m: {"prompt": t, "model": m, "add_special_tokens": False}),
)


def render_chatml(messages: Sequence[Message], *, open_last: bool, generation_prompt: bool) -> str:
    """Qwen's ChatML: a default system turn when none is given, the last turn optionally left open."""
    msgs = list(messages)
    if not msgs or msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": QWEN_SYSTEM})
    out = []
    for i, m in enumerate(msgs):
        last = i == len(msgs) - 1
        out.append(f"<|im_start|>{m['role']}\n{m['content']}" + ("" if last and open_last else "<|im_end|>\n"))
    if generation_prompt and not open_last:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def estimate_tokens(text: str) -> int:
    """Qwen-tokenizer estimate: ~3.6 ASCII characters per token, ~1 token per other character."""
    ascii_n = sum(c.isascii() for c in text)
    return math.ceil(ascii_n / 3.6 + (len(text) - ascii_n))


class RemoteEngine:
    """An Engine that talks HTTP to an OpenAI-compatible server."""

    def __init__(self, cfg: Config):
        r = cfg.remote
        if r.template not in ("chatml", "server"):
            raise ConfigError(f"config: [remote] template must be 'chatml' or 'server', got {r.template!r}")
        self.base = r.base_url.rstrip("/")
        self.root = self.base.removesuffix("/v1")
        self.template, self.timeout, self.retry_after = r.template, (r.connect_timeout_s, r.read_timeout_s), r.retry_after_s
        key = os.environ.get(r.api_key_env, "") if r.api_key_env else ""
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._local = threading.local()  # one requests.Session per thread (Session is not thread-safe)
        self._first: dict[str, tuple[int | None, str]] = {}  # choice -> (first token id, its text)
        models = self._json("GET", "/models")
        try:
            ids = [m["id"] for m in models["data"]]
        except (KeyError, TypeError):
            raise self._bad("/models", models) from None
        self.model = r.model or (ids[0] if ids else "")
        if not self.model:
            raise EngineBadResponse(f"openai engine at {self.base}: /models lists no model; set [remote] model")
        self.dialect = self._probe_tokenizer()
        self.scoring, self.scoring_problem = self._probe_scoring()

    # --- HTTP ---------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = requests.Session()
            s.headers.update(self.headers)
        return s

    def _bad(self, path: str, what) -> EngineBadResponse:
        return EngineBadResponse(f"openai engine at {self.base}{path} answered something that is not an "
                                 f"OpenAI-shaped reply: {str(what)[:200]!r}")

    def _send(self, method: str, url: str, body: dict | None, stream: bool = False) -> requests.Response:
        try:
            resp = self._session().request(method, url, json=body, timeout=self.timeout, stream=stream)
        except requests.exceptions.ConnectTimeout:
            raise EngineUnavailable(f"openai engine at {self.base} did not accept a connection within "
                                    f"{self.timeout[0]:g} s ([remote] connect_timeout_s); is the server up?",
                                    self.retry_after) from None
        except requests.exceptions.ReadTimeout:
            raise EngineUnavailable(f"openai engine at {self.base} sent no reply within {self.timeout[1]:g} s "
                                    "([remote] read_timeout_s); the server is hung or overloaded", self.retry_after) from None
        except requests.exceptions.ConnectionError as e:
            raise EngineUnavailable(f"openai engine at {self.base} is unreachable ({type(e).__name__}); start the "
                                    "server or fix [remote] base_url", self.retry_after) from None
        if resp.status_code in (401, 403):
            raise EngineUnavailable(f"openai engine at {self.base} refused the key ({resp.status_code}); set the "
                                    f"environment variable named by [remote] api_key_env", self.retry_after)
        if resp.status_code >= 500 or resp.status_code == 429:
            raise EngineUnavailable(f"openai engine at {self.base}{url[len(self.base):]} failed with HTTP "
                                    f"{resp.status_code}: {resp.text[:200]!r}", self.retry_after)
        return resp

    def _json(self, method: str, path: str, body: dict | None = None, root: bool = False) -> dict:
        resp = self._send(method, (self.root if root else self.base) + path, body)
        if resp.status_code >= 400:
            raise EngineBadResponse(f"openai engine at {self.base}{path}: HTTP {resp.status_code}: {resp.text[:200]!r}")
        try:
            data = resp.json()
        except ValueError:
            raise self._bad(path, resp.text) from None
        if not isinstance(data, dict):
            raise self._bad(path, data)
        return data

    # --- probes -------------------------------------------------------------------------
    def _probe_tokenizer(self) -> str | None:
        """The first tokenize endpoint that answers with a token list, or None (estimate locally)."""
        for dialect, path, body in TOKENIZERS:
            try:
                resp = self._send("POST", self.root + path, body("hi", self.model))
                tokens = resp.json().get("tokens") if resp.status_code == 200 else None
            except (EngineUnavailable, ValueError, AttributeError):
                continue
            if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
                return dialect
        return None

    def _probe_scoring(self) -> tuple[str | None, str]:
        """'top_logprobs', 'echo' or None, and why not."""
        prompt = render_chatml([{"role": "user", "content": "Say yes."}], open_last=False, generation_prompt=True)
        try:
            self._top(prompt)
            return "top_logprobs", ""
        except (EngineBadResponse, EngineUnavailable) as e:
            first = e.message
        try:
            self._echo(prompt, "Yes")
            return "echo", ""
        except (EngineBadResponse, EngineUnavailable) as e:
            return None, (f"openai engine at {self.base} cannot score label words: /completions returned no "
                          f"top_logprobs ({first}) and no echo logprobs ({e.message}). Use llama-cpp-python's "
                          "server (logits_all on, its default), llama.cpp's server or vLLM, or another engine.")

    # --- scoring --------------------------------------------------------------------------
    def _top(self, prompt: str) -> dict[str, float]:
        """Next-token log-probabilities of the top TOP tokens after a raw prompt."""
        data = self._json("POST", "/completions", {"model": self.model, "prompt": prompt, "max_tokens": 1,
                                                   "temperature": 0, "logprobs": TOP})
        try:
            top = data["choices"][0]["logprobs"]["top_logprobs"][0]
            assert isinstance(top, dict) and top
            return {str(k): float(v) for k, v in top.items()}
        except (KeyError, IndexError, TypeError, ValueError, AssertionError):
            raise self._bad("/completions (logprobs)", data) from None

    def _top_chat(self, messages: Sequence[Message]) -> dict[str, float]:
        data = self._json("POST", "/chat/completions", {"model": self.model, "messages": list(messages),
                                                        "max_tokens": 1, "temperature": 0, "logprobs": True,
                                                        "top_logprobs": TOP})
        try:
            top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return {str(t["token"]): float(t["logprob"]) for t in top}
        except (KeyError, IndexError, TypeError, ValueError):
            raise self._bad("/chat/completions (logprobs)", data) from None

    def _echo(self, prompt: str, word: str) -> float:
        """Log-probability of the first token of `word` right after `prompt`, from an echo request."""
        data = self._json("POST", "/completions", {"model": self.model, "prompt": prompt + word, "max_tokens": 1,
                                                   "temperature": 0, "echo": True, "logprobs": 0})
        try:
            lp = data["choices"][0]["logprobs"]
            at = lp["text_offset"].index(len(prompt))
            return float(lp["token_logprobs"][at])
        except (KeyError, IndexError, TypeError, ValueError):
            raise self._bad("/completions (echo)", data) from None

    def _first_token(self, word: str) -> tuple[int | None, str]:
        """A word's first token (id, text) by the server's tokenizer; (None, word) without one."""
        if word not in self._first:
            first: tuple[int | None, str] = (None, word)
            if self.dialect:
                ids = self._tokenize(word)
                text = self._detokenize(ids[:1])
                first = (ids[0], text if text and word.startswith(text) else word)
            self._first[word] = first
        return self._first[word]

    def classify(self, messages: Sequence[Message], choices: Sequence[str], *,
                 open_last: bool = True) -> dict[str, float]:
        """Each choice's next-token probability, softmaxed over the choices' first tokens."""
        if self.scoring is None:
            raise EngineBadResponse(self.scoring_problem)
        firsts = [self._first_token(c) for c in choices]
        keys = [f[0] if f[0] is not None else f[1] for f in firsts]
        if len(set(keys)) != len(keys):
            raise ValueError(f"choices {list(choices)} share a first token; the logits cannot tell them apart")
        chat = self.template == "server"
        prompt = "" if chat else render_chatml(messages, open_last=open_last, generation_prompt=not open_last)
        logps: list[float] | None = None
        if self.scoring == "top_logprobs":
            top = self._top_chat(messages) if chat else self._top(prompt)
            found = [top.get(text) for _, text in firsts]
            if any(v is not None for v in found):
                floor = min(top.values())  # a word outside the top list is at most as likely as its last entry
                logps = [v if v is not None else floor for v in found]
        if logps is None:
            if chat:
                raise EngineBadResponse(f"openai engine at {self.base}: none of {list(choices)} is among the top "
                                        f"{TOP} first tokens of the reply; use [remote] template = \"chatml\"")
            logps = [self._echo(prompt, text) for _, text in firsts]
        m = max(logps)
        exps = [math.exp(v - m) for v in logps]
        return {c: e / sum(exps) for c, e in zip(choices, exps)}

    # --- generation -----------------------------------------------------------------------
    def stream(self, messages: Sequence[Message], *, max_tokens: int, stop: Sequence[str] | None = None,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               repetition_penalty: float = 1.0) -> Iterator[str | Finish]:
        """Stream the reply from the server as server-sent events; closing stops the request."""
        body: dict = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                      "stream": True, "stop": list(stop or [])}
        if seed is not None:
            body["seed"] = seed
        if repetition_penalty != 1.0:  # llama.cpp spells it repeat_penalty, vLLM repetition_penalty
            body["repeat_penalty"] = body["repetition_penalty"] = repetition_penalty
        if self.template == "server":
            path, body["messages"] = "/chat/completions", list(messages)
        else:
            path = "/completions"
            body["prompt"] = render_chatml(messages, open_last=False, generation_prompt=True)
            body["stop"] = body["stop"] + CHATML_STOPS
        return self._events(path, body, messages)

    def _events(self, path: str, body: dict, messages: Sequence[Message]) -> Iterator[str | Finish]:
        resp = self._send("POST", self.base + path, body, stream=True)
        if resp.status_code >= 400:
            raise EngineBadResponse(f"openai engine at {self.base}{path}: HTTP {resp.status_code}: {resp.text[:200]!r}")
        pieces, reason, usage = 0, "stop", None
        try:
            for line in resp.iter_lines(decode_unicode=False):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                try:
                    event = json.loads(data)
                    choice = event["choices"][0] if event.get("choices") else {}
                    text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise self._bad(path, data) from None
                usage = event.get("usage") or usage
                if choice.get("finish_reason"):
                    reason = "length" if choice["finish_reason"] == "length" else "stop"
                if text:
                    pieces += 1
                    yield text
        except requests.exceptions.ConnectionError as e:  # a read timeout mid-stream arrives as this
            raise EngineUnavailable(f"openai engine at {self.base} stopped streaming ({type(e).__name__}); "
                                    f"read timeout is {self.timeout[1]:g} s", self.retry_after) from None
        finally:
            resp.close()  # the server sees the disconnect and stops decoding
        if usage and isinstance(usage, dict):
            yield Finish(reason, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", pieces)))
        else:
            yield Finish(reason, self.prompt_tokens(messages), pieces)

    # --- tokens -----------------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        path, body = next((p, b) for d, p, b in TOKENIZERS if d == self.dialect)
        tokens = self._json("POST", path, body(text, self.model), root=True).get("tokens")
        if not isinstance(tokens, list):
            raise self._bad(path, tokens)
        return tokens

    def _detokenize(self, ids: list[int]) -> str:
        path = "/extras/detokenize" if self.dialect == "llama-cpp-python" else "/detokenize"
        body = {"tokens": ids, "model": self.model} if self.dialect != "llama.cpp" else {"tokens": ids}
        try:
            data = self._json("POST", path, body, root=True)
        except EngineBadResponse:
            return ""
        return str(data.get("text") or data.get("content") or data.get("prompt") or "")

    def count_tokens(self, text: str) -> int:
        """Tokens by the server's tokenizer, or the local estimate when it has no tokenize endpoint."""
        return len(self._tokenize(text)) if self.dialect else estimate_tokens(text)

    def prompt_tokens(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        return self.count_tokens(render_chatml(messages, open_last=open_last, generation_prompt=not open_last))

    def register_prefix(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        """Only count: the server reuses the KV cache of a repeated prompt prefix itself."""
        return self.prompt_tokens(messages, open_last=open_last)

    def health(self) -> str | None:
        """None when the server answers /models now, else the reason (for /readyz)."""
        try:
            self._json("GET", "/models")
        except (EngineUnavailable, EngineBadResponse) as e:
            return e.message
        return None

    def info(self) -> EngineInfo:
        tok = f"tokens: {self.dialect} tokenizer" if self.dialect else "tokens: local estimate"
        return EngineInfo("openai", self.model, "remote", f"{self.base} ({tok}; scoring: {self.scoring})", 0)
