"""The default engine: llama.cpp in-process (llama-cpp-python), reading the GGUF as it is.

One model serves every role, from two contexts on its shared weights. The main
context holds several KV sequences in one unified cache: each registered prefix (a
role's system prompt and worked examples) is evaluated once into a sequence of its
own and stays there; a call takes a free working sequence and copies the prefix into
it with `llama_memory_seq_cp`, which only tags the cache cells (no compute, no state
restore), then evaluates its own tokens. Streams and gate calls therefore never
disturb each other's cache. One lock serializes `llama_decode`, one batch or one
decode step at a time, so a gate call slips in between the steps of an answer.

Every `llama_decode` runs on one thread of the engine's own (`llama.cpp`), whichever
request thread asked for it. llama.cpp's CPU backend parallelizes with OpenMP, and
libgomp keeps a worker team per calling thread: with waitress handing each request to
another thread, the teams of earlier callers stay alive, libgomp then counts more
threads than cores and throttles its spin-wait, and a 30-character gate call took
120-124 ms instead of the 84-86 ms it takes from a single caller (measured here on 2
cores; the hand-off to that thread costs tens of microseconds).

`classify` on an open-turn prefix (the gate's) runs in a small second context that holds
only such prefixes: without flash attention llama.cpp attends over every used cell of a
unified cache, so in the main one a 20-token gate tail would attend over all roles'
prefixes and the answers in flight instead of its own ~1,100 cells. The main context runs
flash attention, which skips other sequences' cells (faster prefill and decode there), the
small one does not (flash attention doubles a short tail's time); as the two lay out their
cells differently, the gate's prefix is evaluated in each (and saved, so only once).

Not handled: batching several sequences into one decode, GPUs, grammars.
"""
from __future__ import annotations

import codecs
import ctypes
import hashlib
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from kbgate.engine import EngineInfo, Finish, Message
from kbgate.engines.common import (Prefix, Prefixes, StopText, choice_probs, cpu_device, cpu_threads,
                                   first_tokens, penalize, render_messages, sample)
from kbgate.errors import EngineUnavailable, ModelError

# general.file_type of a GGUF (llama.cpp's llama_ftype) for the ones we meet
FILE_TYPES = {"0": "F32", "1": "F16", "2": "Q4_0", "7": "Q8_0", "12": "Q3_K_M", "14": "Q4_K_S",
              "15": "Q4_K_M", "16": "Q5_K_S", "17": "Q5_K_M", "18": "Q6_K", "25": "IQ4_NL", "32": "BF16"}
MAX_PREFIXES = 10  # the service registers 5-6 (gate, answer, troubleshoot, chat, one per translation direction)
CLASSIFY_SLOTS = 2  # classify calls at once in the small context (more wait; they are one pass each)


def import_llama_cpp():
    """The llama_cpp module, or a ModelError saying how to build it."""
    try:
        import llama_cpp
        import llama_cpp._internals  # noqa: F401  (loads libllama: fails when the build was half done)
    except (ImportError, OSError, RuntimeError) as e:
        missing = [t for t in ("cmake", "gcc", "g++") if shutil.which(t) is None]
        need = (f"; the build needs {', '.join(missing)}: install them (Debian: apt-get install cmake "
                "build-essential)") if missing else ""
        broken = "is not installed" if isinstance(e, ImportError) and "llama_cpp" in str(e) else \
            f"is installed but does not load ({e})"
        raise ModelError(f"[model] engine = \"llamacpp\" needs llama-cpp-python, which {broken}{need}; "
                         "run `make setup` (it builds llama-cpp-python with native CPU flags), "
                         "or set [model] engine = \"transformers\" in config.toml") from None
    return llama_cpp


def repack_is_safe(ll) -> bool:
    """Whether llama.cpp may use its extra weight buffers (the `extra_buffers=None` default).

    They repack Q4_0, IQ4_NL and Q4_K weights into interleaved rows at load time (`[model]
    requantize`: prefill and decode about 1.5x faster here), but a build with AMX kernels also
    picks the AMX buffer, which died with SIGILL on these VMs. `make setup` builds without AMX.
    """
    info = ll.llama_print_system_info().decode(errors="replace")
    return "AMX_INT8 = 1" not in info and "AMX = 1" not in info


