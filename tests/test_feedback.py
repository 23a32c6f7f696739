"""Answer feedback through the API and the store: answer ids, votes, re-votes, errors, WAL, export."""
import csv
import io
import json
import re
import sqlite3
import threading

import pytest
from click.testing import CliRunner

from kbgate.cli import main
from kbgate.feedback import FeedbackStore, new_answer_id, store_path
from web import create_app

ANSWER = "在家连 VPN 先安装客户端 [1]，然后用 SSO 登录 [2]。"
ANSWER_ROUTE = {"gate": {"negative_threshold": 1.01}, "answer": {"min_score": 0.0}}
ANSWER_ID = re.compile(r"^ans_[0-9a-f]{16}$")
PROXY = {"auth": {"trusted_proxies": ["127.0.0.1"]}}


@pytest.fixture
def services(make_services, tmp_path):
    return make_services(ANSWER, **ANSWER_ROUTE, **PROXY, feedback={"path": str(tmp_path / "fb.sqlite3")})


@pytest.fixture
def client(services):
    return create_app(services.cfg, services=services).test_client()


def post(client, path, body, user=None, groups=None, headers_extra=None, **kw):
    headers = {"X-Forwarded-User": user} if user else {}
    headers.update(headers_extra or {})
    if groups:
        headers["X-Forwarded-Groups"] = groups
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers, **kw)


def store_of(services) -> FeedbackStore:
    return services.pipeline.feedback.store(services.pipeline.index_dir())


def rows(services, sql: str):
    with sqlite3.connect(store_of(services).path) as c:
        return c.execute(sql).fetchall()


def test_every_answer_has_an_id_in_json_and_sse_and_is_recorded(client, services):
    body = post(client, "/api/search", {"query": "在家怎么连公司内网"}, user="alice").get_json()
    assert ANSWER_ID.match(body["answer_id"])
    stored = store_of(services).answer(body["answer_id"])
    assert stored["query"] == "在家怎么连公司内网" and stored["route"] == "answer"
    assert stored["label"] == body["sentiment"]["label"] and stored["asker"] == "user:alice"
    assert stored["pages"] == list(dict.fromkeys(s["page"] for s in body["sources"] if s["cited"]))
    assert stored["pages"] and set(stored["pages"]) <= set(stored["shown"])
    r = client.post("/api/search/stream", data=json.dumps({"query": "在家怎么连公司内网"}),
                    content_type="application/json")
    done = json.loads(r.get_data(as_text=True).split("event: done\ndata: ", 1)[1].split("\n", 1)[0])
    assert ANSWER_ID.match(done["answer_id"]) and done["answer_id"] != body["answer_id"]
    assert store_of(services).answer(done["answer_id"])["asker"] == "anonymous"


def test_no_answer_results_have_ids_too(make_services, tmp_path):
    s = make_services(ANSWER, answer={"min_score": 1.01}, feedback={"path": str(tmp_path / "f.sqlite3")})
    body = post(create_app(s.cfg, services=s).test_client(), "/api/search", {"query": "how do I bake bread"}).get_json()
    assert body["route"] == "no_answer" and ANSWER_ID.match(body["answer_id"])
    stored = store_of(s).answer(body["answer_id"])
    assert stored["pages"] == [] and stored["shown"] == [x["page"] for x in body["suggestions"]]


def test_vote_then_revote_updates_the_one_row(client, services):
    aid = post(client, "/api/search", {"query": "在家怎么连公司内网"}, user="alice").get_json()["answer_id"]
    r = post(client, "/api/feedback", {"answer_id": aid, "rating": "up", "comment": "clear steps"}, user="alice")
    assert r.status_code == 200 and r.get_json() == {"status": "recorded", "answer_id": aid, "rating": "up"}
    r = post(client, "/api/feedback", {"answer_id": aid, "rating": "down"}, user="alice")
    assert r.get_json() == {"status": "updated", "answer_id": aid, "rating": "down"}
    assert rows(services, "SELECT voter, rating, comment FROM votes") == [("user:alice", "down", "clear steps")]
    post(client, "/api/feedback", {"answer_id": aid, "rating": "down", "comment": ""}, user="alice")
    assert rows(services, "SELECT comment FROM votes") == [("",)]  # "" clears it, leaving it out keeps it
    assert post(client, "/api/feedback", {"answer_id": aid, "rating": "up"}, user="bob").get_json()["status"] == \
        "recorded"
    assert sorted(rows(services, "SELECT voter, rating FROM votes")) == [("user:alice", "down"), ("user:bob", "up")]


