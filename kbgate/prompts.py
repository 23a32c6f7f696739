"""Prompts are text files under `prompts/`, loaded by name; no prompt text lives in Python.

The repository's `prompts/` folder ships inside the package too (`kbgate/_data/prompts`, a
link in the checkout, real files in a wheel), so `pip install .` runs outside the checkout.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from kbgate.errors import ConfigError

PACKAGED = Path(__file__).resolve().parent / "_data" / "prompts"


class Prompts:
    """Read-only access to the prompt folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"prompt folder {self.folder} does not exist; set [prompts] dir in config.toml")

    @lru_cache(maxsize=64)
    def text(self, name: str) -> str:
        """The prompt file `name` (e.g. 'answer.system.txt'), stripped of trailing whitespace."""
        path = self.folder / name
        try:
            return path.read_text(encoding="utf-8").rstrip()
        except FileNotFoundError:
            raise ConfigError(f"prompt file {path} is missing") from None

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def table(self, name: str) -> list[tuple[str, str]]:
        """A two-column TSV prompt file as (key, value) rows, blank lines skipped."""
        rows = []
        for line in self.text(name).splitlines():
            if line.strip():
                key, _, value = line.partition("\t")
                rows.append((key.strip(), value.strip()))
        return rows


def fill(template: str, **values: str) -> str:
    """Substitute {name} placeholders; braces inside the values are left alone."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def prompt_folder(cfg) -> Path:
    """The configured prompt folder; the packaged prompts when the default folder is not there."""
    folder = cfg.path(cfg.prompts.dir)
    if not folder.is_dir() and cfg.prompts.dir == "prompts" and PACKAGED.is_dir():
        return PACKAGED
    return folder
