"""Slack identity ([auth] slack_users_file): a listed Slack user reads with its groups, an unlisted one
is anonymous, and a reply posted in a channel reads only what the asker AND the channel may read.
Requests are signed with slack_sdk's own signature helper (tests/test_slack.py); every post is
searched for the restricted pages' canaries and ids, counted. Fast: scripted replies, hash index."""
from __future__ import annotations

import json

import pytest

from kbgate.access import Caller, authenticated
from kbgate.errors import ConfigError
from kbgate.slack_users import parse_slack_users
from test_access_frontends import MODES, canary_sentence, leaks, queries
from test_access_frontends import make_fronts, restricted  # noqa: F401 (fixtures)
from test_access_leaks import CANARIES
from test_slack import SECRET, signed, slash_body
from web import create_app

USERS = """# Slack users and channels for kbgate
user     T0001:U0HANA     hr
user     U0OMAR           eng,it          # no team: this id in any workspace
user     T0001:U0SAM      oncall
user     T0001:U0NOBODY
channel  C0HRTEAM         hr
channel  T0001:C0ONCALL   oncall,sre
"""
HANA = authenticated("slack:T0001:U0HANA", ["hr"])
GENERAL = Caller("slack-channel:C0GENERAL", frozenset(), public=True)


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "slack-users.txt"
    path.write_text(USERS)
    return path


class Slack:
    """Signed slash commands against one FrontEnds app; each answer waited for on its sink."""

    def __init__(self, fronts, monkeypatch):
        self.fronts = fronts
        monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)

    def ack(self, text: str, user: str, channel: str = "C0GENERAL", public: bool = False, team: str = "T0001"):
        body = slash_body(("public " if public else "") + text, self.fronts.sink.url, channel_id=channel,
                          user_id=user, team_id=team)
        r = self.fronts.client.post("/slack/commands", data=body, headers=signed(body))
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()

    def ask(self, text: str, user: str, channel: str = "C0GENERAL", public: bool = False, team: str = "T0001") -> dict:
        sink = self.fronts.sink
        n = len(sink.posts)
        ack = self.ack(text, user, channel, public, team)
        assert ack["text"].startswith("🔎"), ack
        post = sink.wait(n + 1, timeout=60)[n]
        assert post["response_type"] == ("in_channel" if public else "ephemeral"), post
        return post


# ---- the file ------------------------------------------------------------------------------------
def test_the_file_maps_users_and_channels():
    d = parse_slack_users(USERS, "f")
    assert d.user("T0001", "U0HANA") == HANA
    assert d.user("T0002", "U0HANA") is None  # listed for one workspace only
    assert d.user("T0009", "U0OMAR") == authenticated("slack:T0009:U0OMAR", ["eng", "it"])
    assert d.user("T0001", "U0NOBODY") == authenticated("slack:T0001:U0NOBODY")  # signed in, no groups
    assert d.user("T0001", "U0STRANGER") is None
    assert d.channel("T0001", "C0HRTEAM").groups == {"hr"} and d.channel("T0001", "C0ONCALL").groups == {"oncall", "sre"}
    assert d.channel("T0002", "C0ONCALL").groups == frozenset() and d.channel("T0001", "C0GENERAL") == GENERAL


@pytest.mark.parametrize("line,message", [
    ("usr U0X hr", "expected 'user [TEAM_ID:]USER_ID [GROUP,...]' or 'channel [TEAM_ID:]CHANNEL_ID [GROUP,...]'"),
    ("user", "expected 'user [TEAM_ID:]USER_ID"),
    ("user U0X hr oncall", "expected 'user"),
    ("user u0lower hr", "'u0lower' is not a Slack id"),
    ("user T0001:U0X:Z hr", "is not a Slack id"),
    ("user :U0X hr", "':U0X' is not [TEAM_ID:]ID"),
    ("channel C0X hr,/hr", "group '/hr' is not a group name"),
    ("user T0001:U0HANA oncall", "user T0001:U0HANA is already on line 2; keep one"),
])
def test_a_bad_line_is_a_start_up_error_naming_the_line(tmp_path, make_services, line, message):
    path = tmp_path / "slack-users.txt"
    path.write_text("# users\nuser T0001:U0HANA hr\n\n" + line + "\n")
    with pytest.raises(ConfigError) as e:
        parse_slack_users(path.read_text(), str(path))
    assert f"slack users file {path} line 4: " in e.value.message and message in e.value.message, e.value.message
    s = make_services("见 [1]。")
    with pytest.raises(ConfigError, match="line 4"):
        create_app(s.cfg.replace(auth={"slack_users_file": str(path)}), services=s)
    from web.slack_proxy import create_proxy_app  # the Slack-only process stops too
    with pytest.raises(ConfigError, match="line 4"):
        create_proxy_app(s.cfg.replace(auth={"slack_users_file": str(path)}), "http://127.0.0.1:9")


# ---- what each Slack asker reads where ---------------------------------------------------------------
CASES = [  # (who, user id, channel, public, the caller whose rights the post must stay within)
    ("hana ephemeral", "U0HANA", "C0GENERAL", False, HANA),
    ("hana in #general", "U0HANA", "C0GENERAL", True, HANA.limited_to(GENERAL)),
    ("hana in #hr", "U0HANA", "C0HRTEAM", True, HANA.limited_to(Caller("c", {"hr"}))),
    ("sam in #hr", "U0SAM", "C0HRTEAM", True, authenticated("s", ["oncall"]).limited_to(Caller("c", {"hr"}))),
    ("sam ephemeral", "U0SAM", "C0GENERAL", False, authenticated("s", ["oncall"])),
    ("stranger ephemeral", "U0STRANGER", "C0HRTEAM", False, Caller(None)),
    ("omar in #oncall", "U0OMAR", "C0ONCALL", True, authenticated("o", ["eng", "it"]).limited_to(Caller("c", {"oncall"}))),
]


