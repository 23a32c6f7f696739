"""The kbgate CLI as a user runs it: a subprocess, real exit codes, no tracebacks."""
import json
import subprocess
import sys

import pytest


def kbgate(*args, stdin: str | None = None, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "kbgate.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_bad_config_is_one_clean_line(tmp_path):
    bad = tmp_path / "config.toml"
    bad.write_text("[gate]\nnegative_treshold = 0.5\n")
    r = kbgate("--config", str(bad), "search", "vpn")
    assert r.returncode != 0
    assert "unknown key [gate] negative_treshold" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_every_command():
    r = kbgate("--help")
    assert r.returncode == 0
    for cmd in ("index", "search", "sentiment", "ask", "serve", "models", "slack-proxy"):
        assert cmd in r.stdout


def test_help_loads_no_web_layer_and_no_model_library():
    script = ("import sys; from kbgate.cli import main; main.main(['--help'], standalone_mode=False); "
              "heavy = {'flask', 'slack_sdk', 'waitress', 'torch', 'transformers', 'llama_cpp'} & set(sys.modules); "
              "print(sorted(heavy))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_slack_proxy_help_reaches_its_own_options():
    r = kbgate("slack-proxy", "--help")
    assert r.returncode == 0 and "--upstream" in r.stdout


def test_sentiment_refuses_an_overlong_line_before_loading_models():
    r = kbgate("sentiment", stdin="x" * 2001 + "\n")
    assert r.returncode != 0 and "longer than 2,000 characters" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_sentiment_labels_lines_from_stdin_with_the_real_model():
    r = kbgate("sentiment", stdin="谢谢，问题解决了，太棒了！\n这破 VPN 又断了，烦死了！！\n")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["label"] for x in lines] == ["positive", "negative"]
    assert all(set(x) == {"text", "label", "confidence", "ms"} and 0 < x["confidence"] <= 1 for x in lines)


@pytest.mark.slow
def test_ask_json_is_one_object_with_route_sources_and_timings(kb_index):
    index_dir, _ = kb_index
    r = kbgate("ask", "--index", str(index_dir), "--json", "What is the capital of Mongolia?")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["route"] == "no_answer" and out["sentiment"]["label"] in ("positive", "neutral", "negative")
    assert set(out["timings_ms"]) >= {"gate", "retrieval", "total"}
