"""The answering line of a value question is quoted when the reply leaves the value out (kbgate.decide)."""
import pytest

from kbgate.decide import asks_value, quote_value, value_line
from kbgate.grounding import Passage
from kbgate.quotes import check_values

LEAVE = Passage(1, "其他假期", "其他假期 › 假期一览", """| 假期 | 天数 | 是否带薪 |
|---|---|---|
| 婚假 | 10 个工作日 | 全薪 |
| 陪产假 | 10 个工作日 | 全薪 |
| 育儿假 | 每年 5 个工作日 | 全薪 |
| 丧假 | 3 个工作日 | 全薪 |""", "hr/special-leave")
ONCALL = Passage(2, "On-call", "值班 › 值班补贴", """| 日期类型 | 补贴（每人每天） |
|---|---|
| 工作日 | 200 元 |
| 周末 | 400 元 |
| 法定节假日 | 600 元 |""", "eng/oncall")
REMOTE = Passage(3, "Remote work", "Remote work › Office days",
                 "The default arrangement is three office days per week.\nAsk your manager for exceptions.",
                 "hr/remote-work")


@pytest.mark.parametrize("query", ["陪产假可以休几天？", "周末值班一天给多少补贴？", "报销截止期限是什么时候",
                                   "How many days off do I get when I get married?", "daily per diem?",
                                   "What's the max hotel rate per night?", "When does the office open?"])
def test_questions_that_ask_for_a_value(query):
    assert asks_value(query)


@pytest.mark.parametrize("query", ["怎么连公司 VPN？", "How do I book a meeting room?", "打印机卡纸了怎么办"])
def test_how_to_questions_do_not_ask_for_a_value(query):
    assert not asks_value(query)


def test_a_reply_around_the_value_gets_the_named_row_quoted_first():
    text, changed = quote_value("上海公司提供生育津贴 [1]。", [LEAVE], "老婆下个月生，男的能请几天假陪产？", "zh")
    assert changed
    first, rest = text.split("\n", 1)
    assert first.startswith("Wiki 原文：“假期: 陪产假; 天数: 10 个工作日") and first.endswith("[1]。")
    assert rest == "上海公司提供生育津贴 [1]。"


def test_a_reply_that_states_the_lines_value_is_left_alone():
    reply = "陪产假是 10 个工作日 [1]。"
    assert quote_value(reply, [LEAVE], "陪产假可以休几天？", "zh") == (reply, False)


def test_a_how_to_question_is_left_alone():
    assert quote_value("在 HR 系统申请 [1]。", [LEAVE], "陪产假怎么申请", "zh") == ("在 HR 系统申请 [1]。", False)


def test_across_languages_the_embedders_cosine_picks_the_line():
    calls = []

    def similar(query, lines):
        calls.append(lines)
        return [0.9 if "婚假" in line else 0.8 for line in lines]
    found = value_line("How many days off do I get when I get married?", [LEAVE], similar)
    assert found == ("假期: 婚假; 天数: 10 个工作日; 是否带薪: 全薪", 1) and len(calls) == 1
    # without an embedder that compares the languages nothing ties a line to the question
    assert value_line("How many days off do I get when I get married?", [LEAVE], None) is None


def test_shared_words_beat_the_cosine_and_the_better_passage_wins():
    # the remote-work line shares no topic word with the question; the 周末 row is named by it
    assert value_line("周末值班一天给多少补贴？", [REMOTE, ONCALL], lambda q, ls: [1.0] * len(ls)) == \
        ("日期类型: 周末; 补贴（每人每天）: 400 元", 2)


def test_the_questions_own_numbers_are_not_an_answer():
    p = Passage(1, "Sick leave", "", "Tell your manager before 10:00 on the first day.\nA week has 5 days.", "hr/sick")
    found = value_line("I'm off for 5 days, by when do I tell my manager?", [p])
    assert found == ("Tell your manager before 10:00 on the first day.", 1)


def test_a_neighbouring_rows_value_gives_way_to_the_row_the_question_names():
    text, notes = check_values("200 元 [2]", [ONCALL], "周末值班一天给多少补贴？", "zh", topic=True)
    assert "400 元" in text and "200" not in text and notes


