"""Every engine on the same prompts in one run, with ratios against the transformers engine.

Each engine runs in its own process (so peak RSS is its own): load time, gate p50/p95 for
30- and 100-character queries in-process, prefill of 500 tokens, first answer token with
3 passages, greedy decode tok/s, optionally gate accuracy on tests/data/sentiment_eval.jsonl.
Then `kbgate serve` per engine: time to /readyz 200, /api/sentiment p50 (30 characters),
/api/search first token and end-to-end p50 on plain tune questions of bench/data/answers.jsonl
(values right = the expected value appears in the answer), peak RSS of the whole service.
The `openai` engine talks to llama-cpp-python's own server (started here) with the same
GGUF; "llama.cpp raw" is llama_cpp.Llama on that file with no kbgate around it (the anchor).
Only `load_engine` and the Engine protocol are used for the engines.

    python bench/engines.py                              # all engines, writes BENCHMARKS.md
    python bench/engines.py --engines llamacpp-0.5b,llamacpp-1.5b --accuracy --no-write
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/common.py also puts the repository on sys.path
from common import ROOT, peak_rss_mb, percentiles, table, update_file

ENGINES = {  # label -> [model] overrides; openai-* also start a llama_cpp.server on that bundle
    "transformers-0.5b": {"engine": "transformers", "source": "bundled"},
    "llamacpp-0.5b-asis": {"engine": "llamacpp", "source": "bundled", "requantize": ""},  # the Q4_K_M file as it is
    "llamacpp-0.5b": {"engine": "llamacpp", "source": "bundled"},  # config.toml's requantize: the default as shipped
    "llamacpp-1.5b": {"engine": "llamacpp", "source": "bundled-1.5b", "requantize": ""},  # as measured: the file as is
    "openai-0.5b": {"engine": "openai", "source": "bundled"},
}
THREADS = 0  # --threads, passed on to the child processes
COUNT = [{"role": "user", "content": "Count from 1 to 300, separated by commas, and nothing else."}]


def jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def queries(n: int, chars: int) -> list[str]:
    """`n` gate queries of exactly `chars` characters, from the labelled set (joined when short)."""
    rows = [r["text"] for r in jsonl(ROOT / "tests/data/sentiment_eval.jsonl")]
    near = [t for t in rows if chars <= len(t) <= chars * 1.2]
    out = [t[:chars] for t in near]
    i = 0
    while len(out) < n:  # join neighbours until long enough
        t = rows[i % len(rows)]
        while len(t) < chars:
            i += 1
            t += " " + rows[i % len(rows)]
        out.append(t[:chars])
        i += 1
    return out[:n]


def passages():
    """Three fixed wiki sections (the VPN page), as the assistant receives them."""
    from kbgate.grounding import Passage
    text = (ROOT / "kb/it/vpn.md").read_text(encoding="utf-8") if (ROOT / "kb/it/vpn.md").exists() else \
        next((ROOT / "kb/it").glob("*.md")).read_text(encoding="utf-8")
    secs = [s.strip() for s in re.split(r"\n(?=## )", text.split("---", 2)[-1]) if s.strip()][:3]
    return [Passage(i + 1, "VPN", s.splitlines()[0].lstrip("# "), s) for i, s in enumerate(secs)]


def stream_times(engine, messages, max_tokens):
    """(seconds to the first piece, seconds in total, Finish) of one greedy stream."""
    t0, first, fin = time.perf_counter(), None, None
    for piece in engine.stream(messages, max_tokens=max_tokens):
        if isinstance(piece, str) and first is None:
            first = time.perf_counter() - t0
        elif not isinstance(piece, str):
            fin = piece
    return first or 0.0, time.perf_counter() - t0, fin


def say(label: str, what: str) -> None:
    print(f"[{label}] {what}", file=sys.stderr, flush=True)


def measure(label: str, cfg, accuracy: bool, n: int) -> dict:
    """In-process figures for one engine (run in a child process); `n` gate queries per length."""
    from kbgate.answer import Assistant
    from kbgate.engines import load_engine
    from kbgate.gate import SentimentGate
    from kbgate.prompts import Prompts

    out: dict = {"label": label}
    t0 = time.perf_counter()
    engine = load_engine(cfg)
    out["load_s"] = time.perf_counter() - t0
    out["info"] = engine.info().as_dict()
    say(label, f"loaded in {out['load_s']:.1f} s: {out['info']}")
    prompts = Prompts(cfg.path(cfg.prompts.dir))
    gate = SentimentGate(engine, prompts, cfg.gate)
    for chars in (30, 100):
        qs = queries(n, chars)
        gate.classify(qs[:2])  # warm-up
        times = []
        for q in qs:
            t = time.perf_counter()
            gate.classify([q])
            times.append(time.perf_counter() - t)
        out[f"gate{chars}"] = percentiles(times)
        say(label, f"gate {chars} chars p50/p95 {out[f'gate{chars}'][0]:.0f}/{out[f'gate{chars}'][1]:.0f} ms")
    words = (ROOT / "kb/it").glob("*.md")
    long = " ".join(p.read_text(encoding="utf-8") for p in sorted(words))
    lo, hi = 0, len(long)  # the longest prefix of the wiki text that renders to <= 500 tokens
    while hi - lo > 20:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if engine.prompt_tokens([{"role": "user", "content": long[:mid]}]) <= 500 else (lo, mid)
    msgs = [{"role": "user", "content": long[:lo]}]
    out["prefill_tokens"] = engine.prompt_tokens(msgs)
    out["prefill500_s"] = statistics.median(stream_times(engine, msgs, 1)[1] for _ in range(3))
    say(label, f"prefill {out['prefill_tokens']} tokens {out['prefill500_s']:.2f} s")
    assistant = Assistant(engine, prompts, cfg.answer, cfg.escalation)
    firsts = []
    for q in ("在家怎么连接公司 VPN？", "How do I connect to the VPN from home?", "VPN 客户端在哪里下载？"):
        t = time.perf_counter()
        for piece in assistant.stream("answer", q, passages(), max_new_tokens=8):
            if isinstance(piece, str):
                break
        firsts.append(time.perf_counter() - t)
    out["first_token_s"] = statistics.median(firsts)
    say(label, f"first answer token {out['first_token_s']:.2f} s")
    out["first_token_prompt_tokens"] = assistant.prompt_tokens("answer", "在家怎么连接公司 VPN？", passages())
    first, total, fin = stream_times(engine, COUNT, 128)
    out["decode_tok_s"] = (fin.completion_tokens - 1) / max(total - first, 1e-9)
    out["decode_tokens"] = fin.completion_tokens
    say(label, f"decode {out['decode_tok_s']:.1f} tok/s over {fin.completion_tokens} tokens")
    if accuracy:
        rows = jsonl(ROOT / "tests/data/sentiment_eval.jsonl")
        got = [s.label for s in gate.classify([r["text"] for r in rows])]
        out["labels"] = got
        out["accuracy"] = sum(g == r["label"] for g, r in zip(got, rows)) / len(rows)
        say(label, f"gate accuracy {out['accuracy']:.3f} on {len(rows)}")
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def raw_llamacpp(gguf: Path) -> dict:
    """llama_cpp.Llama on the file itself: prefill of 500 tokens and greedy decode (the anchor)."""
    import llama_cpp
    import llama_cpp.llama as ll
    from llama_cpp import Llama
    default = llama_cpp.llama_model_default_params

    from kbgate.engines.llamacpp import repack_is_safe

    def params():  # extra buffer types as the llamacpp engine decides (off where the build has AMX: SIGILL here)
        p = default()
        p.use_extra_bufts = repack_is_safe(llama_cpp)
        return p
    ll.llama_cpp.llama_model_default_params = params
    t0 = time.perf_counter()
    llm = Llama(str(gguf), n_ctx=2048, n_threads=2, verbose=False)
    load = time.perf_counter() - t0
    toks = llm.tokenize((ROOT / "kb/it" / min(os.listdir(ROOT / "kb/it"))).read_bytes() * 4)[:500]
    t = time.perf_counter()
    llm.eval(toks)
    prefill = time.perf_counter() - t
    llm.reset()
    prompt = llm.tokenize(b"<|im_start|>user\nCount from 1 to 300, separated by commas.<|im_end|>\n"
                          b"<|im_start|>assistant\n")
    n, t, first = 0, time.perf_counter(), None
    for _ in llm.generate(prompt, temp=0.0):
        n += 1
        first = first or time.perf_counter()
        if n >= 128:
            break
    return {"label": "llama.cpp raw", "load_s": load, "prefill500_s": prefill,
            "decode_tok_s": (n - 1) / (time.perf_counter() - first), "peak_rss_mb": peak_rss_mb()}


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of a live process, from /proc (MB)."""
    for line in read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def write_config(path: Path, changes: dict) -> Path:
    """The repository's config.toml with `changes` merged in and every path made absolute."""
    import tomllib
    data = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    fixed = {"model": {"models_dir": str(ROOT / ".models")}, "index": {"kb_dir": str(ROOT / "kb")},
             "prompts": {"dir": str(ROOT / "prompts")}}
    for d in (fixed, changes):
        for sec, kv in d.items():
            data.setdefault(sec, {}).update(kv)
    path.write_text("".join(f"[{sec}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in kv.items()) + "\n"
                            for sec, kv in data.items()), encoding="utf-8")
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, limit: float) -> float:
    """Seconds until `url` answers 200 (polled every 0.1 s); raises if the process dies or time runs out."""
    import requests
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {limit:.0f} s")