class Context:
    """One llama.cpp context on the shared model: its KV cells, a batch, and its free working sequences."""

    def __init__(self, ll, model, *, n_ctx: int, n_batch: int, threads: int, slots: int, flash_attn: bool):
        from llama_cpp._internals import LlamaContext

        cp = ll.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, n_batch
        cp.n_threads = cp.n_threads_batch = threads
        cp.n_seq_max = MAX_PREFIXES + slots
        cp.kv_unified = True  # one cell pool: copying a prefix into a working sequence shares its cells
        # flash attention skips the cells of other sequences (the unified cache holds every role's prefix):
        # on for the answers' context (first answer token 2.9 -> 1.7 s, decode 32 -> 44 tok/s here), off for
        # the gate's, where it doubled a 16-token tail after a 900-token prefix (342-390 ms against 172-187)
        cp.flash_attn_type = 1 if flash_attn else 0
        self.flash_attn = flash_attn
        self.ll, self._ctx = ll, LlamaContext(model=model, params=cp, verbose=False)
        self.ctx, self.n_ctx, self.n_batch = self._ctx.ctx, n_ctx, n_batch
        self.mem = ll.llama_get_memory(self.ctx)
        self.batch = ll.llama_batch_init(n_batch, 0, 1)
        self.free = list(range(MAX_PREFIXES, MAX_PREFIXES + slots))
        self.slots = threading.Condition()
        self.held: dict[str, int] = {}  # prefix text -> the sequence holding it (the small context's copies)
        self.held_cells = 0

    def __del__(self):
        if getattr(self, "batch", None) is not None:
            self.ll.llama_batch_free(self.batch)
            self.batch = None


