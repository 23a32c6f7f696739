"""The grounding check and passage compression (pure functions)."""
from kbgate.grounding import (Passage, attribute, citations, copies_example, count_steps, drop_passage_headers,
                              quoted_steps_reply)
from kbgate.compress import compress

VPN = Passage(1, "VPN", "", "公司统一使用 Acme Connect 客户端（基于 OpenConnect 协议）。"
                            "家庭路由器网段冲突：公司内网使用 10.0.0.0/8。")
PWD = Passage(2, "Password", "",
              "Reset your password at https://id.acme.example/reset; a mail goes to your backup address.")


def test_supported_sentences_get_the_passage_that_supports_them():
    text, cited = attribute("公司统一使用 Acme Connect 客户端。Reset your password at the reset page.", [VPN, PWD])
    assert text == "公司统一使用 Acme Connect 客户端 [1]。Reset your password at the reset page [2]."
    assert cited == [1, 2]


def test_a_wrong_citation_moves_to_the_supporting_passage():
    text, cited = attribute("公司统一使用 Acme Connect 客户端 [2]。", [VPN, PWD])
    assert text == "公司统一使用 Acme Connect 客户端 [1]。" and cited == [1]


def test_a_parroted_worked_example_is_not_grounded():
    reply = ("确实很耽误事，我们一步步来排查：\n1. 看一下打印机屏幕是否显示“离线” [2]。\n"
             "2. 确认电脑连的是访客网络，访客网络无法打印 [2]。\n3. 删除卡住的打印任务，再重启打印机 [1]。")
    text, cited = attribute(reply, [VPN, PWD])
    assert cited == [] and "[" not in text


def test_unverified_mode_trusts_the_model_citations():
    assert attribute("Something unrelated [2].", [VPN, PWD], verify=False)[1] == [2]


def test_citations_ignore_numbers_without_a_passage():
    assert citations("see [1], [7] and [1] again, [2]", 2) == [1, 2]


def test_compress_keeps_the_lines_that_match_the_query_in_order():
    text = "\n".join(f"line {i} about parking" for i in range(30)) + "\nthe VPN client is Acme Connect"
    out = compress(text, "which VPN client", budget=20, count=lambda t: len(t.split()))
    assert "Acme Connect" in out and len(out.split()) <= 20
    assert compress("short text", "q", budget=50, count=len) == "short text"


STEPS_SECTION = """1. Open <https://ping.acme.internal>. If it loads, the VPN works.
2. Check DNS:

   ```bash
   # macOS / Linux
   nslookup git.acme.internal 10.10.0.53
   ```

3. Close **all** proxy tools and see [the VPN guide](vpn.md)."""


def test_wiki_steps_are_quoted_plain_with_their_code_and_citation():
    passages = [Passage(1, "VPN", "VPN › Cause", "1. Expired password.\n2. Expired certificate."),
                Passage(2, "VPN", "VPN › Fix", STEPS_SECTION)]
    text, cited = quoted_steps_reply(passages, "en")
    assert cited == [2]
    assert text.splitlines()[1:] == [
        "1. Open https://ping.acme.internal. If it loads, the VPN works. [2]",
        "2. Check DNS: `nslookup git.acme.internal 10.10.0.53` [2]",  # the command, not its comment
        "3. Close all proxy tools and see the VPN guide. [2]"]
    assert quoted_steps_reply(passages[:1], "en") is None  # a list of causes is not a list of steps


def test_a_reply_that_parrots_the_worked_example_is_caught():
    example = ("打印一直出问题确实很耽误事：\n1. 看一下打印机屏幕是否显示“离线” [2]。\n"
               "2. 确认电脑连的是 Acme-Corp 网络，访客网络无法打印 [2]。")
    parrot = ("VPN 出问题确实很耽误事：\n1. 看一下打印机屏幕是否显示“离线” [1]。\n"
              "2. 确认电脑连的是 Acme-Corp 网络，访客网络无法打印 [1]。")
    own = "VPN 连不上确实烦人：\n1. 先确认密码没有过期 [1]。\n2. 再检查设备证书的有效期 [1]。"
    jam = [Passage(1, "打印机故障排查", "打印机故障排查 › 解决步骤 › 卡纸",
                   "1. 打开盖板。2. 取出卡住的纸。3. 检查纸盒。")]
    assert copies_example(parrot, example, jam) and not copies_example(own, example, jam)
    offline = [Passage(1, "打印机故障排查", "打印机故障排查 › 解决步骤", "1. 看一下打印机屏幕是否显示“离线”。"
                       "2. 确认电脑连的是 Acme-Corp 网络，访客网络无法打印。")]
    assert not copies_example(parrot, example, offline)  # the passages say it too: not a parrot
    assert count_steps(own) == 2 and count_steps("no steps here [1].") == 0