# `python -m llama_cpp.server` with extra buffer types off (as in tests/test_engine_remote.py)
SERVER_MAIN = """
import sys, llama_cpp, llama_cpp.llama as L
default = llama_cpp.llama_model_default_params
def params():
    p = default(); p.use_extra_bufts = False; return p
L.llama_cpp.llama_model_default_params = params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def llama_server(gguf: Path):
    """llama-cpp-python's OpenAI server on loopback: (process, base_url)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER_MAIN, "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_threads", "2", "--n_ctx", "4096", "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc, 120)
    return proc, f"http://127.0.0.1:{port}/v1"


def tune_questions(n: int) -> list[dict]:
    """`n` plain tune questions with an expected value (bench/data/answers.jsonl)."""
    path = ROOT / "bench/data/answers.jsonl"
    rows = jsonl(path) if path.exists() else []
    return [r for r in rows if r["split"] == "tune" and r["kind"] == "plain" and r.get("value")][:n]


def value_right(answer: str, row: dict) -> bool:
    def norm(s: str) -> str:
        return re.sub(r"\s+", "", s.lower())
    return any(norm(v) in norm(answer) for v in [row["value"], *row.get("value_alternatives", [])])


def serve(label: str, changes: dict, index_dir: Path, extra_pids=(), n_questions: int = 8) -> dict:
    """`kbgate serve` with this engine: ready time, /api/sentiment and /api/search, peak RSS of it all."""
    import requests
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = write_config(Path(tmp) / "config.toml", {**changes, "index": {"dir": str(index_dir)},
                                                        "server": {"port": port, "max_pending": 32}})
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(Path(sys.executable).parent / "kbgate"), "--config", str(cfg), "serve"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            out["ready_s"] = wait_http(base + "/readyz", proc, 600) + 0 * t0
            times = []
            for q in queries(12, 30):
                t = time.perf_counter()
                requests.post(base + "/api/sentiment", json={"texts": [q]}, timeout=60).raise_for_status()
                times.append(time.perf_counter() - t)
            out["api_gate30"] = percentiles(times[2:])
            totals, firsts, right = [], [], []
            for row in tune_questions(n_questions):
                t = time.perf_counter()
                r = requests.post(base + "/api/search", json={"query": row["query"]}, timeout=300)
                r.raise_for_status()
                totals.append(time.perf_counter() - t)
                body = r.json()
                firsts.append((body["timings_ms"].get("first_token") or body["timings_ms"]["total"]) / 1000)
                right.append(value_right(body.get("answer", ""), row))
            out["search_p50_s"] = statistics.median(totals) if totals else None
            out["search_first_token_p50_s"] = statistics.median(firsts) if firsts else None
            out["values_right"] = f"{sum(right)}/{len(right)}"
            out["service_rss_mb"] = vm_hwm_mb(proc.pid) + sum(vm_hwm_mb(p) for p in extra_pids)
        except (RuntimeError, OSError, ValueError, KeyError, requests.RequestException) as e:  # reported in the table
            out["serve_error"] = f"{type(e).__name__}: {e}"[:300]
            if proc.poll() is not None:
                out["serve_error"] += " | " + proc.stderr.read().decode(errors="replace")[-300:]
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def cpu_features() -> str:
    flags = next((line.split(":", 1)[1].split() for line in read_text("/proc/cpuinfo").splitlines()
                  if line.startswith("flags")), [])
    want = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    return ", ".join(f for f in want if f in flags) or "none of avx2/avx512/amx"