def test_anonymous_voters_count_once_per_address(client, services):
    aid = post(client, "/api/search", {"query": "在家怎么连公司内网"}).get_json()["answer_id"]
    for addr in ("10.0.0.1", "10.0.0.2", "10.0.0.2"):
        assert post(client, "/api/feedback", {"answer_id": aid, "rating": "up"},
                    environ_base={"REMOTE_ADDR": addr}).status_code == 200
    assert sorted(rows(services, "SELECT voter FROM votes")) == [("anon:10.0.0.1",), ("anon:10.0.0.2",)]


@pytest.mark.parametrize("answer_id", ["ans_0000000000000000", "nope", "ans_" + "f" * 500, "../../etc/passwd"])
def test_unknown_answer_ids_are_404(client, services, answer_id):
    r = post(client, "/api/feedback", {"answer_id": answer_id, "rating": "up"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert "no answer" in r.get_json()["error"]["message"]


@pytest.mark.parametrize("body,message", [
    ({"rating": "up"}, "answer_id is required"),
    ({"answer_id": 7, "rating": "up"}, "answer_id is required"),
    ({"answer_id": "  ", "rating": "up"}, "answer_id is required"),
    ({"answer_id": "A"}, 'rating must be "up" or "down"'),
    ({"answer_id": "A", "rating": "meh"}, 'rating must be "up" or "down", got "meh"'),
    ({"answer_id": "A", "rating": 1}, 'rating must be "up" or "down", got 1'),
    ({"answer_id": "A", "rating": "UP"}, 'rating must be "up" or "down"'),
    ({"answer_id": "A", "rating": "up", "comment": 5}, "comment must be a string, got int"),
    ({"answer_id": "A", "rating": "up", "comment": "x" * 2001}, "comment is longer than 2,000 characters (2,001)"),
    ({"answer_id": "A", "rating": "up", "stars": 5}, "unknown field 'stars'"),
    ([1], "body must be a JSON object"),
    ("{", "body is not valid JSON"),
])
def test_bad_votes_are_400_and_lose_nothing(client, services, body, message):
    aid = post(client, "/api/search", {"query": "在家怎么连公司内网"}, user="alice").get_json()["answer_id"]
    post(client, "/api/feedback", {"answer_id": aid, "rating": "up", "comment": "kept"}, user="alice")
    if isinstance(body, dict) and body.get("answer_id") == "A":
        body = {**body, "answer_id": aid}
    data = body if isinstance(body, str) else json.dumps(body)
    r = client.post("/api/feedback", data=data, content_type="application/json", headers={"X-Forwarded-User": "alice"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request"
    assert message in r.get_json()["error"]["message"]
    assert rows(services, "SELECT voter, rating, comment FROM votes") == [("user:alice", "up", "kept")]


def test_a_cross_site_browser_post_is_refused(client, services):
    aid = post(client, "/api/search", {"query": "在家怎么连公司内网"}, user="alice").get_json()["answer_id"]
    r = post(client, "/api/feedback", {"answer_id": aid, "rating": "down"}, user="alice",
             headers_extra={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "cross_site"
    assert rows(services, "SELECT count(*) FROM votes") == [(0,)]
    r = post(client, "/api/feedback", {"answer_id": aid, "rating": "down"}, user="alice",
             headers_extra={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200


def test_a_2000_character_comment_is_taken(client, services):
    aid = post(client, "/api/search", {"query": "在家怎么连公司内网"}).get_json()["answer_id"]
    assert post(client, "/api/feedback", {"answer_id": aid, "rating": "down", "comment": "é" * 2000}).status_code == 200
    assert rows(services, "SELECT length(comment) FROM votes") == [(2000,)]


def test_an_answer_that_showed_a_restricted_page_is_404_for_an_outsider(client, services):
    index = services.retriever.index
    secret = next(p for p in index.pages.values() if p.audience)
    aid = new_answer_id()
    store_of(services).record(aid, "q", "answer", "neutral", [secret.id], [secret.id], "user:insider")
    for user in (None, "outsider"):
        r = post(client, "/api/feedback", {"answer_id": aid, "rating": "down"}, user=user)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"  # as for an unknown id
        assert r.get_json()["error"]["message"].startswith(f"no answer '{aid}'") and secret.id not in r.get_data(as_text=True)
    r = post(client, "/api/feedback", {"answer_id": aid, "rating": "down"}, user="insider", groups=secret.audience[0])
    assert r.status_code == 200
    assert rows(services, "SELECT voter FROM votes") == [("user:insider",)]


def test_deny_means_anonymous_callers_cannot_vote(make_services, tmp_path):
    s = make_services(ANSWER, **ANSWER_ROUTE, auth={"anonymous": "deny", "trusted_proxies": ["127.0.0.1"]},
                      feedback={"path": str(tmp_path / "f.sqlite3")})
    c = create_app(s.cfg, services=s).test_client()
    aid = post(c, "/api/search", {"query": "在家怎么连公司内网"}, user="alice").get_json()["answer_id"]
    r = post(c, "/api/feedback", {"answer_id": aid, "rating": "up"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthenticated"


def test_feedback_turned_off_still_gives_ids_and_says_so(make_services, tmp_path):
    s = make_services(ANSWER, **ANSWER_ROUTE, feedback={"enabled": False, "path": str(tmp_path / "off.sqlite3")})
    c = create_app(s.cfg, services=s).test_client()
    aid = post(c, "/api/search", {"query": "在家怎么连公司内网"}).get_json()["answer_id"]
    assert ANSWER_ID.match(aid) and not (tmp_path / "off.sqlite3").exists()
    r = post(c, "/api/feedback", {"answer_id": aid, "rating": "up"})
    assert r.status_code == 404 and "[feedback] enabled = false" in r.get_json()["error"]["message"]


def test_the_store_is_in_wal_mode_beside_the_index(make_services):
    s = make_services(ANSWER, **ANSWER_ROUTE)
    post(create_app(s.cfg, services=s).test_client(), "/api/search", {"query": "在家怎么连公司内网"})
    store = store_of(s)
    assert store.path == s.retriever.index.dir / "feedback.sqlite3" == store_path(s.cfg, s.retriever.index.dir)
    assert store.journal_mode() == "wal" and store.path.with_name("feedback.sqlite3-wal").exists()


def test_votes_and_answers_from_many_threads_all_land(tmp_path):
    store = FeedbackStore(tmp_path / "f.sqlite3")
    ids = [new_answer_id() for _ in range(20)]
    for aid in ids:
        store.record(aid, "q", "answer", "neutral", ["it/vpn"], ["it/vpn"], "anonymous")
    errors = []

    def work(t):
        try:
            for i, aid in enumerate(ids):
                store.record(new_answer_id(), f"q{t}", "answer", "neutral", [], [], "anonymous")
                store.vote(aid, f"user:{t}", "up" if i % 2 else "down")
                store.vote(aid, f"user:{t}", "up")  # the re-vote: still one row
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.counts() == {"answers": 20 + 8 * 20, "votes": 8 * 20, "up": 8 * 20, "down": 0}


def test_prune_drops_the_oldest_unvoted_answers_only(tmp_path):
    store = FeedbackStore(tmp_path / "f.sqlite3", keep_answers=5)
    ids = [new_answer_id() for _ in range(12)]
    for aid in ids:
        store.record(aid, "q", "answer", "neutral", [], [], "anonymous")
    store.vote(ids[0], "user:a", "down")
    assert store.prune() == 6  # 12 answers, 5 kept by age, the voted oldest one kept too
    kept = {r[0] for r in sqlite3.connect(store.path).execute("SELECT id FROM answers")}
    assert kept == {ids[0], *ids[-5:]}
    assert store.prune() == 0  # at the cap: nothing more goes
    assert FeedbackStore(store.path, keep_answers=0).prune() == 0  # 0 = keep all
    assert len(sqlite3.connect(store.path).execute("SELECT id FROM answers").fetchall()) == 6


def test_a_file_that_is_not_sqlite_is_a_clear_error_and_left_alone(tmp_path):
    from kbgate.feedback import FeedbackUnavailable
    bad = tmp_path / "f.sqlite3"
    bad.write_bytes(b"not a database, keep me" * 100)
    with pytest.raises(FeedbackUnavailable, match="cannot be opened"):
        FeedbackStore(bad)
    assert bad.read_bytes() == b"not a database, keep me" * 100


def _seed(path):
    store = FeedbackStore(path)
    a, b = new_answer_id(), new_answer_id()
    store.record(a, "VPN 连不上", "troubleshooting", "negative", ["it/vpn", "it/sso"], ["it/vpn", "it/sso"], "user:al")
    store.record(b, "how do I add a printer", "answer", "neutral", ["office/printers"], ["office/printers"],
                 "anonymous")
    store.vote(a, "user:al", "down", "=HYPERLINK(\"x\")")
    store.vote(b, "slack:T1:U1", "up", "好，谢谢")
    store.close()
    return a, b


def test_export_writes_csv_and_json_lines(tmp_path):
    a, b = _seed(tmp_path / "index" / "feedback.sqlite3")
    runner = CliRunner()
    r = runner.invoke(main, ["feedback", "export", "--index", str(tmp_path / "index")])
    assert r.exit_code == 0, r.output
    got = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["answer_id"], x["rating"], x["voter"]) for x in got] == [(a, "down", "user:al"), (b, "up", "slack:T1:U1")]
    assert got[0]["pages"] == "it/vpn; it/sso" and got[0]["query"] == "VPN 连不上" and got[0]["route"] == "troubleshooting"
    assert got[0]["comment"] == "'=HYPERLINK(\"x\")"  # no formula for a spreadsheet to run
    assert got[0]["label"] == "negative" and got[0]["asker"] == "user:al" and got[1]["comment"] == "好，谢谢"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", got[0]["voted_at"])
    out = tmp_path / "votes.jsonl"
    r = runner.invoke(main, ["feedback", "export", "--format", "jsonl", "--out", str(out),
                             "--index", str(tmp_path / "index")])
    assert r.exit_code == 0 and "2 vote(s)" in r.stderr
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["answer_id"] for x in lines] == [a, b]
    assert lines[0]["pages"] == ["it/vpn", "it/sso"] and lines[0]["comment"] == "=HYPERLINK(\"x\")"
    assert set(lines[1]) == {"answer_id", "voted_at", "rating", "comment", "voter", "query", "route", "label",
                             "pages", "asked_at", "asker"}


def test_export_to_a_folder_that_does_not_exist_is_one_clear_line(tmp_path):
    _seed(tmp_path / "index" / "feedback.sqlite3")
    r = CliRunner().invoke(main, ["feedback", "export", "--out", str(tmp_path / "no" / "such" / "v.csv"),
                                  "--index", str(tmp_path / "index")])
    assert r.exit_code == 1 and "cannot write" in r.output and "Traceback" not in r.output


def test_a_hot_reloaded_pipeline_keeps_the_same_votes(client, services, hash_retriever):
    aid = post(client, "/api/search", {"query": "在家怎么连公司内网"}, user="alice").get_json()["answer_id"]
    old = services.pipeline
    services.swap(hash_retriever)  # what kbgate.reload does with a newly published index version
    assert services.pipeline is not old and services.pipeline.feedback is old.feedback
    r = post(client, "/api/feedback", {"answer_id": aid, "rating": "up"}, user="alice")
    assert r.status_code == 200 and rows(services, "SELECT answer_id FROM votes") == [(aid,)]


def test_export_without_a_feedback_file_says_where_it_looked(tmp_path):
    r = CliRunner().invoke(main, ["feedback", "export", "--index", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no feedback file at" in r.output and "none" in r.output
    assert not (tmp_path / "none").exists()


def test_openai_search_carries_the_answer_id(client, services):
    r = post(client, "/v1/chat/completions", {"model": services.cfg.openai.model_id, "task": "search",
                                              "messages": [{"role": "user", "content": "在家怎么连公司内网"}]})
    assert r.status_code == 200, r.get_json()
    aid = r.get_json()["kbgate"]["answer_id"]
    assert ANSWER_ID.match(aid) and store_of(services).answer(aid)["query"] == "在家怎么连公司内网"


def _feedback_count(client, rating: str, source: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    text = client.get("/metrics").get_data(as_text=True)
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "kbgate_feedback"
               for s in f.samples if s.name == "kbgate_feedback_total"
               and s.labels == {"rating": rating, "source": source})


def test_stored_votes_are_counted_in_metrics_by_source(client, services):
    aid = post(client, "/api/search", {"query": "在家怎么连公司内网"}, user="alice").get_json()["answer_id"]
    page0, api0 = _feedback_count(client, "up", "page"), _feedback_count(client, "down", "api")
    post(client, "/api/feedback", {"answer_id": aid, "rating": "up"}, user="alice",
         headers_extra={"X-KBGate-Source": "page"})
    post(client, "/api/feedback", {"answer_id": aid, "rating": "down"}, user="bob")
    post(client, "/api/feedback", {"answer_id": "ans_ffffffffffffffff", "rating": "down"}, user="bob")  # 404: not counted
    assert _feedback_count(client, "up", "page") == page0 + 1 and _feedback_count(client, "down", "api") == api0 + 1