def test_compress_keeps_a_table_whole_with_its_header():
    text = ("公司年假 = 法定年休假 + 公司福利年假。天数按累计工作年限计算，需要提供社保缴纳记录证明：\n"
            "| 累计工作年限 | 合计 |\n|---|---|\n| 不满 1 年 | 10 天 |\n| 1-10 年 | 15 天 |\n| 10 年以上 | 20 天 |\n\n"
            "年假申请在 Workday 提交，经理审批后生效，审批一般在两个工作日内完成。")
    count = lambda t: len(t)  # noqa: E731  one token per character
    out = compress(text, "年假有多少天？", budget=110, count=count)
    assert "| 累计工作年限 | 合计 |\n| 不满 1 年 | 10 天 |\n| 1-10 年 | 15 天 |\n| 10 年以上 | 20 天 |" in out
    assert "---" not in out  # the header rule only costs tokens
    assert count(out) <= 110
    small = compress(text, "年假有多少天？", budget=30, count=count)  # the table alone is over budget: rows
    assert count(small) <= 30 + 2 and "|" in small


# --- values: every number, amount, date, duration, time and code must be in the cited passage

import pytest  # noqa: E402

from kbgate.quotes import check_values, is_yes_no, passage_lines, quote_verdict  # noqa: E402
from kbgate.values import missing, values  # noqa: E402

ANNUAL = Passage(1, "年假管理办法", "年假管理办法 › 年假天数", """公司年假 = 法定年休假 + 公司福利年假：

| 累计工作年限 | 法定年休假 | 公司福利年假 | 合计 |
|---|---|---|---|
| 不满 1 年 | 0 天 | 10 天 | 10 天 |
| 满 1 年不满 10 年 | 5 天 | 10 天 | 15 天 |
| 满 10 年不满 20 年 | 10 天 | 8 天 | 18 天 |
| 满 20 年及以上 | 15 天 | 7 天 | 22 天 |

> 例：7 月 1 日入职、累计工作 3 年的员工，当年年假 = 15 × 184 ÷ 365 ≈ 7.56，取 7.5 天。""", "hr/annual-leave")
SPECIAL = Passage(1, "其他假期", "其他假期 › 假期一览", """| 假期 | 天数 | 是否带薪 | 备注 |
|---|---|---|---|
| 婚假 | 10 个工作日 | 全薪 | 领证后 1 年内一次性休完 |
| 陪产假 | 10 个工作日 | 全薪 | 北京为 15 天；子女出生后 6 个月内休完 |
| 育儿假 | 每年 5 个工作日 | 全薪 | 子女满 3 周岁前每年享有 |""", "hr/special-leave")
SICK = Passage(1, "Sick leave policy", "Sick leave policy › When you need a medical certificate",
               """| Length of absence | What you need |
|---|---|
| Up to 2 consecutive working days | Nothing, self-certified |
| 3 working days or more | Sick-leave certificate (病假证明/病假单) from a hospital |
| More than 15 working days | Certificate from a grade-II or grade-III hospital, renewed every 30 days |

Message your manager **before 10:00** on the first day you are off.""", "hr/sick-leave")


@pytest.mark.parametrize("text, found", [
    ("15 天", {"15 day"}), ("１５天", {"15 day"}), ("十五天", {"15 day"}), ("两个工作日", {"2 workday"}),
    ("¥1,500", {"1500 money"}), ("1，500 元", {"1500 money"}), ("RMB 300", {"300 money"}),
    ("每天 60 美元", {"60 usd"}), ("$60 a day", {"60 usd"}), ("USD 250", {"250 usd"}), ("250 dollars", {"250 usd"}),
    ("before 10:00", {"10:00"}), ("上午 9:00–13:00", {"9:00", "13:00"}), ("10：00 前", {"10:00"}),
    ("错误码E02", {"e02"}), ("Error `AUTH-403: user not permitted`", {"auth-403"}),
    ("3 working days", {"3 workday"}), ("three working days", {"3 workday"}), ("10 个工作日", {"10 workday"}),
    ("call ext. 8000", {"8000"}), ("5–20 分钟", {"5 minute", "20 minute"}), ("one year", {"1 year"}),
    ("60%–100%", {"60 percent", "100 percent"}), ("see step [2].", set()), ("1. Open the portal [1]", set()),
    ("DNS 10.10.0.53", {"10.10.0.53"}), ("7 月 1 日", {"7 month", "1 day"}),
    ("Go to <https://id.acme.example/reset>.", {"id.acme.example/reset"}),
    ("mail hr@acme.example", {"hr@acme.example"}),
    ("nslookup git.acme.internal", {"git.acme.internal"}),
])
def test_values_are_found_and_normalised_in_both_languages(text, found):
    assert {str(v) for v in values(text)} == found


