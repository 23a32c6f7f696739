"""`kbgate eval`: reading labelled files (bad ones named by line), the gate, retrieval and answer
figures on tiny files, through the pipeline and through a running server (fake services, hash index)."""
import json

import pytest
from click.testing import CliRunner

from kbgate.cli import main
from kbgate.errors import BadInput
from kbgate.eval import check_pages, read_jsonl
from kbgate.eval.answers import evaluate_answers, http_runner, judge, local_runner, states
from kbgate.eval.gate import evaluate_gate, gate_report

WIFI = "Wi-Fi 又断了，烦死了"
STEPS = ("网络断线确实烦人。\n1. 先看 #it-status 频道是否有正在处理的网络故障公告 [{fix}]。\n"
         "2. 在电脑上“忘记” Acme-Guest 和 Acme-BYOD 网络，公司电脑只保留 Acme-Corp [{fix}]。")


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines),
                 encoding="utf-8")
    return p


@pytest.mark.parametrize("lines, message", [
    ([{"query": "vpn", "page": "it/vpn"}, "{not json"], "bad.jsonl:2: not valid JSON"),
    ([{"query": "vpn"}], "bad.jsonl:1: missing field 'page'"),
    (["", {"query": "  ", "page": "it/vpn"}], "bad.jsonl:2: field 'query' must be a non-empty str"),
    (["[1, 2]"], "bad.jsonl:1: each line must be a JSON object"),
    (["", "  "], "bad.jsonl: the file has no rows"),
])
def test_bad_files_are_named_by_line(tmp_path, lines, message):
    with pytest.raises(BadInput, match=message.replace("(", r"\(")):
        read_jsonl(write(tmp_path, "bad.jsonl", lines), {"query": str, "page": str})


def test_split_filter_and_unknown_pages(tmp_path):
    p = write(tmp_path, "q.jsonl", [{"query": "a", "page": "it/vpn", "split": "tune"},
                                    {"query": "b", "page": "it/vpm", "split": "heldout"}])
    assert [r["query"] for r in read_jsonl(p, {"query": str}, "tune")] == ["a"]
    with pytest.raises(BadInput, match="no row has"):
        read_jsonl(p, {"query": str}, "test")
    with pytest.raises(BadInput, match=r"q.jsonl:2: unknown page id 'it/vpm'.*did you mean it/vpn"):
        check_pages(read_jsonl(p, {"query": str}), {"it/vpn", "hr/leave"}, p, "page")


@pytest.mark.parametrize("command, lines, message", [
    ("answers", [{"query": "vpn", "kind": "plain", "pages": ["it/vpn"]}, {"kind": "plain"}],
     "bad.jsonl:2: missing field 'query'"),
    ("answers", [{"query": "vpn", "kind": "angry", "pages": []}], "bad.jsonl:1: kind must be one of"),
    ("answers", [{"query": "vpn", "kind": "plain", "pages": "it/vpn"}], "bad.jsonl:1: pages must be a list"),
    ("gate", [{"text": "hi", "label": "happy"}], "bad.jsonl:1: label must be one of"),
    ("gate", ["{\"text\": \"hi\""], "bad.jsonl:1: not valid JSON"),
    ("retrieval", [], "bad.jsonl: the file has no rows"),
])
def test_the_cli_refuses_bad_files_with_one_line_and_no_traceback(tmp_path, command, lines, message):
    r = CliRunner().invoke(main, ["eval", command, str(write(tmp_path, "bad.jsonl", lines))])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, r.output


def test_the_cli_checks_page_ids_against_the_wiki_before_asking_a_server(tmp_path):
    f = write(tmp_path, "bad.jsonl", [{"query": "vpn", "kind": "plain", "pages": ["it/vpn"]},
                                      {"query": "x", "kind": "plain", "pages": ["it/no-such-page"]}])
    r = CliRunner().invoke(main, ["eval", "answers", str(f), "--url", "http://127.0.0.1:9"])
    assert r.exit_code != 0 and "bad.jsonl:2: unknown page id 'it/no-such-page'" in r.output, r.output
    ok = write(tmp_path, "ok.jsonl", [{"query": "vpn", "kind": "plain", "pages": ["it/vpn"]}])
    r = CliRunner().invoke(main, ["eval", "answers", str(ok), "--url", "http://127.0.0.1:9"])
    assert r.exit_code != 0 and "cannot reach http://127.0.0.1:9/api/search" in r.output, r.output


def test_values_are_compared_with_their_units():
    assert states("等 30 分钟后自动解锁 [1]。", "30 minutes", [])
    assert states("Wait half an hour.", "30 minutes", ["half an hour"])
    assert not states("陪产假 5 天 [1]", "10 个工作日", ["10 working days"])
    assert states("Paternity leave is 10 working days [1].", "10 个工作日", [])


