"""The second retrieval pass: a Chinese question translated into English finds the English page.

Fast tests script the translation through the fake engine; the slow test has the real
model translate and checks the English page is among the answer's sources.
"""
from __future__ import annotations

import pytest

from fake_engine import FakeEngine
from kbgate.config import load_config
from kbgate.errors import ConfigError
from kbgate.retrieval import Hit
from kbgate.translate import fuse_hits

QUERY = "正式环境的库怎么开通查询权限？"  # eng/database-access is in English and shares no term with it
ENGLISH = "How do I get query access to the production database?"
PAGE = "eng/database-access"


def services(hash_retriever, translations, **sections):
    from kbgate.service import build

    cfg = load_config().replace(answer={"verify_citations": False, "min_score": 0.0}, gate={"negative_threshold": 1.01},
                                **sections)
    return build(cfg, FakeEngine("Request it in the access portal [1].", translations=translations), hash_retriever)


def test_a_chinese_question_also_searched_in_english_finds_the_english_page(hash_retriever):
    without = services(hash_retriever, {}).pipeline.ask(QUERY)
    assert PAGE not in {s.page for s in without.sources} and "also searched" not in without.reason
    s = services(hash_retriever, {QUERY: ENGLISH})
    r = s.pipeline.ask(QUERY)
    assert PAGE in {x.page for x in r.sources}, [x.page for x in r.sources]
    assert f"also searched in English as “{ENGLISH}”" in r.reason and r.timings_ms["translate"] >= 0
    streams = [c for name, c in s.engine.calls if name == "stream"]
    assert len(streams) == 2 and streams[0]["messages"][-1]["content"] == QUERY  # the translation, then the answer
    assert streams[0]["stop"] == ["\n"] and streams[0]["temperature"] == 0.0 and QUERY in streams[1]["messages"][-1]["content"]


@pytest.mark.parametrize("line", ["", "正式环境的数据库权限", "x" * 200])
def test_an_unusable_translation_leaves_the_query_alone(hash_retriever, line):
    r = services(hash_retriever, {QUERY: line}).pipeline.ask(QUERY)
    assert "also searched" not in r.reason and PAGE not in {x.page for x in r.sources}


def test_english_questions_are_not_translated_and_translate_can_be_off(hash_retriever):
    s = services(hash_retriever, {})
    s.pipeline.ask("How do I request database access?")
    translate_prompt = s.pipeline.translator.prefix[0]["content"]
    assert not [c for n, c in s.engine.calls if n == "stream" and c["messages"][0]["content"] == translate_prompt]
    off = services(hash_retriever, {QUERY: ENGLISH}, retrieval={"translate": []})
    assert off.pipeline.translator is None and "also searched" not in off.pipeline.ask(QUERY).reason
    with pytest.raises(ConfigError, match=r"\[retrieval\] translate"):
        load_config().replace(retrieval={"translate": ["fr"]})


def hit(page, heading, relevance):
    return Hit(page, f"{page}.md", page, heading, "", "", "doc", 0.0, None, None, 0.0, 0.0, relevance)


def test_fused_hits_rank_sections_both_passes_found_first_with_their_best_relevance():
    a = [hit("zh/a", "A", 0.3), hit("zh/b", "B", 0.9)]
    b = [hit("en/c", "C", 0.8), hit("zh/a", "A", 0.7)]
    out = fuse_hits([a, b], k=3)
    assert [h.page for h in out] == ["zh/a", "en/c", "zh/b"]
    assert out[0].relevance == 0.7 and out[0].score > out[1].score


@pytest.mark.slow
def test_the_real_model_translates_and_the_english_page_is_found(real_services):
    from indexer.tokenize import detect_lang
    from kbgate.translate import other_language

    s, query = real_services, "生产环境的数据库怎么申请只读账号？"
    english = s.pipeline.translator.translate(query)
    assert english and detect_lang(english) == "en", english  # a usable line (its wording varies by engine)
    lists = s.retriever.search_many([query, english], k=15)
    assert PAGE in {h.page for h in other_language(s.retriever, lists[1], query)[:5]}, english
    assert PAGE in {h.page for h in fuse_hits([lists[0][:5], other_language(s.retriever, lists[1], query)[:5]], 5)}
