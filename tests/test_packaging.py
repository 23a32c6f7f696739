"""`pip install .` outside the checkout: the package carries its prompts and default config (slow: builds a wheel)."""
import os
import subprocess
import sys
import sysconfig
import venv

import pytest

pytestmark = pytest.mark.slow


def test_an_installed_kbgate_runs_outside_the_checkout(tmp_path, repo_root):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(repo_root)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # the dependencies come from the test venv's site-packages; kbgate itself only from the new install
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([str(env_dir / "bin" / "kbgate"), "--help"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "slack-proxy" in r.stdout, r.stderr
    script = ("import kbgate; from kbgate.config import load_config; "
              "from kbgate.prompts import Prompts, prompt_folder; cfg = load_config(); "
              "p = Prompts(prompt_folder(cfg)); "
              "print(kbgate.__file__); print(cfg.root); print(p.text('sentiment.item.txt').replace(chr(10), '|'))")
    r = subprocess.run([str(py), "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    where, root, item = r.stdout.strip().splitlines()
    assert where.startswith(str(env_dir)) and root == str(elsewhere)  # relative paths resolve where it runs
    want = (repo_root / "prompts" / "sentiment.item.txt").read_text(encoding="utf-8").rstrip()
    assert item == want.replace("\n", "|") and sys.prefix != str(env_dir)