def test_a_value_must_be_in_the_passage_with_its_unit_not_inside_another_number():
    assert missing("Return it within 3 working days [1].", "return it within 3 working days") == []
    assert missing("陪产假有 10 working days。", "陪产假 | 10 个工作日") == []  # units cross languages
    assert [str(v) for v in missing("陪产假每年 5 天", "育儿假 | 每年 5 个工作日")] == ["5 day"]
    assert [str(v) for v in missing("Call 800.", "call extension 8000")] == ["800"]
    assert [str(v) for v in missing("国际出差每天 60 元。", "国际出差：每天 **60 美元**")] == ["60 money"]  # not yuan
    assert missing("International trips get $60 a day.", "国际出差：每天 **60 美元**") == []
    assert [str(v) for v in missing("Error AUTH-404 [1].", "Error AUTH-403")] == ["auth-404"]
    assert missing("工作 3 年的员工有 15 天", "| 满 1 年不满 10 年 | 15 天 |", query="工作三年的员工年假几天") == []


def test_the_issue_annual_leave_arithmetic_becomes_the_table_row_the_question_names():
    wrong = "工作三年的员工当年年假 = 15 × 364 ÷ 365 ≈ 7.56，取 7 天 [1]。"
    text, notes = check_values(wrong, [ANNUAL], "工作三年的员工年假一共多少天？", "zh")
    assert "364" not in text and "取 7 天" not in text and notes
    assert "满 1 年不满 10 年" in text and "合计: 15 天" in text and text.endswith("[1]。")


def test_a_value_from_another_row_of_the_table_is_caught():
    q = "工作三年的员工年假一共多少天？"
    assert check_values("工作三年的员工年假一共 15 天 [1]。", [ANNUAL], q, "zh")[1] == []
    text, notes = check_values("工作三年的员工年假一共 18 天 [1]。", [ANNUAL], q, "zh")  # 18 天 is another row's
    assert "18 天" not in text.split("“")[0] and "15 天" in text and notes


def test_the_issue_paternity_leave_five_days_gives_way_to_ten_working_days():
    text, notes = check_values("陪产假每年 5 天 [1]。", [SPECIAL], "陪产假可以休几天？", "zh")
    assert "每年 5 天" not in text and "陪产假; 天数: 10 个工作日" in text and text.startswith("Wiki 原文"), text
    right = "陪产假有 10 个工作日 [1]。"
    assert check_values(right, [SPECIAL], "陪产假可以休几天？", "zh") == (right, [])


def test_an_unsupported_sentence_with_no_line_to_quote_is_dropped():
    text, notes = check_values("Message your manager before 10:00 [1]. The office opens at 7:30 [1].",
                               [SICK], "when do I tell my manager", "en")
    assert text == "Message your manager before 10:00 [1]." and "7:30" in notes[0]


def test_the_issue_sick_note_no_quotes_the_deciding_row():
    q = "Do I need a sick note if I'm off for three days?"
    assert is_yes_no(q) and is_yes_no("请三天病假需要病假条吗？") and is_yes_no("能报销打车费么？")
    assert not is_yes_no("How many days of sick leave?") and not is_yes_no("报销需要什么？")
    text, changed = quote_verdict("No, you do not need one [1].", [SICK], q, "en")
    assert changed and not text.startswith("No")
    assert text.startswith('The wiki says: "Length of absence: 3 working days or more; What you need: Sick-leave')
    assert text.endswith("[1].")
    zh, _ = quote_verdict("不需要 [1]。", [SICK], "请三天病假需要病假条吗？", "zh")
    assert zh.startswith("Wiki 原文：“Length of absence: 3 working days or more") and "不需要" not in zh


def test_passage_lines_read_table_rows_with_their_headers_and_skip_code():
    lines = passage_lines("Intro **bold**.\n\n| a | b |\n|---|---|\n| x | 1 |\n\n```bash\nrm -rf /\n```\n1. Step one.")
    assert lines == [("", "Intro bold."), ("x", "a: x; b: 1"), ("", "Step one.")]


