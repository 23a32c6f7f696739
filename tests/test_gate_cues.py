"""The gate's lexical cues: the features, the combination, the weights file and the [gate] cues switch."""
import math
import shutil

import pytest

from fake_engine import FakeEngine
from kbgate.config import load_config
from kbgate.gate import SentimentGate
from kbgate.gate_cues import CAP, FEATURES, CueModel, features, parse_cues
from kbgate.prompts import Prompts

CALM = {"positive": 0.2, "neutral": 0.6, "negative": 0.2}
# one word per label, so a label's probability is its word's (the fake engine scripts the words)
WORDS = {"感谢": 0.15, "称赞": 0.05, "提问": 0.35, "陈述": 0.25, "抱怨": 0.12, "讽刺": 0.08}


def cues(text, probs=CALM):
    return {k: v for k, v in features(text, probs).items() if k not in ("model_neg", "model_pos")}


def test_each_cue_counts_what_it_names():
    assert cues("Got a new badge and every printer says my card isn't registered. Of course it does.")["sarcasm"] == 1
    assert cues("太好了，VPN又断了")["sarcasm"] == 1 and cues("这份手册写得太好了")["sarcasm"] == 0
    assert cues("报销单又被打回来了，这都第二次了")["repeat"] == 2  # 又 and 第二次
    assert cues("Still can't log in, third time this week")["repeat"] == 2
    assert cues("VPN 连不上，折腾一上午了")["persist"] == 1 and cues("waiting since lunch")["persist"] == 1
    assert cues("VPN 连不上！！到底怎么回事？？")["shout"] == 2 and cues("谢谢！")["shout"] == 0
    # shouted words count, acronyms and codes do not
    assert cues("locked out AGAIN, NOTHING works")["caps"] == 2
    assert cues("VPN and SSO on JIRA fail with AUTH-403 and DNS_PROBE_FINISHED_NXDOMAIN")["caps"] == 0
    assert cues("气死我了，烦死了")["vent"] >= 2 and cues("this is garbage")["vent"] == 1
    # thanks and urgency are in indexer.topic's lexicon but mark a calm query here
    assert cues("谢谢，紧急，马上 help thanks ASAP")["vent"] == 0
    assert cues("How do I reset my VPN password?") == dict.fromkeys(cues("x"), 0)


def test_counts_are_capped_and_log_odds_are_clipped():
    assert cues("!! ?? !! ?? !!")["shout"] == CAP
    x = features("x", {"positive": 0.0, "neutral": 0.25, "negative": 0.75})
    assert abs(x["model_neg"] - math.log(3)) < 1e-12 and x["model_pos"] == pytest.approx(math.log(1e-4 / (1 - 1e-4)))


def test_the_combination_keeps_the_models_ratio_for_positive_and_neutral():
    weights = dict.fromkeys(FEATURES, 0.0) | {"model_neg": 1.0, "repeat": 2.0}
    model = CueModel(-0.5, weights)
    probs = {"positive": 0.3, "neutral": 0.5, "negative": 0.2}
    got = model.combine("CI 又挂了", probs)
    z = -0.5 + math.log(0.2 / 0.8) + 2.0 * 1
    assert got["negative"] == pytest.approx(1 / (1 + math.exp(-z)))
    assert got["positive"] / got["neutral"] == pytest.approx(0.3 / 0.5) and sum(got.values()) == pytest.approx(1)
    assert model.p_negative(dict.fromkeys(FEATURES, 0.0) | {"model_neg": -1e6}) == 0.0  # no overflow either way
    assert model.p_negative(dict.fromkeys(FEATURES, 0.0) | {"model_neg": 1e6}) == 1.0


def _file(**over):
    rows = {"bias": "-1.5", **{f: "0.5" for f in FEATURES}, **over}
    return "# a comment\n\n" + "".join(f"{k}\t{v}\n" for k, v in rows.items() if v is not None)


