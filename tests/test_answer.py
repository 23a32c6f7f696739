"""The grounding check and passage compression (pure functions)."""
from kbgate.answer import Passage, attribute, citations
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