def test_a_plain_answers_value_must_sit_beside_a_word_of_the_question():
    faq = Passage(1, "其他假期", "其他假期 › 常见问题",
                  "**二胎、三胎也有育儿假吗？** 有，每个子女单独计算，每年 5 天。\n\n"
                  "**男员工的陪产假什么时候开始算？** 从实际开始休假的那一天算起。")
    table = Passage(2, SPECIAL.title, SPECIAL.heading, SPECIAL.text, SPECIAL.page)
    off = "每个子女单独计算，每年 5 天 [1]。"
    text, notes = check_values(off, [faq, table], "陪产假可以休几天？", "zh", topic=True)
    assert text.startswith("Wiki 原文：“假期: 陪产假; 天数: 10 个工作日") and text.endswith("[2]。"), text
    assert check_values(off, [faq, table], "陪产假可以休几天？", "zh")[1] == []  # steps: no topic rule


def test_a_wrong_count_is_dropped_when_no_line_holds_the_kind_of_value_asked_for():
    parking = Passage(1, "停车管理", "停车管理", "*English summary: employee parking is in basement B2, ¥600/month "
                      "after company subsidy. 8 EV chargers on B2, max 4 hours per session.*", "office/parking")
    q = "How many employees does the company have in total?"
    text, notes = check_values("The company has 4 employees [1].", [parking], q, "en", topic=True)
    assert text == "" and "dropped" in notes[0]  # no line counts people: the 4 hours line answers nothing
    text, _ = check_values("You can charge for 6 hours [1].", [parking], "How long can I charge my EV?", "en",
                           topic=True)
    assert "max 4 hours per session" in text and "[1]" in text  # a duration asked: the duration line is quoted


def test_copied_passage_headers_go_even_when_cut_off():
    copied = "Book it [1].\n\n[2] (Meeting rooms › Booking)\nBig rooms [2]."
    assert drop_passage_headers(copied) == "Book it [1].\n\nBig rooms [2]."
    cut = "审批后 15 分钟内生效 [1]。\n\n[2] (账号类型与权限申请 › 权"
    assert drop_passage_headers(cut) == "审批后 15 分钟内生效 [1]。"


def test_a_link_the_passage_does_not_give_is_an_invented_value():
    assert missing("Reset it at https://id.acme.example/reset [1].", "Go to <https://id.acme.example/reset>.") == []
    gone = missing("Enroll at https://help.acme.example/espp [1].",
                   "Open https://help.acme.example and request software.")
    assert [str(v) for v in gone] == ["help.acme.example/espp"]


def test_a_sentence_repeating_the_query_is_dropped():
    from kbgate.grounding import drop_echo
    q = "my badge won't open the office door, red light and two beeps. when does it start working"
    assert drop_echo("My badge won't open the office door, red light and two beeps [2]. When does it start working [2]?"
                     "\n1. Hold the badge to the reader for 2 seconds [1].", q) == \
        "1. Hold the badge to the reader for 2 seconds [1]."


def test_a_sentence_whose_values_a_passage_states_is_grounded_across_wordings_and_languages():
    from types import SimpleNamespace as P

    from kbgate.grounding import attribute
    pay = P(n=1, text="- Salary is paid on the **10th of the following month**.\n\n**中文：** 每月 10 日发放上个月工资。")
    other = P(n=2, text="报销款每周四统一付款，审批完成后一般 5 个工作日内到账。")
    # "每个月 10 日发" shares too few words with "每月 10 日发放" for the term share; its value is there
    assert attribute("工资一般每个月 10 日发。", [pay, other]) == ("工资一般每个月 10 日发 [1]。", [1])
    # a value no passage states grounds nothing: the reply stays unattributed
    assert attribute("You get 1 day off when you get married.", [pay, other])[1] == []


def test_across_languages_a_sentences_values_must_stand_together_on_one_line():
    from types import SimpleNamespace as P

    from kbgate.quotes import check_values
    sec = P(n=1, text="## 出差补贴\n\n- 国内出差：每天 **150 元**（当天往返的出差按 80 元计）\n- 国际出差：每天 **60 美元**\n"
                      "- 客户或会议主办方已提供全天餐食的日期，补贴减半")
    q = "daily per diem for a domestic business trip?"  # shares no word with the Chinese lines
    assert check_values("每天 150 元，当天往返 80 元 [1]。", [sec], q, "en", topic=True) == ("每天 150 元，当天往返 80 元 [1]。", [])
    text, notes = check_values("Domestic trips get 150 yuan a day, or 60 yuan for day trips [1].", [sec], q, "en",
                               topic=True)
    assert notes and "150 yuan" not in text  # 150 and 60 sit on different lines: one of them is from another row