def test_the_weights_file_is_read_and_bad_lines_are_named():
    m = parse_cues(_file(vent="1.25"), "x.cues.tsv")
    assert m.bias == -1.5 and m.weights["vent"] == 1.25 and list(m.weights) == list(FEATURES)
    bad = [(_file() + "loudness\t1\n", "line 12: unknown feature 'loudness'"),
           (_file(shout="lots"), "line 9: the weight of 'shout' is not a number"),
           (_file(caps="inf"), "line 10: the weight of 'caps' must be finite"),
           (_file() + "vent 1\n", "line 12: want 'feature<TAB>weight'"),
           (_file() + "vent\t2\n", "line 12: 'vent' is given twice"),
           (_file(sarcasm=None), "no weight for sarcasm")]
    for text, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            parse_cues(text, "x.cues.tsv")


@pytest.fixture
def folder(repo_root, tmp_path):
    shutil.copytree(repo_root / "prompts", tmp_path / "p")
    return tmp_path / "p"


def gate_with(folder, **gate):
    return SentimentGate(FakeEngine(labels=WORDS), Prompts(folder), load_config().replace(gate=gate).gate)


def test_the_gate_applies_the_file_and_keeps_the_models_own_probabilities(folder):
    (folder / "sentiment.cues.tsv").write_text(_file(**({f: "0" for f in FEATURES} | {"bias": "0", "sarcasm": "3", "model_neg": "1"})))
    gate = gate_with(folder, cues=True)
    calm, sour = gate.classify(["How do I reset my password?", "Great, locked out. Of course."])
    raw = calm.model_probs
    assert sour.model_probs == pytest.approx(raw)  # the fake model scores both texts alike
    p = raw["negative"]
    want = {"How do I reset my password?": 1 / (1 + (1 - p) / p),  # sigmoid(log-odds) is p itself
            "Great, locked out. Of course.": 1 / (1 + math.exp(-(math.log(p / (1 - p)) + 3 * 2)))}
    assert calm.probs["negative"] == pytest.approx(want["How do I reset my password?"])
    assert sour.probs["negative"] == pytest.approx(want["Great, locked out. Of course."])
    assert calm.label == "neutral" and not gate.is_troubleshooting(calm)
    assert sour.label == "negative" and sour.kind in ("complaint", "sarcasm") and gate.is_troubleshooting(sour)
    assert sour.confidence == sour.probs["negative"] and "model_probs" not in sour.as_dict()


def test_the_switch_turns_the_cues_off_and_a_bad_file_stops_the_start(folder, tmp_path):
    (folder / "sentiment.cues.tsv").write_text(_file(bias="zero"))
    with pytest.raises(ValueError, match="sentiment.cues.tsv line 3: the weight of 'bias' is not a number"):
        gate_with(folder, cues=True)
    off = gate_with(folder, cues=False)  # off, the file is not read at all
    [s] = off.classify(["Great, locked out. Of course."])
    assert off.cues is None and s.probs == s.model_probs
    (tmp_path / "config.toml").write_text("[gate]\ncues = false\n")
    assert load_config(tmp_path / "config.toml").gate.cues is False
    (tmp_path / "config.toml").write_text("[gate]\ncues = 'yes'\n")
    with pytest.raises(Exception, match="cues"):
        load_config(tmp_path / "config.toml")


def test_the_shipped_weights_parse_and_lean_negative_on_cues(repo_root):
    model = parse_cues((repo_root / "prompts" / "sentiment.cues.tsv").read_text(encoding="utf-8"), "sentiment.cues.tsv")
    sour = "Oh great, locked out AGAIN!! Of course it does. 又挂了，这都第三次了，折腾一上午了，烦死了"
    plain = "How do I reset my password? 怎么重置密码？"
    assert model.combine(sour, CALM)["negative"] > 0.5 > model.combine(plain, CALM)["negative"]
    # the model's own log-odds still count in the same direction
    assert model.weights["model_neg"] > 0