def child(label: str, accuracy: bool, remote_url: str | None, n: int) -> dict:
    """Run `measure` (or the raw anchor) for one engine in a fresh process; its JSON result."""
    cmd = [sys.executable, __file__, "--one", label, "--queries", str(n), "--threads", str(THREADS)] + \
          (["--accuracy"] if accuracy else []) + \
          (["--remote-url", remote_url] if remote_url else [])
    r = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)  # stderr: its progress, passed through
    if r.returncode != 0 or not r.stdout.strip():
        return {"label": label, "error": f"exit status {r.returncode} (see its output above)"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def config_for(label: str, remote_url: str | None, threads: int = 0):
    from kbgate.config import load_config
    changes = {"model": {**ENGINES[label], **({"threads": threads} if threads else {})}}
    if remote_url:
        changes["remote"] = {"base_url": remote_url, "read_timeout_s": 300.0}
    return load_config().replace(**changes), changes


def fmt(v, unit="", nd=0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{nd}f}{unit}"


def ratio(a, b, inverse=False) -> str:
    if not a or not b:
        return ""
    return f" ({(b / a if inverse else a / b):.2f}×)"


def report(results: dict, serve_runs: dict, features: str) -> str:
    """The markdown section: one column per engine, ratios against transformers in brackets."""
    labels = [k for k in results]
    ref = results.get("transformers-0.5b", {})
    sref = serve_runs.get("transformers-0.5b", {})
    rows = []

    def row(name, key, unit, nd, src=results, refd=ref, inverse=False, idx=None):
        cells = []
        for lab in labels:
            v = src.get(lab, {}).get(key)
            r0 = refd.get(key)
            if idx is not None:
                v = v[idx] if v else None
                r0 = r0[idx] if r0 else None
            cells.append(fmt(v, unit, nd) + ("" if lab == "transformers-0.5b" else ratio(v, r0, inverse)))
        rows.append([name] + cells)

    row("load (in-process)", "load_s", " s", 1)
    row("gate p50, 30 chars", "gate30", " ms", 0, idx=0)
    row("gate p95, 30 chars", "gate30", " ms", 0, idx=1)
    row("gate p50, 100 chars", "gate100", " ms", 0, idx=0)
    row("gate p95, 100 chars", "gate100", " ms", 0, idx=1)
    row("prefill, 500 tokens", "prefill500_s", " s", 2)
    row("first answer token, 3 passages", "first_token_s", " s", 2)
    row("decode (greedy)", "decode_tok_s", " tok/s", 1, inverse=False)
    row("gate accuracy, sentiment_eval (260)", "accuracy", "", 3)
    row("peak RSS of the bench process", "peak_rss_mb", " MB", 0)
    row("`kbgate serve` → /readyz 200", "ready_s", " s", 1, src=serve_runs, refd=sref)
    row("/api/sentiment p50, 30 chars", "api_gate30", " ms", 0, src=serve_runs, refd=sref, idx=0)
    row("/api/search first token p50", "search_first_token_p50_s", " s", 2, src=serve_runs, refd=sref)
    row("/api/search end-to-end p50", "search_p50_s", " s", 2, src=serve_runs, refd=sref)
    rows.append(["values right (plain tune questions)"]
                + [serve_runs.get(lab, {}).get("values_right", "–") for lab in labels])
    row("peak RSS of the service", "service_rss_mb", " MB", 0, src=serve_runs, refd=sref)
    notes = [f"- {lab}: {r['error']}" for lab, r in results.items() if r.get("error")]
    notes += [f"- {lab} serve: {r['serve_error']}" for lab, r in serve_runs.items() if r.get("serve_error")]
    agree = ""
    if ref.get("labels"):
        parts = [f"{lab} {sum(a == b for a, b in zip(r['labels'], ref['labels'])) / len(ref['labels']):.1%}"
                 for lab, r in results.items() if r.get("labels") and lab != "transformers-0.5b"]
        agree = "Gate labels agreeing with transformers on sentiment_eval: " + ", ".join(parts) + ".\n\n"
    return ("## Engines (bench/engines.py)\n\n"
            f"CPU features: {features}. Same prompts for every engine; in brackets the ratio to "
            "transformers-0.5b (times: >1 is slower; decode: >1 is faster). `openai-0.5b` = the "
            "`openai` engine talking to llama-cpp-python's server (same GGUF, 2 threads, one request "
            "at a time); its RSS adds the server's. `llama.cpp raw` = llama_cpp.Llama alone (the anchor).\n\n"
            + table(rows, header=("measure", *labels)) + "\n\n" + agree
            + ("Not measured / errors:\n" + "\n".join(notes) + "\n" if notes else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated labels: " + ", ".join(ENGINES))
    ap.add_argument("--accuracy", action="store_true", help="also gate accuracy on tests/data/sentiment_eval.jsonl")
    ap.add_argument("--no-serve", action="store_true", help="skip the `kbgate serve` part")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--questions", type=int, default=8, help="plain tune questions per serve run")
    ap.add_argument("--queries", type=int, default=12, help="gate queries per length (the first 2 are warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="[model] threads for in-process engines (0 = config)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--remote-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # child mode: one engine, JSON on stdout
        if args.one == "llama.cpp raw":
            from kbgate.config import load_config
            from kbgate.provision import fetch_gguf
            print(json.dumps(raw_llamacpp(fetch_gguf(load_config()))))
        else:
            print(json.dumps(measure(args.one, config_for(args.one, args.remote_url, args.threads)[0], args.accuracy,
                                     args.queries)))
        return 0
    from kbgate.config import load_config
    from kbgate.provision import fetch_gguf
    global THREADS
    THREADS = args.threads
    labels = [x.strip() for x in args.engines.split(",") if x.strip()]
    results, serve_runs = {}, {}
    index_dir = None
    if not args.no_serve:
        index_dir = Path(tempfile.mkdtemp(prefix="kbgate-bench-index-"))
        r = subprocess.run([str(Path(sys.executable).parent / "kbgate"), "index", "--index", str(index_dir), "-q"],
                           check=False, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"index build failed, skipping the serve part: {r.stderr[-300:]}", file=sys.stderr)
            index_dir = None
    for label in labels:
        print(f"== {label}", file=sys.stderr, flush=True)
        server, url = None, None
        if label.startswith("openai"):
            bundle = ENGINES[label]["source"]
            server, url = llama_server(fetch_gguf(load_config().replace(model={"source": bundle})))
        try:
            results[label] = child(label, args.accuracy, url, args.queries)
            if index_dir:
                serve_runs[label] = serve(label, config_for(label, url)[1], index_dir,
                                          [server.pid] if server else [], args.questions)
            if server:
                results[label]["peak_rss_mb"] = results[label].get("peak_rss_mb", 0) + vm_hwm_mb(server.pid)
        finally:
            if server:
                server.terminate()
                server.wait(30)
        print(json.dumps({k: v for k, v in results[label].items() if k != "labels"}), file=sys.stderr, flush=True)
        print(json.dumps(serve_runs.get(label, {})), file=sys.stderr, flush=True)
    results["llama.cpp raw"] = child("llama.cpp raw", False, None, args.queries)
    section = report(results, serve_runs, cpu_features())
    print(section)
    if not args.no_write:
        update_file("engines", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
