"""The `kbgate index` and `kbgate search` commands (registered on the main group in kbgate/cli.py).

Library errors (`KBGateError`) become one line on stderr and exit status 1,
never a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kbgate.config import Config, load_config
from kbgate.errors import KBGateError

_DIR = click.Path(file_okay=False, path_type=Path)


def _config(config_path) -> Config:
    """Use the Config the main group put on the context, else load one."""
    ctx = click.get_current_context()
    found = ctx.find_object(Config)
    if found is not None and config_path is None:
        return found
    return load_config(config_path)


def _fail(e: KBGateError):
    raise click.ClickException(e.message) from None


@click.command("index")
@click.option("--kb", "kb_dir", type=_DIR, default=None, help="wiki folder of markdown pages [config: index.kb_dir]")
@click.option("--index", "index_dir", type=_DIR, default=None, help="index folder [config: index.dir]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="config.toml to read")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def index_cmd(kb_dir, index_dir, config_path, quiet):
    """Index a folder of markdown pages (only changed pages are re-embedded) and publish it."""
    from indexer.embedders import load_embedder
    from indexer.store import build_index

    try:
        cfg = _config(config_path)
        kb_dir = kb_dir or cfg.path(cfg.index.kb_dir)
        index_dir = index_dir or cfg.path(cfg.index.dir)
        summary = build_index(cfg, kb_dir, index_dir, load_embedder(cfg, lazy=True), progress=not quiet)
    except KBGateError as e:
        _fail(e)
    for w in summary.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(summary.describe())


def _print_hits(query: str, hits) -> None:
    click.echo(f"{len(hits)} result(s) for {query!r}")
    for i, h in enumerate(hits, 1):
        where = h.path + (f"#{h.anchor}" if h.anchor else "")
        click.echo(f"\n{i}. {h.heading or h.title}  ({where})")
        ranks = f"dense #{h.dense_rank or '-'}, bm25 #{h.bm25_rank or '-'}"
        click.echo(f"   score {h.score:.4f}  relevance {h.relevance:.2f}  ({ranks}, {h.type})")
        text = " ".join(h.text.split())
        click.echo(f"   {text[:200]}{'…' if len(text) > 200 else ''}")


@click.command("search")
@click.argument("query")
@click.option("--index", "index_dir", type=_DIR, default=None, help="index folder [config: index.dir]")
@click.option("--k", "-k", type=click.IntRange(1, 100), default=None, help="number of hits [config: retrieval.k]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object {query, hits}")
@click.option("--tag", "tags", multiple=True, help="only pages with this tag (repeatable)")
@click.option("--troubleshooting", is_flag=True, help="boost troubleshooting sections")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="config.toml to read")
def search_cmd(query, index_dir, k, as_json, tags, troubleshooting, config_path):
    """Search the index for QUERY; with QUERY '-', read one query per line from stdin, print JSON lines."""
    from indexer.embedders import load_embedder
    from indexer.index import load_index
    from kbgate.retrieval import Retriever

    try:
        cfg = _config(config_path)
        embedder = load_embedder(cfg, lazy=True)
        index = load_index(index_dir or cfg.path(cfg.index.dir), embedder)
        retriever = Retriever(index, embedder, cfg.retrieval)
        kw = {"prefer_troubleshooting": troubleshooting, "tags": list(tags) or None}
        if query == "-":
            queries = [line.rstrip("\r\n") for line in sys.stdin]
            for q, hits in zip(queries, retriever.search_many(queries, k, **kw)):
                click.echo(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
            return
        hits = retriever.search(query, k, **kw)
    except KBGateError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({"query": query, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
    else:
        _print_hits(query, hits)
