"""One final answer in every front end with the real bundled Qwen (llama.cpp, the default engine) over
the real kb/ index (slow): the streamed reply is rewritten at `done`, and every front end ends with it."""
import pytest

from lm_fixtures import load_real_engine
from test_frontends import assert_one_final_answer, through_every_front_end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def services(kb_index, minilm):
    from kbgate.config import load_config
    from kbgate.retrieval import Retriever
    from kbgate.service import build

    cfg = load_config()
    _, index = kb_index
    return build(cfg, load_real_engine("llamacpp"), Retriever(index, minilm, cfg.retrieval))


@pytest.mark.parametrize("query", ["打印机又卡纸了，气死我了", "How many days of annual leave do I get?"])
def test_the_same_final_answer_in_every_front_end_with_the_real_model(services, monkeypatch, query):
    got = through_every_front_end(services, query, monkeypatch, timeout=300)
    print(f"\n{query!r}: route {got['result']['route']}; streamed {len(got['tokens'])} chars, "
          f"final {len(got['api'])} chars, rewritten: {got['tokens'].strip() != got['api'].strip()}")
    assert_one_final_answer(got, services)
