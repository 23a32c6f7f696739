"""👍/👎 on the search page in headless Chromium (as tests/test_browser.py): the click is stored."""
import sqlite3

import pytest

from test_browser import ask, browser, page, serve, wait_done  # noqa: F401  (fixtures and helpers)

pytestmark = pytest.mark.browser


def test_thumbs_up_then_a_comment_is_stored_for_the_shown_answer(page, serve, make_services, tmp_path):  # noqa: F811
    services = make_services("先在 Self Service 安装客户端 [1]。", gate={"negative_threshold": 1.01},
                             answer={"min_score": 0.0}, feedback={"path": str(tmp_path / "page.sqlite3")})
    page.goto(serve(services))
    ask(page, "在家怎么连公司内网")
    wait_done(page)
    assert page.is_visible("#feedback") and page.inner_text("#fb-ask") == "这个回答有帮助吗？"
    answer_id = page.get_attribute("#feedback", "data-answer-id")
    assert answer_id.startswith("ans_")
    page.click("#vote-up")
    page.wait_for_selector("#feedback[data-state=recorded]")
    assert page.get_attribute("#vote-up", "aria-pressed") == "true"
    assert page.get_attribute("#vote-down", "aria-pressed") == "false"
    page.fill("#fb-comment", "<b>clear</b> steps")
    page.click("#fb-send")
    page.wait_for_selector("#feedback[data-state=updated]")
    assert page.inner_text("#fb-status") == "已更新，谢谢！"
    with sqlite3.connect(tmp_path / "page.sqlite3") as c:
        got = c.execute("SELECT answer_id, voter, rating, comment FROM votes").fetchall()
    assert got == [(answer_id, "anon:127.0.0.1", "up", "<b>clear</b> steps")]
    page.fill("#q", "")
    ask(page, "打印机在哪里")  # a new answer: the bar starts over
    wait_done(page)
    assert page.get_attribute("#feedback", "data-answer-id") not in ("", answer_id)
    assert page.get_attribute("#vote-up", "aria-pressed") == "false" and page.input_value("#fb-comment") == ""
