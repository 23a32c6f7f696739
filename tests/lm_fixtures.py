"""Model fixtures: a tiny random Qwen2 for plumbing tests, the real bundled Qwen for `slow` ones."""
from __future__ import annotations

import shutil
import time

import pytest
import torch

from kbgate.config import load_config
from kbgate.lm import Finish, LanguageModel
from kbgate.provision import fetch_generator


@pytest.fixture(scope="session")
def real_model_dir() -> str:
    """The provisioned bundled Qwen (make setup provisions it; here it is provisioned if missing)."""
    return fetch_generator(load_config())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_model_dir) -> str:
    """A 2-layer Qwen2-architecture model with random weights and the real Qwen tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, eos_token_id=151645, pad_token_id=151643)
    Qwen2ForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        src = f"{real_model_dir}/{name}"
        try:
            shutil.copy(src, out / name)
        except FileNotFoundError:
            pass
    return str(out)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir) -> LanguageModel:
    return LanguageModel.load(tiny_model_dir, "float32", name="tiny-qwen2")


@pytest.fixture(scope="session")
def real_lm(real_model_dir) -> LanguageModel:
    return LanguageModel.load(real_model_dir, "auto", name="Qwen2.5-Coder-0.5B-Instruct")


class ScriptedLM(LanguageModel):
    """The tiny model for the gate's forward pass, with scripted generation (optionally slowed).

    A fake for speed: the same flows run with the real Qwen in `slow` tests.
    """

    def __init__(self, base: LanguageModel, reply: str = "", delay: float = 0.0):
        super().__init__(base.model, base.tok, base.name)
        self._prefixes = base._prefixes
        self.reply, self.delay, self.generated = reply, delay, 0

    def generate(self, ids, max_new_tokens=200, temperature=0.0, top_p=1.0, stop=None, seed=None,
                 repetition_penalty=1.0):
        pieces = [self.reply[i:i + 3] for i in range(0, len(self.reply), 3)][:max_new_tokens]
        for p in pieces:
            time.sleep(self.delay)
            self.generated += 1
            yield p
        yield Finish("stop" if len(pieces) < max_new_tokens else "length", len(ids), len(pieces))


@pytest.fixture
def scripted_lm(tiny_lm):
    return lambda reply="", delay=0.0: ScriptedLM(tiny_lm, reply, delay)


@pytest.fixture(scope="session")
def hash_retriever(tmp_path_factory, hash_embedder, repo_root):
    """A real FAISS + BM25 index of kb/ built with the fast hash embedder."""
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.retrieval import Retriever

    cfg = load_config()
    out = tmp_path_factory.mktemp("kb-hash-index")
    build_index(cfg, repo_root / "kb", out, hash_embedder, progress=False)
    return Retriever(load_index(out, hash_embedder), hash_embedder, cfg.retrieval)


@pytest.fixture
def make_services(tiny_lm, hash_retriever):
    """Services over the tiny model with scripted replies: make_services(reply, delay, gate={...})."""
    from kbgate.service import build

    def make(reply: str = "", delay: float = 0.0, cfg=None, **sections):
        cfg = cfg or load_config()
        # scripted replies are not about the passages the hash index returns: trust their [n]
        # (grounding itself is tested in test_answer.py and, for real, in the slow tests)
        sections["answer"] = {"verify_citations": False, **sections.get("answer", {})}
        cfg = cfg.replace(**sections)
        return build(cfg, ScriptedLM(tiny_lm, reply, delay), hash_retriever)
    return make


@pytest.fixture(scope="session")
def real_services(real_lm, kb_index, minilm):
    """The real thing: bundled Qwen + MiniLM index of kb/ (for `slow` tests)."""
    from kbgate.retrieval import Retriever
    from kbgate.service import build

    cfg = load_config()
    _, index = kb_index
    return build(cfg, real_lm, Retriever(index, minilm, cfg.retrieval))
