"""The grounding check and passage compression (pure functions)."""
from kbgate.grounding import Passage, attribute, citations, copies_example, count_steps, quoted_steps_reply
from kbgate.compress import compress

VPN = Passage(1, "VPN", "", "公司统一使用 Acme Connect 客户端（基于 OpenConnect 协议）。家庭路由器网段冲突：公司内网使用 10.0.0.0/8。")
PWD = Passage(2, "Password", "", "Reset your password at https://id.acme.example/reset; a mail goes to your backup address.")


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
    example = "打印一直出问题确实很耽误事：\n1. 看一下打印机屏幕是否显示“离线” [2]。\n2. 确认电脑连的是 Acme-Corp 网络，访客网络无法打印 [2]。"
    parrot = "VPN 出问题确实很耽误事：\n1. 看一下打印机屏幕是否显示“离线” [1]。\n2. 确认电脑连的是 Acme-Corp 网络，访客网络无法打印 [1]。"
    own = "VPN 连不上确实烦人：\n1. 先确认密码没有过期 [1]。\n2. 再检查设备证书的有效期 [1]。"
    jam = [Passage(1, "打印机故障排查", "打印机故障排查 › 解决步骤 › 卡纸", "1. 打开盖板。2. 取出卡住的纸。3. 检查纸盒。")]
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
