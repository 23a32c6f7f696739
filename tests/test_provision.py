"""Model provisioning: the pinned hash is enforced before any engine reads a GGUF; the real one loads (slow)."""
import hashlib
import os

import pytest

from kbgate.bundles import BUNDLES, part_paths
from kbgate.config import load_config
from kbgate.errors import ModelError
from kbgate.provision import fetch_generator, fetch_gguf


def bundled_cfg(tmp_path, data: bytes | None = None, pin: str | None = None):
    """A config whose models_dir already holds a 'bundled' GGUF with `data`, pinned to `pin` (default: its hash)."""
    name = BUNDLES["bundled"].filename
    if data is not None:
        (tmp_path / name).write_bytes(data)
    # requantize off: these tests are about the pin and the file handed over (config.toml derives an IQ4_NL copy)
    return load_config().replace(model={"models_dir": str(tmp_path), "requantize": "",
                                        "gguf_sha256": pin or hashlib.sha256(data or b"").hexdigest()}), tmp_path / name


def test_a_gguf_matching_the_pin_is_handed_to_llama_cpp_as_is(tmp_path):
    cfg, path = bundled_cfg(tmp_path, b"GGUF-pretend-model")
    assert fetch_gguf(cfg) == path and path.read_bytes() == b"GGUF-pretend-model"  # no copy, no conversion


def test_a_gguf_whose_hash_differs_is_refused(tmp_path):
    cfg, path = bundled_cfg(tmp_path, b"GGUF-pretend-model", pin="0" * 64)
    with pytest.raises(ModelError, match="refusing the bundled model 'bundled': SHA-256"):
        fetch_gguf(cfg)


def test_a_gguf_changed_after_its_check_is_hashed_again_and_refused(tmp_path):
    cfg, path = bundled_cfg(tmp_path, b"GGUF-pretend-model")
    fetch_gguf(cfg)  # checked once; later starts trust the note while the file is unchanged
    with open(path, "r+b") as f:
        f.write(b"X")  # same size, new content, new mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(ModelError, match="expected"):
        fetch_gguf(cfg)


def test_bundled_source_with_a_wrong_pinned_hash_is_refused_and_leaves_nothing(tmp_path):
    cfg = load_config().replace(model={"models_dir": str(tmp_path), "gguf_sha256": "f" * 64})
    with pytest.raises(ModelError, match="expected f{64}"):
        fetch_gguf(cfg)
    assert not any(tmp_path.iterdir())  # no half-written or unverified file stays behind


@pytest.mark.parametrize("source,engine,needle", [
    ("/nonexistent/model.gguf", "llamacpp", "no such GGUF file"),
    ("/nonexistent/model.gguf", "transformers", "no such GGUF file"),
    ("not a model", "transformers", "neither one of"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "llamacpp", "engine = \"transformers\""),
])
def test_bad_sources_say_what_is_wrong(source, engine, needle):
    cfg = load_config().replace(model={"source": source, "engine": engine})
    fetch = fetch_gguf if engine == "llamacpp" else fetch_generator
    with pytest.raises(ModelError, match=needle):
        fetch(cfg)


def test_an_unknown_engine_is_a_config_error():
    from kbgate.engines import load_engine
    from kbgate.errors import ConfigError

    with pytest.raises(ConfigError, match="llamacpp, transformers, openai"):
        load_engine(load_config().replace(model={"engine": "vllm"}))


def test_the_six_parts_are_installed_and_add_up():
    b = BUNDLES["bundled"]
    assert sum(p.stat().st_size for p in part_paths(b)) == b.size


@pytest.mark.slow
def test_the_real_bundled_gguf_is_verified_and_gives_a_next_token_distribution(real_engine):
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    probs = real_engine.classify(msgs, ["Paris", "London", "Berlin"], open_last=False)
    assert abs(sum(probs.values()) - 1) < 1e-6 and max(probs, key=probs.get) == "Paris", probs


@pytest.mark.slow
def test_a_tampered_copy_of_the_real_gguf_is_refused(tmp_path, real_gguf):
    cfg = load_config().replace(model={"models_dir": str(tmp_path)})
    copy = tmp_path / BUNDLES["bundled"].filename
    data = bytearray(real_gguf.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor changed
    copy.write_bytes(data)
    with pytest.raises(ModelError, match="refusing the bundled model"):
        fetch_gguf(cfg)


def test_an_unknown_requantize_type_is_refused_naming_the_choices(tmp_path):
    cfg, path = bundled_cfg(tmp_path, b"GGUF-pretend-model")
    with pytest.raises(ModelError, match="requantize must be '' or one of iq4_nl, q4_0, q8_0, got 'q3_x'"):
        fetch_gguf(cfg.replace(model={"requantize": "q3_x"}))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".gguf") == [path.name]  # nothing written


@pytest.mark.slow
def test_requantize_derives_a_copy_once_that_llama_cpp_loads_as_that_type(tmp_path):
    """The bundled GGUF requantized to Q4_0 (the quickest type to make) beside it; the second call reuses the file."""
    from kbgate.engines.llamacpp import LlamaCppEngine

    src = fetch_gguf(load_config())
    gguf = tmp_path / src.name
    os.symlink(src, gguf)
    cfg = load_config().replace(model={"source": str(gguf), "models_dir": str(tmp_path), "requantize": "q4_0"})
    out = fetch_gguf(cfg)
    assert out != gguf and out.parent == tmp_path and out.stat().st_size < src.stat().st_size
    mtime = out.stat().st_mtime_ns
    assert fetch_gguf(cfg) == out and out.stat().st_mtime_ns == mtime  # made once
    assert not list(tmp_path.glob("*.tmp"))
    engine = LlamaCppEngine(out, n_ctx=512, slots=1, kv_dir=None)
    assert engine.info().quantization == "Q4_0"
    reply = "".join(p for p in engine.stream([{"role": "user", "content": "What is 2 + 3? Answer with a number."}],
                                             max_tokens=8) if isinstance(p, str))
    assert "5" in reply