def test_gate_figures_add_up_and_follow_the_threshold(make_services, tmp_path):
    s = make_services("")
    rows = read_jsonl(write(tmp_path, "g.jsonl", [
        {"text": "VPN 又断了，烦死了", "label": "negative"}, {"text": "谢谢，解决了！", "label": "positive"},
        {"text": "How do I book a room?", "label": "neutral", "kind": "howto"}]), {"text": str, "label": str})
    res = evaluate_gate(s.gate, rows, 0.0)
    assert sum(sum(r.values()) for r in res["confusion"].values()) == 3
    assert res["routing"] == {"negative": 1, "negative_routed": 1, "other": 2, "other_routed": 2, "plain": 1,
                              "plain_routed": 1}  # P(negative) >= 0 for every text
    assert evaluate_gate(s.gate, rows, 1.01)["routing"]["negative_routed"] == 0
    assert res["accuracy"] == sum(res["confusion"][t][t] for t in res["confusion"]) / 3
    assert "plain questions misrouted 1/1" in gate_report(res)


ROWS = [{"id": "f1", "query": WIFI, "kind": "frustrated", "pages": ["it/wifi-dropping"], "_line": 1},
        {"id": "f2", "query": WIFI, "kind": "frustrated", "pages": ["it/vpn-auth-failed"], "_line": 2},
        {"id": "v1", "query": WIFI, "kind": "frustrated", "pages": ["it/wifi-dropping"], "value": "Acme-Corp",
         "_line": 3},
        {"id": "o1", "query": WIFI, "kind": "frustrated", "_line": 4}]


def test_answer_verdicts_through_the_pipeline_and_the_http_api_agree(make_services):
    from web import create_app
    from web.server import serve_in_thread, stop

    from test_troubleshoot import passage_numbers

    s = make_services(STEPS.format(**passage_numbers(make_services)), gate={"negative_threshold": 0.0},
                      answer={"verify_citations": True, "min_score": 0.0})
    local = evaluate_answers(local_runner(s), ROWS, progress=False)
    by_id = {v["id"]: v for v in local["queries"]}
    assert by_id["f1"]["ok"] and by_id["f1"]["fix_steps"] == 2 and by_id["f1"]["right_page"]
    assert not by_id["f2"]["ok"] and by_id["f2"]["fix_steps"] == 0  # the steps are not that page's
    assert by_id["v1"]["value_ok"] is True
    assert not by_id["o1"]["ok"] and by_id["o1"]["kind"] == "offtopic"  # answered, though it should be refused
    t = local["totals"]
    assert t["frustrated"] == {"n": 3, "ok": 2, "troubleshooting": 3} and t["offtopic"] == {"n": 1, "answered": 1}
    assert t["values"]["stated"] == 1
    server, url = serve_in_thread(create_app(s.cfg, services=s))
    try:
        remote = evaluate_answers(http_runner(url), ROWS, progress=False)
    finally:
        stop(server)
    strip = lambda res: [{k: v for k, v in x.items() if k != "ms"} for x in res["queries"]]  # noqa: E731
    assert strip(remote) == strip(local)


def test_a_refused_off_topic_question_passes_and_no_answer_fails_a_plain_one(make_services):
    s = make_services("whatever", gate={"negative_threshold": 1.01}, answer={"min_score": 1.01})
    ask = local_runner(s)
    off = judge({"query": "how do I bake bread", "kind": "plain", "_line": 1}, ask("how do I bake bread"))
    plain = judge({"query": "VPN", "kind": "plain", "pages": ["it/vpn"], "_line": 2}, ask("VPN"))
    assert off["ok"] and off["route"] == "no_answer" and not plain["ok"]


def test_retrieval_figures_per_mode_and_language(hash_retriever, tmp_path):
    from kbgate.eval.cli import retrieval_report
    from kbgate.eval.retrieval import compare

    rows = [{"query": "VPN 认证失败 AUTH-403", "page": "it/vpn-auth-failed", "lang": "zh"},
            {"query": "meeting room booking", "page": "office/meeting-rooms", "lang": "en"},
            {"query": "zzz qqq", "page": "hr/sick-leave", "lang": "en"}]
    res = compare(hash_retriever, rows, 5)
    assert {"bm25", "dense", "hybrid"} <= set(res) and set(res["hybrid"]) >= {"zh", "en", "all", "misses"}
    for by in res.values():  # recall and the misses tell the same story
        assert round(by["all"]["recall"] * 3) == 3 - len(by["misses"])
    assert any(m[0] == "zzz qqq" for m in res["hybrid"]["misses"])
    out = retrieval_report({"k": 5, "n": 3, "modes": res})
    assert "recall@5" in out and "hybrid misses" in out and "zzz qqq" in out
