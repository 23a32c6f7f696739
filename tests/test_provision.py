"""Model provisioning: the pinned hash is enforced; the real bundled Qwen loads (slow)."""
import hashlib

import pytest
import torch

from kbgate.config import load_config
from kbgate.errors import ModelError
from kbgate.provision import BUNDLED_SIZE, assemble_gguf, bundled_part_paths, fetch_generator


def test_assembly_checks_the_hash(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF-part-one", b"-part-two"]):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(data)
        parts.append(p)
    good = hashlib.sha256(b"GGUF-part-one-part-two").hexdigest()
    out = assemble_gguf(parts, tmp_path / "m.gguf", good)
    assert out.read_bytes() == b"GGUF-part-one-part-two"


def test_hash_mismatch_is_refused_and_leaves_nothing(tmp_path):
    p = tmp_path / "part.bin"
    p.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="refusing the bundled model: SHA-256"):
        assemble_gguf([p], tmp_path / "m.gguf", "0" * 64)
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.partial").exists()


def test_bundled_source_with_a_wrong_pinned_hash_is_refused(tmp_path):
    cfg = load_config().replace(model={"models_dir": str(tmp_path), "gguf_sha256": "f" * 64})
    with pytest.raises(ModelError, match="expected f{64}"):
        fetch_generator(cfg)
    assert not any(tmp_path.glob("qwen-bundled-*"))


@pytest.mark.parametrize("source,needle", [
    ("/nonexistent/model.gguf", "no such GGUF file"),
    ("not a model", "neither 'bundled'"),
])
def test_bad_sources_say_what_is_wrong(source, needle):
    with pytest.raises(ModelError, match=needle):
        fetch_generator(load_config().replace(model={"source": source}))


def test_the_six_parts_are_installed_and_add_up():
    assert sum(p.stat().st_size for p in bundled_part_paths()) == BUNDLED_SIZE


@pytest.mark.slow
def test_real_bundled_qwen_gives_a_next_token_distribution(real_lm):
    ids = real_lm.encode(real_lm.render([{"role": "user", "content": "What is the capital of France?"}]))
    logits = real_lm.last_logits([ids], use_cache=False)[0]
    probs = torch.softmax(logits, -1)
    assert logits.shape[0] == 151936 and abs(float(probs.sum()) - 1) < 1e-3
    top = real_lm.tok.decode([int(probs.argmax())])
    assert "Paris" in top or "The" in top or "capital" in top.lower(), top
