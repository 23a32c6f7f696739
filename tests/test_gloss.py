"""BM25 across languages through CC-CEDICT (indexer.gloss): the glossing itself and what it finds."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil

from index_fixtures import write_kb

from indexer.gloss import gloss_terms, reduced, stem
from indexer.index import load_index
from indexer.store import build_index
from kbgate.retrieval import GLOSS, Retriever

GLOSS_KB = {
    "hr/special-leave.md": "---\ntitle: 特殊假期\n---\n# 特殊假期\n\n## 婚假\n\n员工登记结婚可享受婚假 10 个工作日。\n",
    "hr/sick-leave.md": "---\ntitle: Sick leave\n---\n# Sick leave\n\n## Certificates\n\n"
                        "Three or more days off sick need a doctor's certificate.\n",
    "office/parking.md": "---\ntitle: Parking\n---\n# Parking\n\n## Visitors\n\n"
                         "Visitors park on level B2; reception registers the plate a day ahead.\n",
    "it/printers.md": "---\ntitle: 打印机\n---\n# 打印机\n\n## 卡纸\n\n打开前盖，取出卡住的纸张。\n",
}


def test_chinese_words_read_as_their_dictionary_senses():
    assert {stem("marriage"), stem("leave")} <= set(gloss_terms("婚假"))
    assert stem("release") in gloss_terms("预订会被自动释放")
    # English words are stemmed the same way on both sides: married / marry meet
    assert gloss_terms("married") == gloss_terms("marry") == [stem("marry")]
    # a capitalised reading is a name (元 [Yuan2], the Mongol dynasty): its senses are left out
    assert "mongol" not in gloss_terms("元") and "yuan" in gloss_terms("元")
    # a place keeps its name (a capitalised reading of a longer word)
    assert stem("beijing") in gloss_terms("北京")
    # codes and compounds are kept as the tokenizer cuts them; a word the dictionary lacks reads as its characters
    assert "auth-403" in gloss_terms("AUTH-403") and stem("night") in gloss_terms("每晚")


def test_the_index_keeps_only_the_dictionary_its_english_pages_can_match():
    cut = reduced({stem("marriage"), stem("day")})
    assert cut["婚假"] == stem("marriage") and "day" in cut["天"].split()
    assert all(set(v.split()) <= {stem("marriage"), stem("day")} for v in cut.values())
    assert gloss_terms("婚假", cut) == [stem("marriage")]


def _retriever(index_cfg, tmp_path, hash_embedder, gloss: float):
    ix_dir = tmp_path / "ix"
    if not ix_dir.exists():
        build_index(index_cfg, write_kb(tmp_path / "kb", GLOSS_KB), ix_dir, hash_embedder, progress=False)
    # hashes of tokens do not cross languages: only BM25 and its glossed side rank here
    cfg = dataclasses.replace(index_cfg.retrieval, weights_en={"bm25": 1.0, "hash-64": 0.0, GLOSS: gloss},
                              weights_zh={"bm25": 1.0, "hash-64": 0.0, GLOSS: gloss})
    return Retriever(load_index(ix_dir, hash_embedder), hash_embedder, cfg)


def test_an_english_question_finds_the_chinese_page_through_the_dictionary(index_cfg, tmp_path, hash_embedder):
    q = "how many days off do I get when I get married?"
    without = [h.page for h in _retriever(index_cfg, tmp_path, hash_embedder, 0.0).search(q, 3)]
    assert "hr/special-leave" not in without and without[0] == "hr/sick-leave"  # "days" is all BM25 can match
    hits = _retriever(index_cfg, tmp_path, hash_embedder, 1.0).search(q, 3)
    assert "hr/special-leave" in [h.page for h in hits]


def test_a_chinese_question_finds_the_english_page_through_the_dictionary(index_cfg, tmp_path, hash_embedder):
    q = "访客的车停在哪里？"
    assert "office/parking" not in [h.page for h in _retriever(index_cfg, tmp_path, hash_embedder, 0.0).search(q, 3)]
    hits = _retriever(index_cfg, tmp_path, hash_embedder, 1.0).search(q, 3)
    assert hits[0].page == "office/parking"


def test_an_index_built_before_the_gloss_still_loads_and_the_next_build_adds_it(index_cfg, tmp_path, hash_embedder,
                                                                               caplog):
    r = _retriever(index_cfg, tmp_path, hash_embedder, 1.0)
    version = tmp_path / "ix" / r.index.version
    for name in ("gloss-words.json", "bm25-gloss", "bm25-gloss-pages"):  # as an index built before it was
        shutil.rmtree(version / name) if (version / name).is_dir() else (version / name).unlink()
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["settings"]["gloss"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="indexer"):
        old = Retriever(load_index(tmp_path / "ix", hash_embedder), hash_embedder, r.cfg)
    assert old.index.gloss is None and "kbgate index" in caplog.text
    assert old.weights("married")[0][GLOSS] == 0.0
    assert "office/parking" not in [h.page for h in old.search("访客的车停在哪里？", 3)]
    summary = build_index(index_cfg, tmp_path / "kb", tmp_path / "ix", hash_embedder, progress=False)
    assert not summary.up_to_date and summary.embedded == 0  # rebuilt, every vector reused
    new = Retriever(load_index(tmp_path / "ix", hash_embedder), hash_embedder, r.cfg)
    assert new.search("访客的车停在哪里？", 3)[0].page == "office/parking"
