"""The `kbgate` command line. Library errors become one clean line and a non-zero exit."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from kbgate.index_cli import cli_caller, index_cmd, search_cmd
from kbgate.config import Config, load_config
from kbgate.errors import KBGateError
from kbgate.eval.cli import eval_cmd

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub ids in config still work where set to 0
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cfg() -> Config:
    return click.get_current_context().find_object(Config)


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="KBGATE_CONFIG", help="config.toml to read (default: the repository's)")
@click.pass_context
def main(ctx, config_path):
    """kbgate: wiki search with a sentiment gate and grounded answers from one local Qwen."""
    try:
        ctx.obj = load_config(config_path)
    except KBGateError as e:
        raise click.ClickException(e.message) from None


main.add_command(index_cmd)
main.add_command(search_cmd)


@main.command("slack-proxy", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                               "help_option_names": []})
@click.pass_context
def slack_proxy(ctx):
    """Run the Slack front end alone, forwarding questions to a search service (`--help` for its options)."""
    from web.slack_proxy import slack_proxy_cmd  # the web layer loads only for the commands that serve

    slack_proxy_cmd.main(args=ctx.args, prog_name=ctx.command_path, obj=ctx.obj, standalone_mode=False)


main.add_command(eval_cmd)


@main.group()
def feedback():
    """Answer feedback: the 👍/👎 votes on answers (the page, Slack, POST /api/feedback)."""


@feedback.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="file to write (default: stdout)")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="index folder holding feedback.sqlite3 [config: feedback.path, else index.dir]")
def feedback_export(fmt, out, index_dir):
    """Write every vote with its answer (query, route, label, cited pages, asker, voter, comment)."""
    from kbgate.feedback import FeedbackStore, store_path
    from kbgate.feedback_export import write

    cfg = _cfg()
    path = store_path(cfg, index_dir)
    if not path.exists():
        raise click.ClickException(f"no feedback file at {path} yet: it is made by the first answer `kbgate serve` "
                                   "gives (or pass --index / set [feedback] path)")
    try:
        votes = FeedbackStore(path).votes()
    except KBGateError as e:
        raise click.ClickException(e.message) from None
    try:
        stream = open(out, "w", encoding="utf-8", newline="") if out else sys.stdout
        try:
            n = write(votes, fmt, stream)
        finally:
            if out:
                stream.close()
    except OSError as e:
        raise click.ClickException(f"cannot write {out or 'stdout'}: {e.strerror or e}") from None
    click.echo(f"{n} vote(s) from {path}" + (f" written to {out}" if out else ""), err=True)


@main.group()
def models():
    """Provision the models (run once; later runs reuse them)."""


@models.command("fetch")
def models_fetch():
    """Provision the generative model for the configured engine (GGUF verified; dequantized only for
    transformers); locate the embedder."""
    from kbgate.provision import fetch_embedder, fetch_generator, fetch_gguf

    cfg = _cfg()
    try:
        gen = {"llamacpp": fetch_gguf, "transformers": fetch_generator}.get(
            cfg.model.engine, lambda c: f"remote ({c.remote.base_url})")(cfg)
        emb = fetch_embedder(cfg)
    except KBGateError as e:
        raise click.ClickException(e.message) from None
    click.echo(f"generator: {gen}\nembedder:  {emb}")


def _read_lines(path) -> list[str]:
    stream = open(path, encoding="utf-8") if path and path != "-" else sys.stdin
    return [line.rstrip("\r\n") for line in stream if line.strip()]


@main.command()
@click.argument("file", required=False)
def sentiment(file):
    """Label texts (one per line, from FILE or stdin); print one JSON object per line."""
    from kbgate.service import load_services
    from kbgate.text import check_query

    cfg = _cfg()
    try:
        texts = [check_query(t, cfg.gate.max_query_chars, "text") for t in _read_lines(file)]
        services = load_services(cfg, with_retriever=False)
        for text, s in zip(texts, services.gate.classify(texts)):
            d = s.as_dict()
            click.echo(json.dumps({"text": text, "label": d["label"], "confidence": d["confidence"],
                                   "ms": d["ms"]}, ensure_ascii=False))
    except KBGateError as e:
        raise click.ClickException(e.message) from None


@main.command()
@click.argument("query")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
@click.option("--as", "as_user", default=None, metavar="USER",
              help="answer from the pages USER may read (with --groups); default: every page")
@click.option("--groups", default=None, metavar="G1,G2", help="the groups of --as USER (comma-separated)")
@click.option("--anonymous", is_flag=True, help="answer as a caller with no identity ([auth] anonymous)")
def ask(query, index_dir, as_json, as_user, groups, anonymous):
    """Answer QUERY: gate, route, retrieval, grounded answer.

    The model's reply streams to stderr as it is decoded (provisional); stdout gets the
    final answer, the same text as /api/search's `answer`, then its sources.
    --as USER --groups hr,oncall (or --anonymous) answers as that caller would be
    answered: pages it may not read are no source, suggestion or quoted step.
    """
    from kbgate.service import load_services

    cfg = _cfg()
    try:
        caller = cli_caller(cfg, as_user, groups, anonymous)  # bad names fail before any model loads
        services = load_services(cfg, index_dir)
        if caller is not None and not as_json:
            click.echo(f"as {caller.describe()}", err=True)
        for kind, data in services.pipeline.ask(query, stream=True, caller=caller):
            if kind == "sentiment" and not as_json:
                click.echo(f"[{data['label']} {data['confidence']:.2f}]", err=True)
            elif kind == "token" and not as_json:
                click.echo(data, nl=False, err=True)
            elif kind == "done":
                result = data.as_dict()
    except KBGateError as e:
        raise click.ClickException(e.message) from None
    if as_json:
        who = {"caller": caller.to_dict()} if caller is not None else {}
        click.echo(json.dumps({**result, **who}, ensure_ascii=False))
        return
    click.echo("\n", err=True)
    click.echo(result["answer"])
    click.echo("")
    for s in result["sources"] or result["suggestions"]:
        click.echo(f"[{s['n']}] {s['title']} › {s['heading']}  {s['url']}")
    click.echo(f"route: {result['route']} ({result['reason']}); timings ms: {result['timings_ms']}", err=True)


@main.command()
@click.option("--host", default=None, help="listen address [config: server.host]")
@click.option("--port", type=int, default=None, help="listen port [config: server.port]")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def serve(host, port, index_dir):
    """Serve the web page, the JSON API, Slack and OpenAI endpoints (waitress).

    With no index yet, it is built first from [index] kb_dir (progress on stderr); with nothing to
    build from, or when the models fail to load, it exits non-zero instead of serving 503s.
    """
    from kbgate.service import ensure_index
    from web.server import run

    cfg = _cfg()
    try:
        run(cfg, host or cfg.server.host, port or cfg.server.port, ensure_index(cfg, index_dir))
    except KBGateError as e:
        raise click.ClickException(e.message) from None


@main.group()
def token():
    """Bearer tokens for /api and /v1 (hashed in [auth] tokens_file)."""


@token.command("add")
@click.argument("user")
@click.option("--groups", default="", metavar="G1,G2", help="the groups the token's caller holds (comma-separated)")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="tokens file to append to [config: auth.tokens_file]")
def token_add(user, groups, path):
    """Make a random token for USER, append its SHA-256 to the tokens file and print the token once.

    A running server reads the file again when it changes: the token works at once.
    """
    from kbgate.tokens import add_token

    cfg = _cfg()
    configured = cfg.path(cfg.auth.tokens_file) if cfg.auth.tokens_file else None
    target = path or configured
    if target is None:
        raise click.ClickException("no tokens file: pass --file FILE, or set [auth] tokens_file in config.toml")
    try:
        secret = add_token(target, user, groups)
    except KBGateError as e:
        raise click.ClickException(e.message) from None
    click.echo(secret)  # stdout holds the token alone, for scripts
    who = f"{user} (groups: {groups or 'none'})"
    click.echo(f"added a token for {who} to {target}; it is shown only this once: store it now", err=True)
    if configured is None or Path(target).resolve() != configured.resolve():
        click.echo(f"note: the server reads [auth] tokens_file ({configured or 'not set'}), not {target}", err=True)


if __name__ == "__main__":
    main()