class LlamaCppEngine:
    """A GGUF model in llama.cpp with per-prefix KV sequences and a lock around each decode."""

    def __init__(self, path: str | Path, *, threads: int = 0, n_ctx: int = 8192, n_batch: int = 512,
                 slots: int = 8, name: str | None = None, extra_buffers: bool | None = None, flash_attn: bool = True,
                 classify_flash_attn: bool = False, kv_dir: str | Path | None = "", classify_room: int = 1024):
        ll = self.ll = import_llama_cpp()
        from llama_cpp import _logger
        from llama_cpp._internals import LlamaModel

        _logger.set_verbose(False)
        self.path, self.name = Path(path), name or Path(path).stem
        self.threads = cpu_threads(threads)
        mp = ll.llama_model_default_params()
        mp.use_extra_bufts = repack_is_safe(ll) if extra_buffers is None else extra_buffers
        try:
            self._model = LlamaModel(path_model=str(path), params=mp, verbose=False)
        except ValueError as e:
            raise ModelError(f"llama.cpp could not load {path}: {e}; is it a GGUF file?") from None
        self.main = Context(ll, self._model, n_ctx=n_ctx, n_batch=n_batch, threads=self.threads, slots=slots,
                            flash_attn=flash_attn)
        # classify's own context, made for the first prefix classify continues: that prefix plus
        # `classify_room` cells for the calls' own tokens (0 = none: classify runs in the main context)
        self.small: Context | None = None
        self.classify_room, self.classify_flash_attn = classify_room, classify_flash_attn
        self._filling = threading.Lock()  # one thread at a time puts a prefix into the small context
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.vocab = self._model.vocab
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.meta = self._model.metadata()
        self.template = self.meta.get("tokenizer.chat_template")
        if not self.template:
            raise ModelError(f"{path} carries no chat template (tokenizer.chat_template); use a chat model's GGUF")
        self.eos_ids = {t for t in (self._special("<|im_end|>"), self._special("<|endoftext|>"),
                                    ll.llama_vocab_eos(self.vocab)) if t is not None and t >= 0}
        self.lock = threading.Lock()  # one llama_decode at a time, in either context
        # ... and always from the same thread: one OpenMP team (see the module's docstring)
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="llama.cpp")
        self.prefixes = Prefixes()  # handle: the main context's sequence id holding the prefix
        self._open_turns: set[str] = set()  # rendered texts of prefixes registered with open_last (classify's)
        self._jinja = None
        # each role's prefix KV saved beside the model: a restart loads it instead of evaluating
        # ~3,000 prefix tokens again (0.2 s against 20-90 s here); "" = <model folder>/kv-cache, None = off
        self.kv_dir = None if kv_dir is None else Path(kv_dir or self.path.parent / "kv-cache")

    def info(self) -> EngineInfo:
        quant = FILE_TYPES.get(self.meta.get("general.file_type", ""), "gguf")
        return EngineInfo("llamacpp", self.name, quant, cpu_device(), self.threads)

    # ---- tokens and prompts -----------------------------------------------------
    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self.ll.llama_token * cap)()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, cap, False, True)
        if n < 0:  # cannot happen with a byte-level BPE (<= 1 token per byte), but be exact
            buf = (self.ll.llama_token * -n)()
            n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, -n, False, True)
        return list(buf[:n])

    def _special(self, text: str) -> int | None:
        ids = self.encode(text)
        return ids[0] if len(ids) == 1 else None

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def _render(self, messages: list, generation_prompt: bool) -> str:
        if self._jinja is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(msg):
                raise ValueError(msg)
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
            env.globals["raise_exception"] = raise_exception
            self._jinja = env.from_string(self.template)
        return self._jinja.render(messages=messages, add_generation_prompt=generation_prompt)

    def render(self, messages: Sequence[Message], *, open_last: bool = False, generation_prompt: bool = True) -> str:
        """The prompt text for `messages` with the GGUF's own chat template."""
        return render_messages(self._render, messages, open_last=open_last,
                               generation_prompt=generation_prompt and not open_last)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def prompt_ids(self, messages: Sequence[Message], open_last: bool = False) -> tuple[list[int], Prefix | None]:
        return self.prefixes.encode(self.render(messages, open_last=open_last), self.encode)

    def prompt_tokens(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        return len(self.prompt_ids(messages, open_last)[0])

    # ---- the KV cache -------------------------------------------------------------
    def _decode(self, c: Context, seq: int, tokens: list[int], pos: int, want: list[int] | None = None) -> np.ndarray:
        """Evaluate `tokens` at positions pos.. in sequence `seq` of context `c`; the last position's logits.

        Returns (len(want),) or (n_vocab,) float32, copied while the lock is held.
        """
        if pos + len(tokens) > c.n_ctx:
            raise EngineUnavailable(f"the prompt needs {pos + len(tokens):,} tokens of context; "
                                    f"[model] n_ctx is {c.n_ctx:,}")
        b = c.batch.contents if hasattr(c.batch, "contents") else c.batch
        out = None
        for i in range(0, len(tokens), c.n_batch):
            chunk = tokens[i:i + c.n_batch]
            with self.lock:
                b.n_tokens = len(chunk)
                for j, t in enumerate(chunk):
                    b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = t, pos + i + j, 1, 0
                    b.seq_id[j][0] = seq
                b.logits[len(chunk) - 1] = 1
                rc = self._compute.submit(self.ll.llama_decode, c.ctx, b).result()
                if rc != 0:
                    raise EngineUnavailable(
                        "llama.cpp has no room left in its KV cache (too many long requests at once); "
                        "retry, or raise [model] n_ctx" if rc == 1 else f"llama_decode failed with code {rc}")
                if i + c.n_batch >= len(tokens):
                    row = np.ctypeslib.as_array(self.ll.llama_get_logits_ith(c.ctx, len(chunk) - 1),
                                                shape=(self.n_vocab,))
                    out = row[want].copy() if want is not None else row.copy()
        return out

    def register_prefix(self, messages: Sequence[Message], *, open_last: bool = False) -> int:
        text = self.render(messages, open_last=open_last, generation_prompt=False)
        if (known := self.prefixes.find(text)) is not None:
            return len(known.ids)
        if len(self.prefixes.items) >= MAX_PREFIXES:
            raise ValueError(f"at most {MAX_PREFIXES} prefixes can be registered")
        seq = len(self.prefixes.items)
        ids = self.encode(text)
        if not self._load_prefix(self.main, seq, ids):
            self._decode(self.main, seq, ids, 0)
            self._save_prefix(self.main, seq, ids)
        prefix = Prefix(text, ids, seq)
        self.prefixes.add(prefix)
        if open_last:  # an open turn is what classify continues (the gate): copy it now, not on the first call
            self._open_turns.add(text)
            self._classify_context(prefix, len(ids) + 1)
        return len(ids)

    def _kv_file(self, c: Context, ids: list[int]) -> Path | None:
        """Where a prefix's KV cells are kept: named by the model file, the cells' layout and the prefix's tokens."""
        if self.kv_dir is None:
            return None
        st = self.path.stat()
        layout = "fa" if c.flash_attn else "kq"  # flash attention stores V untransposed: the files differ
        key = hashlib.sha256(f"{self.path.name}:{st.st_size}:{self.ll.__version__}:{layout}:{ids}".encode()
                             ).hexdigest()[:24]
        return self.kv_dir / f"{key}.kv"

    def _load_prefix(self, c: Context, seq: int, ids: list[int]) -> bool:
        """Restore a saved prefix into `seq` of `c`; False (and nothing restored) when there is none or it does not fit."""
        path = self._kv_file(c, ids)
        if path is None or not path.is_file():
            return False
        got = (self.ll.llama_token * len(ids))()
        n = ctypes.c_size_t(0)
        ctx, mem = c.ctx, c.mem
        with self.lock:
            read = self.ll.llama_state_seq_load_file(ctx, str(path).encode(), seq, got, len(ids), ctypes.byref(n))
            if read and n.value == len(ids) and list(got[:n.value]) == ids:
                return True
            self.ll.llama_memory_seq_rm(mem, seq, -1, -1)  # a stale or torn file: evaluate again
        return False

    def _save_prefix(self, c: Context, seq: int, ids: list[int]) -> None:
        """Keep a freshly evaluated prefix for the next start (best effort: a read-only disk only costs time)."""
        path = self._kv_file(c, ids)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            arr = (self.ll.llama_token * len(ids))(*ids)
            with self.lock:
                ok = self.ll.llama_state_seq_save_file(c.ctx, str(tmp).encode(), seq, arr, len(ids))
            if ok:
                os.replace(tmp, path)  # whole or not at all: a kill mid-write leaves no torn file behind
            else:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass

    def _classify_context(self, prefix: Prefix | None, n_ids: int) -> tuple[Context, int | None]:
        """The context a classify call of `n_ids` tokens runs in, and the sequence holding `prefix` there.

        The small context when the prefix is (or can be) copied there and the call's own
        tokens fit beside the other classify calls; else the main context.
        """
        # only a prefix registered as an open turn (the gate's) moves: another classify prompt keeps the main
        # context, where its cached and whole-prompt probabilities agree to float noise of one layout
        if prefix is None or not self.classify_room or prefix.text not in self._open_turns:
            return self.main, prefix.handle if prefix else None
        with self._filling:
            with self.lock:
                if self.small is None:
                    n_ctx = -(-(len(prefix.ids) + self.classify_room) // 256) * 256  # llama.cpp pads to 256 cells
                    self.small = Context(self.ll, self._model, n_ctx=n_ctx,
                                         n_batch=min(self.n_batch, self.classify_room), threads=self.threads,
                                         slots=CLASSIFY_SLOTS, flash_attn=self.classify_flash_attn)
            c = self.small
            seq = c.held.get(prefix.text)
            if seq is None and len(c.held) < MAX_PREFIXES and \
                    c.held_cells + len(prefix.ids) + self.classify_room <= c.n_ctx:
                seq = self._fill_small(prefix, c, len(c.held))
        if seq is None or n_ids - len(prefix.ids) > (c.n_ctx - c.held_cells) // CLASSIFY_SLOTS:
            return self.main, prefix.handle
        return c, seq

    def _fill_small(self, prefix: Prefix, c: Context, seq: int) -> int:
        """Put `prefix` into sequence `seq` of the small context `c`: copied from the main context where both
        lay out their cells alike, else restored from its file or evaluated there (once; saved for the next start)."""
        if c.flash_attn == self.main.flash_attn:
            with self.lock:
                if self._copy_prefix(prefix, c, seq) is not None:
                    return seq
        if not self._load_prefix(c, seq, prefix.ids):
            self._decode(c, seq, prefix.ids, 0)
            self._save_prefix(c, seq, prefix.ids)
        c.held[prefix.text], c.held_cells = seq, c.held_cells + len(prefix.ids)
        return seq

    def _copy_prefix(self, prefix: Prefix, c: Context, seq: int) -> int | None:
        """Copy `prefix`'s cells from the main context into sequence `seq` of `c` (lock held); None if it failed."""
        main = self.main
        size = self.ll.llama_state_seq_get_size(main.ctx, prefix.handle)
        buf = (ctypes.c_uint8 * size)()
        got = self.ll.llama_state_seq_get_data(main.ctx, buf, size, prefix.handle)
        if got and self.ll.llama_state_seq_set_data(c.ctx, buf, got, seq):
            c.held[prefix.text], c.held_cells = seq, c.held_cells + len(prefix.ids)
            return seq
        self.ll.llama_memory_seq_rm(c.mem, seq, -1, -1)
        return None

    @contextmanager
    def _sequence(self, c: Context, ids: list[int], prefix: Prefix | None, held: int | None):
        """A working sequence of `c` holding `ids`' cached prefix (in sequence `held`); yields it and its length."""
        with c.slots:
            while not c.free:
                c.slots.wait()
            seq = c.free.pop()
        start = min(len(prefix.ids), len(ids) - 1) if prefix else 0  # the last token must run: its logits
        try:
            with self.lock:
                self.ll.llama_memory_seq_rm(c.mem, seq, -1, -1)
                if start:
                    self.ll.llama_memory_seq_cp(c.mem, held, seq, 0, start)
            yield seq, start
        finally:
            with self.lock:
                self.ll.llama_memory_seq_rm(c.mem, seq, -1, -1)
            with c.slots:
                c.free.append(seq)
                c.slots.notify()

    # ---- roles ----------------------------------------------------------------------
    def classify(self, messages: Sequence[Message], choices: Sequence[str], *,
                 open_last: bool = True) -> dict[str, float]:
        ids, prefix = self.prompt_ids(messages, open_last)
        want = first_tokens(choices, self.encode)
        c, held = self._classify_context(prefix, len(ids))
        with self._sequence(c, ids, prefix, held) as (seq, start):
            logits = self._decode(c, seq, ids[start:], start, want)
        return choice_probs(choices, logits.tolist())

    def stream(self, messages: Sequence[Message], *, max_tokens: int, stop: Sequence[str] | None = None,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               repetition_penalty: float = 1.0) -> Iterator[str | Finish]:
        """Yield text pieces as tokens are decoded, then one `Finish` (see `Engine.stream`).

        The penalty damps only tokens of this reply: copying from the passages is
        what a grounded answer should do.
        """
        ids, prefix = self.prompt_ids(messages)
        rng = np.random.default_rng(seed)
        text_out, utf8 = StopText(stop), codecs.getincrementaldecoder("utf-8")("replace")
        out, seen, text, reason = [], set(), "", "length"
        c = self.main
        with self._sequence(c, ids, prefix, prefix.handle if prefix else None) as (seq, start):
            step, pos = ids[start:], start
            for _ in range(min(max_tokens, self.n_ctx - len(ids))):
                logits = self._decode(c, seq, step, pos)
                pos += len(step)
                penalize(logits, seen, repetition_penalty)
                nxt = sample(logits, temperature, top_p, rng)
                if nxt in self.eos_ids:
                    reason = "stop"
                    break
                out.append(nxt)
                seen.add(nxt)
                step = [nxt]
                new = utf8.decode(self.piece(nxt))  # holds back half of a multi-byte character
                if not new:
                    continue
                text += new
                if piece := text_out.push(text):
                    yield piece
                if text_out.stopped:
                    reason = "stop"
                    break
        if not text_out.stopped and (piece := text_out.flush(text + utf8.decode(b"", final=True).rstrip("\ufffd"))):
            yield piece
        yield Finish(reason, len(ids), len(out))