@pytest.fixture(params=list(MODES))
def slack_fronts(request, make_fronts, users_file):
    return make_fronts(request.param, auth={"slack_users_file": str(users_file)})


def test_slack_posts_stay_within_the_asker_and_the_channel(slack_fronts, restricted, monkeypatch):
    slack = Slack(slack_fronts, monkeypatch)
    checked, found = 0, []
    for pid, page in restricted.items():
        for q in queries(page):
            for who, user, channel, public, rights in CASES:
                hidden = {p: restricted[p] for p in restricted if not rights.may_read(restricted[p].audience)}
                post = json.dumps(slack.ask(q, user, channel, public), ensure_ascii=False)
                checked += 1
                found += [f"{q!r} {x}" for x in leaks({who: post}, hidden)]
    assert checked == 5 * 4 * len(CASES) and found == [], found[:10]


def test_the_positive_controls_so_the_leak_count_could_fail(make_fronts, users_file, restricted, monkeypatch):
    """The same posts do show a restricted page (its link; in the quoted fix steps, its canary) where allowed."""
    auth = {"slack_users_file": str(users_file)}
    slack = Slack(make_fronts("answer", auth=auth), monkeypatch)
    sb_, bg = restricted["hr/confidential/salary-bands"], restricted["eng/break-glass"]
    q_hr, q_bg = (canary_sentence(p.text, CANARIES[p.id]) for p in (sb_, bg))
    post = lambda *a: json.dumps(slack.ask(*a), ensure_ascii=False)  # noqa: E731
    assert sb_.id in post(q_hr, "U0HANA", "C0GENERAL", False)  # ephemeral: the asker's own rights
    assert sb_.id in post(q_hr, "U0HANA", "C0HRTEAM", True)  # a channel of HR people
    assert sb_.id not in post(q_hr, "U0HANA", "C0GENERAL", True)  # everyone in #general would see it
    assert bg.id in post(q_bg, "U0SAM", "C0ONCALL", True) and bg.id in post(q_bg, "U0SAM", "C0GENERAL", False)
    assert bg.id not in post(q_bg, "U0SAM", "C0HRTEAM", True)
    assert bg.id not in post(q_bg, "U0SAM", "C0ONCALL", True, "T0002")  # another workspace's U0SAM
    assert sb_.id not in post(q_hr, "U0STRANGER", "C0HRTEAM", False)
    slack = Slack(make_fronts("troubleshooting", auth=auth), monkeypatch)  # the runbook's steps are quoted
    assert CANARIES[bg.id] in post(bg.title, "U0SAM", "C0GENERAL", False)
    assert CANARIES[bg.id] in post(bg.title, "U0SAM", "C0ONCALL", True)
    assert CANARIES[bg.id] not in post(bg.title, "U0SAM", "C0GENERAL", True)


def test_the_pipeline_gets_the_slack_caller(make_fronts, users_file, monkeypatch):
    fronts = make_fronts("answer", auth={"slack_users_file": str(users_file)})
    seen = []
    real = fronts.services.pipeline.ask
    monkeypatch.setattr(fronts.services.pipeline, "ask", lambda *a, **kw: seen.append(kw.get("caller")) or real(*a, **kw))
    slack = Slack(fronts, monkeypatch)
    slack.ask("VPN", "U0HANA")
    slack.ask("VPN", "U0HANA", public=True)
    slack.ask("VPN", "U0STRANGER")
    assert seen == [HANA, HANA.limited_to(GENERAL), Caller(None, frozenset(), public=True)]


def test_deny_refuses_unlisted_slack_users_at_once(make_fronts, users_file, monkeypatch):
    fronts = make_fronts("answer", auth={"slack_users_file": str(users_file), "anonymous": "deny"})
    slack = Slack(fronts, monkeypatch)
    ack = slack.ack("VPN", "U0STRANGER")
    assert ack["response_type"] == "ephemeral" and "T0001:U0STRANGER is not in this server's [auth] slack_users_file" in ack["text"]
    assert fronts.app.extensions["slack"].accepted == 0
    assert "/docs/it/" in json.dumps(slack.ask("VPN", "U0NOBODY", public=True))  # listed, no groups: public pages


def test_the_rate_limit_is_per_slack_identity(make_services, users_file, monkeypatch):
    from test_access_frontends import FrontEnds
    from test_slack import Sink

    reply, sections = MODES["answer"]
    fronts = FrontEnds(make_services(reply, server={"rate_per_minute": 1}, **sections), monkeypatch, Sink(),
                       {"slack_users_file": str(users_file)})
    try:
        slack = Slack(fronts, monkeypatch)
        slack.ask("VPN", "U0HANA")
        again = slack.ack("VPN", "U0HANA", public=True)  # one identity, whichever channel
        assert again["response_type"] == "ephemeral" and "requests a minute" in again["text"] and "try again in" in again["text"]
        slack.ask("VPN", "U0OMAR")  # another identity still passes
        slack.ask("VPN", "U0STRANGER")  # unlisted users are counted by their Slack id, one each
        slack.ask("VPN", "U0STRANGER2")
        assert "requests a minute" in slack.ack("VPN again", "U0STRANGER")["text"]  # a new text: no replay
    finally:
        fronts.close()
        fronts.sink.close()
