"""Troubleshooting replies: steps only from a fix section, the acknowledgement in the query's
language, never the worked example, the human contact exactly once (fake services, real index)."""
import re

from kbgate.grounding import MESSAGES, Passage, drop_copied, fix_steps, with_ack, without_contact

EXAMPLE = open("prompts/troubleshoot.example.reply.txt", encoding="utf-8").read()
CHECKED = {"verify_citations": True, "check_values": True, "min_score": 0.0}
WIFI = "Wi-Fi 又断了，烦死了"  # hash index: wifi-dropping's intro, 症状 and 解决步骤 are the passages
STEP1 = "1. 先看 #it-status 频道是否有正在处理的网络故障公告 [{fix}]。"
STEP2 = "2. 在电脑上“忘记” Acme-Guest 和 Acme-BYOD 网络，公司电脑只保留 Acme-Corp [{fix}]。"


def passage_numbers(make_services, query=WIFI) -> dict:
    """{"fix": n, "symptoms": n}: where the query's passages put wifi-dropping's sections (ranking may move them)."""
    r = make_services("", gate={"negative_threshold": 0.0}, answer=CHECKED).pipeline.ask(query)
    by = {src.heading.rsplit("›", 1)[-1].strip(): src.n for src in r.sources if src.page == "it/wifi-dropping"}
    return {"fix": by["解决步骤"], "symptoms": by["症状"]}


def ask(make_services, reply, query):
    s = make_services(reply.format(**passage_numbers(make_services)), gate={"negative_threshold": 0.0},
                      answer=CHECKED)
    return s, s.pipeline.ask(query)


def steps_of(answer):
    return [line for line in answer.splitlines() if re.match(r"\d+\. ", line)]


def assert_fix_steps_and_one_contact(s, r, page=None):
    assert r.route == "troubleshooting", (r.reason, r.answer)
    steps = steps_of(r.answer)
    assert len(steps) >= 2, r.answer
    cited = {int(n) for line in steps for n in re.findall(r"\[(\d)\]", line)}
    by_n = {src.n: src for src in r.sources}
    assert cited and all(re.search(r"(解决步骤|Fix)", by_n[n].heading) for n in cited), [by_n[n].heading for n in cited]
    if page:
        assert {by_n[n].page for n in cited} == {page}
    assert r.answer.count(s.cfg.escalation.contact) == 1, r.answer


def test_symptoms_listed_as_steps_give_way_to_the_fix_section(make_services):
    reply = ("很抱歉 [1]。\n1. 笔记本每隔 5–20 分钟断开一次 Wi-Fi，然后自动重连 [{symptoms}]。\n"
             "2. Wi-Fi 图标显示已连接，但网页打不开 [{symptoms}]。")
    s, r = ask(make_services, reply, WIFI)
    assert_fix_steps_and_one_contact(s, r, "it/wifi-dropping")
    assert "自动重连" not in r.answer and "quoted" in r.reason


def test_model_steps_from_the_fix_section_are_kept_and_a_copied_ack_is_replaced(make_services):
    reply = "打印一直出问题确实很耽误事，我们一步步来排查：\n" + STEP1 + "\n" + STEP2
    s, r = ask(make_services, reply, WIFI)
    assert_fix_steps_and_one_contact(s, r, "it/wifi-dropping")
    assert "quoted" not in r.reason and "耽误事" not in r.answer
    assert r.answer.startswith(MESSAGES["ack"]["zh"])
    assert STEP1.format(**passage_numbers(make_services)) in r.answer


def test_the_acknowledgement_is_in_the_querys_language(make_services):
    reply = "Sorry, that is really annoying, here is what to do.\n" + STEP1 + "\n" + STEP2
    s, r = ask(make_services, reply, WIFI)
    assert r.answer.startswith(MESSAGES["ack"]["zh"]) and "annoying" not in r.answer


def test_an_english_query_never_sees_the_chinese_worked_example(make_services):
    s, r = ask(make_services, EXAMPLE.replace("{", "{{").replace("}", "}}"), "VPN keeps saying login failed, so annoying")
    assert_fix_steps_and_one_contact(s, r)
    assert not re.search(r"打印|耽误事|print\.acme", r.answer), r.answer
    assert r.answer.startswith(MESSAGES["ack"]["en"])
    first = next(src for src in r.sources if s.retriever.steps_section(src.page))
    assert all(src.page == first.page for src in r.sources if src.cited)  # the best page's own fix steps


def test_the_human_contact_appears_exactly_once(make_services):
    s = make_services("", gate={"negative_threshold": 0.0}, answer=CHECKED)
    contact = s.cfg.escalation.contact
    reply = f"网络断线确实烦人。\n{STEP1}\n{STEP2}\n如果还不行，请联系 {contact}。"
    s, r = ask(make_services, reply, WIFI)
    assert_fix_steps_and_one_contact(s, r, "it/wifi-dropping")


FIX = Passage(1, "VPN", "VPN › Fix", "1. Read the error.\n2. Renew the certificate.", "it/vpn-auth-failed")
CAUSE = Passage(2, "VPN", "VPN › Cause", "1. Expired certificate.\n2. Expired password.", "it/vpn-auth-failed")
OTHER = Passage(3, "Wi-Fi", "Wi-Fi › 解决步骤", "1. 忘记 Acme-Guest。", "it/wifi-dropping")


