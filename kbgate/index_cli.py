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
@click.option("--watch", is_flag=True,
              help="keep running: re-index each time pages change (a line per build; Ctrl-C stops)")
def index_cmd(kb_dir, index_dir, config_path, quiet, watch):
    """Index a folder of markdown pages (only changed pages are re-embedded) and publish it.

    A running `kbgate serve` picks the new version up by itself ([index] reload_check_s).
    """
    from indexer.embedders import load_embedder
    from indexer.store import build_index

    try:
        cfg = _config(config_path)
        kb_dir = kb_dir or cfg.path(cfg.index.kb_dir)
        index_dir = index_dir or cfg.path(cfg.index.dir)
        if watch:
            return _watch(cfg, kb_dir, index_dir, load_embedder(cfg, lazy=True), quiet)
        summary = build_index(cfg, kb_dir, index_dir, load_embedder(cfg, lazy=True), progress=not quiet)
    except KBGateError as e:
        _fail(e)
    for w in summary.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(summary.describe())


def _watch(cfg, kb_dir: Path, index_dir: Path, embedder, quiet: bool) -> None:
    from kbgate.errors import BadInput
    from kbgate.index_watch import watch_wiki

    if not Path(kb_dir).is_dir():
        raise BadInput(f"wiki folder {kb_dir} does not exist or is not a folder: nothing to watch")
    try:
        builds = watch_wiki(cfg, Path(kb_dir), Path(index_dir), embedder, progress=not quiet)
    except KeyboardInterrupt:  # Ctrl-C: a build it cut short left no partial version behind
        click.echo("stopped watching (Ctrl-C)", err=True)
        return
    click.echo(f"stopped watching after {builds} build(s)", err=True)


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
@click.option("--as", "as_user", default=None, metavar="USER",
              help="search only the pages USER may read (with --groups); default: every page")
@click.option("--groups", default=None, metavar="G1,G2", help="the groups of --as USER (comma-separated)")
@click.option("--anonymous", is_flag=True, help="search as a caller with no identity ([auth] anonymous)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="config.toml to read")
def search_cmd(query, index_dir, k, as_json, tags, troubleshooting, as_user, groups, anonymous, config_path):
    """Search the index for QUERY; with QUERY '-', read one query per line from stdin, print JSON lines.

    --as USER --groups hr,oncall (or --anonymous) shows what that caller sees: pages it
    may not read take no slot, rank or text. Without them every page is searched.
    """
    from indexer.embedders import load_embedder
    from indexer.index import load_index
    from kbgate.retrieval import Retriever

    try:
        cfg = _config(config_path)
        caller = cli_caller(cfg, as_user, groups, anonymous)
        embedder = load_embedder(cfg, lazy=True)
        index = load_index(index_dir or cfg.path(cfg.index.dir), embedder)
        retriever = Retriever(index, embedder, cfg.retrieval)
        kw = {"prefer_troubleshooting": troubleshooting, "tags": list(tags) or None, "caller": caller}
        who = {"caller": caller.to_dict()} if caller is not None else {}
        if query == "-":
            queries = [line.rstrip("\r\n") for line in sys.stdin]
            for q, hits in zip(queries, retriever.search_many(queries, k, **kw)):
                click.echo(json.dumps({"query": q, **who, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
            return
        hits = retriever.search(query, k, **kw)
    except KBGateError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({"query": query, **who, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
    else:
        if caller is not None:
            click.echo(f"as {caller.describe()}")
        _print_hits(query, hits)


def cli_caller(cfg: Config, as_user: str | None, groups: str | None, anonymous: bool):
    """The Caller of --as/--groups/--anonymous, or None (no restriction) when none is given."""
    from kbgate.access import anonymous as anonymous_caller, authenticated
    from kbgate.errors import BadInput

    if anonymous and (as_user is not None or groups):
        raise BadInput("--anonymous cannot be combined with --as or --groups")
    if anonymous:
        return anonymous_caller(cfg.auth.anonymous)
    if groups is not None and as_user is None:
        raise BadInput("--groups needs --as USER (the user whose groups they are)")
    return authenticated(as_user, groups or ()) if as_user is not None else None
