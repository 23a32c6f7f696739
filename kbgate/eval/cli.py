"""`kbgate eval retrieval|gate|answers FILE`: tables for people, `--json` for machines.

Each input file is validated before any model loads, so a bad line fails in a second
with its line number; library errors become one clean line and a non-zero exit.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from kbgate.config import Config
from kbgate.errors import KBGateError


def _cfg() -> Config:
    return click.get_current_context().find_object(Config)


def _clean(fn):
    """KBGateError (bad input, a missing index, an unreachable server) -> one line, exit 1."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KBGateError as e:
            raise click.ClickException(e.message) from None
    return run


def _emit(res: dict, as_json: bool, report) -> None:
    click.echo(json.dumps(res, ensure_ascii=False) if as_json else report(res))


FILE = click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
SPLIT = click.option("--split", default=None, help="only the rows with this \"split\" (tune, heldout)")
JSON = click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of tables")
INDEX = click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="index folder [config: index.dir]")


@click.group("eval")
def eval_cmd():
    """Measure retrieval, the sentiment gate or whole answers on a labelled JSON-lines file."""


@eval_cmd.command("retrieval")
@FILE
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True, help="hits counted per query")
@SPLIT
@JSON
@INDEX
@_clean
def retrieval_cmd(file, k, split, as_json, index_dir):
    """Recall@k, MRR and recall@1 per mode (BM25, dense, hybrid) and language, and the misses.

    FILE: JSON lines {"query", "page"}, optionally "lang" and "split".
    """
    from kbgate.eval import check_pages, read_jsonl
    from kbgate.eval.retrieval import compare
    from kbgate.service import load_retriever

    rows = read_jsonl(file, {"query": str, "page": str}, split)
    retriever = load_retriever(_cfg(), index_dir)
    check_pages(rows, {c.page for c in retriever.index.chunks}, file, "page")
    res = compare(retriever, [{k_: v for k_, v in r.items() if k_ != "_line"} for r in rows], k)
    res = {"k": k, "n": len(rows), "modes": res}
    _emit(res, as_json, retrieval_report)


def retrieval_report(res: dict) -> str:
    from kbgate.eval import table
    k = res["k"]
    rows = [(mode, lang, m.get("n", "-"), f"{m['recall']:.3f}", f"{m['mrr']:.3f}", f"{m['r1']:.3f}")
            for mode, by in res["modes"].items() for lang, m in by.items() if lang != "misses"]
    out = table(rows, ("mode", "lang", "n", f"recall@{k}", f"MRR@{k}", "recall@1"))
    misses = res["modes"].get("hybrid", {}).get("misses", [])
    if misses:
        out += f"\n\nhybrid misses ({len(misses)}):\n\n" + table(
            [(q, page, ", ".join(got[:k])) for q, page, got in misses], ("query", "expected page", "got"))
    return out


@eval_cmd.command("gate")
@FILE
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="route to troubleshooting at P(negative) ≥ this [config: gate.negative_threshold]")
@SPLIT
@JSON
@_clean
def gate_cmd(file, threshold, split, as_json):
    """Accuracy, per-label accuracy, confusion matrix and routing at the threshold.

    FILE: JSON lines {"text", "label"} (positive / neutral / negative), optionally "kind".
    """
    from kbgate.eval import read_jsonl
    from kbgate.eval.gate import check_labels, evaluate_gate, gate_report
    from kbgate.service import load_services

    rows = read_jsonl(file, {"text": str, "label": str}, split)
    check_labels(rows, file)
    cfg = _cfg()
    services = load_services(cfg, with_retriever=False)
    res = evaluate_gate(services.gate, rows, cfg.gate.negative_threshold if threshold is None else threshold)
    _emit(res, as_json, gate_report)


@eval_cmd.command("answers")
@FILE
@click.option("--url", default=None, help="a running server (http://host:port), asked through its /api/search")
@click.option("--max-new-tokens", type=click.IntRange(1, 2000), default=None,
              help="cap per answer (local pipeline only) [config: answer.max_new_tokens]")
@SPLIT
@JSON
@INDEX
@_clean
def answers_cmd(file, url, max_new_tokens, split, as_json, index_dir):
    """Route, cited page, fix steps and expected value per question, and the totals.

    FILE: JSON lines {"query", "kind", "pages"}, optionally "value", "value_alternatives",
    "id", "lang", "split"; rows without pages are off-topic (the right reply is no answer).
    """
    from kbgate.eval import check_pages, read_jsonl
    from kbgate.eval.answers import answers_report, check_rows, evaluate_answers, http_runner, local_runner

    rows = read_jsonl(file, {"query": str}, split)
    check_rows(rows, file)
    cfg = _cfg()
    if url:
        kb = cfg.path(cfg.index.kb_dir)
        if kb.is_dir():  # the server's wiki may differ; check page ids against the local one when there is one
            check_pages(rows, {str(p.relative_to(kb).with_suffix("")) for p in kb.rglob("*.md")}, file)
        ask = http_runner(url)
    else:
        from kbgate.service import load_services
        services = load_services(cfg, index_dir)
        check_pages(rows, {c.page for c in services.retriever.index.chunks}, file)
        ask = local_runner(services, max_new_tokens)
    res = evaluate_answers(ask, rows)
    _emit(res, as_json, answers_report)
