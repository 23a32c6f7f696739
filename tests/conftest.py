"""Shared fixtures. Index/embedder fixtures live in index_fixtures.py, model ones in lm_fixtures.py."""
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

from index_fixtures import *  # noqa: E402,F401,F403
from lm_fixtures import *  # noqa: E402,F401,F403


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