def test_fix_steps_keeps_only_steps_citing_the_pages_fix_section_and_renumbers():
    text = "Sorry.\n1. Expired certificate [2].\n2. Read the error [1].\n3. Forget Acme-Guest [3].\n4. Renew it [1]."
    assert fix_steps(text, [FIX, CAUSE, OTHER], "it/vpn-auth-failed") == (
        "Sorry.\n1. Read the error [1].\n2. Renew it [1].", 2)
    assert fix_steps(text, [FIX, CAUSE, OTHER])[1] == 3  # no page given: any fix section
    assert fix_steps("1. Read the error.\n2. Renew it.", [FIX])[1] == 0  # uncited steps do not count


def test_ack_copied_example_and_contact_helpers():
    assert with_ack("1. Read the error [1].", "en").startswith(MESSAGES["ack"]["en"] + "\n1.")
    assert with_ack("真烦人。\n1. x [1]", "zh") == "真烦人。\n1. x [1]"
    ack = EXAMPLE.splitlines()[0]
    assert with_ack(ack + "\n1. x [1]", "zh", EXAMPLE).startswith(MESSAGES["ack"]["zh"])
    assert drop_copied(ack + "\n1. Read the error [1].", EXAMPLE, [FIX]) == "1. Read the error [1]."
    assert without_contact("a\nCall ext. 8000 now\nb", "ext. 8000") == "a\nb"


HOWTO_AND_FIX = {
    "it/vpn.md": "---\ntitle: VPN 远程访问指南\n---\n\n# VPN 远程访问指南\n\n## 连接步骤\n\n"
                 "1. 打开 Acme Connect 客户端，服务器填 vpn.acme.example。\n2. 输入域账号和域密码登录。\n"
                 "3. 在手机上批准 Acme ID 推送，Acme Connect 登录完成。\n",
    "it/vpn-auth-failed.md": "---\ntitle: VPN 登录失败\ntype: troubleshooting\n---\n\n# VPN 登录失败\n\n"
                             "## 症状\n\n- Acme Connect 登录失败，提示 Login failed。\n\n## 解决步骤\n\n"
                             "1. 记下准确的错误信息。\n2. 检查设备证书是否过期。\n3. 密码过期时先重置密码。\n",
}


def test_the_troubleshooting_pages_fix_wins_over_a_howto_pages_numbered_steps(tmp_path, hash_embedder):
    from fake_engine import FakeEngine
    from index_fixtures import write_kb
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.config import load_config
    from kbgate.retrieval import Retriever
    from kbgate.service import build

    # no troubleshooting boost, so that the how-to page can rank above the troubleshooting one
    cfg = load_config().replace(gate={"negative_threshold": 0.0}, answer=CHECKED,
                                retrieval={"troubleshooting_boost": 1.0, "steps_boost": 1.0})
    build_index(cfg, write_kb(tmp_path / "kb", HOWTO_AND_FIX), tmp_path / "idx", hash_embedder, progress=False)
    retriever = Retriever(load_index(tmp_path / "idx", hash_embedder), hash_embedder, cfg.retrieval)
    s = build(cfg, FakeEngine("真烦人。"), retriever)
    query = "Acme Connect 连接步骤里输入域账号和域密码登录，老是失败，烦死了"
    r = s.pipeline.ask(query)
    assert r.sources[0].page == "it/vpn", [x.page for x in r.sources]  # the how-to page ranks first
    assert_fix_steps_and_one_contact(s, r, "it/vpn-auth-failed")


def test_an_echoed_complaint_is_not_an_answer(make_services):
    s, r = ask(make_services, WIFI + " [1]", WIFI)
    assert_fix_steps_and_one_contact(s, r, "it/wifi-dropping")
    assert "烦死了" not in r.answer and "quoted" in r.reason


def test_when_the_best_page_has_no_numbered_fix_the_next_page_with_one_is_quoted(tmp_path, hash_embedder):
    from fake_engine import FakeEngine
    from index_fixtures import write_kb
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.config import load_config
    from kbgate.retrieval import Retriever
    from kbgate.service import build

    pages = dict(HOWTO_AND_FIX)
    pages["it/vpn-slow.md"] = ("---\ntitle: VPN 登录很慢\ntype: troubleshooting\n---\n\n# VPN 登录很慢\n\n"
                               "## 解决步骤\n\nAcme Connect 登录慢时请耐心等待，登录失败请看 VPN 登录失败。\n")
    cfg = load_config().replace(gate={"negative_threshold": 0.0}, answer=CHECKED)
    build_index(cfg, write_kb(tmp_path / "kb", pages), tmp_path / "idx", hash_embedder, progress=False)
    retriever = Retriever(load_index(tmp_path / "idx", hash_embedder), hash_embedder, cfg.retrieval)
    s = build(cfg, FakeEngine("真烦人。"), retriever)
    r = s.pipeline.ask("VPN 登录很慢 Acme Connect 登录失败，烦死了")
    assert "it/vpn-slow" in [x.page for x in r.sources], [x.page for x in r.sources]
    assert_fix_steps_and_one_contact(s, r, "it/vpn-auth-failed")