def test_a_line_with_the_kind_of_value_asked_for_beats_one_sharing_more_words():
    p = Passage(1, "失物招领", "失物招领 › 交还", "在会议室、食堂捡到的物品，请交到 1 楼前台。\n前台保管 30 天，逾期捐赠。",
                "office/lost-found")
    assert value_line("东西落在会议室了，前台能帮忙留多久？", [p]) == ("前台保管 30 天，逾期捐赠。", 1)
    # "how much" with no amount on any line: nothing is quoted
    assert value_line("失物招领要交多少钱？", [p]) is None


def test_the_longer_name_wins_when_one_key_hides_in_another():
    from kbgate.decide import names
    assert names("陪产假", "陪产假有几天") == 3 and names("产假", "陪产假有几天") == 2 and names("婚假", "陪产假有几天") == 0
    rows = Passage(1, "假期", "", "| 假期 | 天数 |\n|---|---|\n| 产假 | 158 天 |\n| 陪产假 | 10 个工作日 |", "hr/leave")
    assert value_line("陪产假有几天？", [rows]) == ("假期: 陪产假; 天数: 10 个工作日", 1)


@pytest.mark.parametrize("query,kinds", [("几点去前台报到？", {"time"}), ("How long is a VPN session?", None),
                                         ("出差一天补贴多少钱", {"money", "usd"}), ("How many employees do we have?", {"people"}),
                                         ("保安电话是多少", {"phone"}), ("报销截止期限是什么时候", set())])
def test_the_kind_of_value_a_question_asks_for(query, kinds):
    from kbgate.values import DURATION, asked_kinds
    assert asked_kinds(query) == (DURATION if kinds is None else kinds)


def test_the_embedder_compares_only_the_lines_still_in_the_running():
    asked = []

    def similar(query, lines):
        asked.append(list(lines))
        return [0.5] * len(lines)
    # the 周末 row is named: the other rows and the remote-work line never reach the embedder
    assert value_line("周末值班一天给多少补贴？", [REMOTE, ONCALL], similar) == ("日期类型: 周末; 补贴（每人每天）: 400 元", 2)
    assert asked == []
    # across languages every line with the asked-for kind is compared, in one call
    value_line("How many days off do I get when I get married?", [LEAVE], similar)
    assert len(asked) == 1 and len(asked[0]) == 4


TRAVEL = Passage(1, "出差管理规定", "出差管理规定 › 住宿标准（每晚）", """| 城市类别 | 城市举例 | 员工 | 总监及以上 |
|---|---|---|---|
| 一线城市 | 北京、上海 | 700 元 | 1,000 元 |
| 其他城市 | — | 400 元 | 600 元 |""", "hr/business-travel")
PARKING = Passage(2, "Parking", "Parking › EV charging", "8 EV chargers on B2, max 4 hours per session, ¥1.5 per kWh.",
                  "office/parking")


def test_across_languages_the_dictionary_ties_a_chinese_row_to_an_english_question():
    from indexer.gloss import gloss_terms
    from indexer.topic import topic_terms
    from indexer.tokenize import tokenize

    def glossed(text):
        return set(gloss_terms(topic_terms(tokenize(text))))
    q = "What's the max hotel rate per night for a regular employee travelling to Beijing?"
    # without it the English parking line wins on its one shared word ("max") and its ¥: the wrong answer
    assert value_line(q, [TRAVEL, PARKING])[1] == 2
    # on the English side the Beijing row shares beijing, employee and (the heading's 每晚) night
    assert value_line(q, [TRAVEL, PARKING], None, glossed) == (
        "城市类别: 一线城市; 城市举例: 北京、上海; 员工: 700 元; 总监及以上: 1,000 元", 1)
    # the same question in Chinese on the Chinese page compares words directly: the dictionary is not asked
    assert value_line("北京出差住宿每晚最多多少钱？", [TRAVEL], None, lambda t: 1 / 0)[0].endswith("1,000 元")


@pytest.mark.parametrize("query", ["How often does my password expire?",
                                   "How many unused annual leave days can I carry over?"])
def test_how_often_and_a_longer_how_many_ask_for_a_duration(query):
    from kbgate.values import DURATION, asked_kinds
    assert asked_kinds(query) == DURATION
