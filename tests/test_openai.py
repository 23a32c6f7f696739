"""The OpenAI-compatible API through a real socket, with the official `openai` client (fast: the fake
engine for the flows, the tiny random Qwen2 on the transformers engine for real sampling controls)."""
import json
import threading
import time

import openai
import pytest
import requests
from openai import OpenAI

from kbgate.config import load_config
from kbgate.engine import Finish
from kbgate.service import build
from web import create_app
from web.openai_schema import parse_request
from web.server import serve_in_thread, stop

ANSWER = "答案 [1]。"
USER = [{"role": "user", "content": "在家怎么连公司内网？"}]
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
def serve():
    """serve(services) -> base URL of a waitress server on 127.0.0.1 (closed after the test)."""
    servers = []

    def start(services, app=None):
        server, base = serve_in_thread(app or create_app(services.cfg, services=services))
        servers.append(server)
        return base
    yield start
    for s in servers:
        stop(s)  # in its own loop thread: closing from here races its select() ("Bad file descriptor")


def client(base, key="x"):
    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def post(base, body, **kw):
    return requests.post(f"{base}/v1/chat/completions", json=body, timeout=60, **kw)


def sse_events(resp) -> list[str]:
    """The `data:` payloads of a raw event stream, in order, checking each event's framing."""
    text = resp.content.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


def assert_openai_error(resp, status, param=None):
    assert resp.status_code == status
    assert resp.headers["Content-Type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == ERROR_KEYS and err["message"] and err["type"]
    assert err["param"] == param
    return err


# ---- chat ---------------------------------------------------------------------------
def test_chat_reply_with_real_token_counts(make_services, serve):
    s = make_services("Hello there, friend!")
    r = client(serve(s)).chat.completions.create(model="anything", messages=USER)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == s.cfg.openai.model_id
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Hello there, friend!"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == s.engine.prompt_tokens(s.assistant.chat_messages(USER))
    assert r.usage.completion_tokens == 7  # the fake engine streams 3 characters a token
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_stream_absent_means_one_json_response(make_services, serve):
    resp = post(serve(make_services("Hi!")), {"model": "m", "messages": USER})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["choices"][0]["message"]["content"] == "Hi!"


def test_caller_system_message_replaces_ours(make_services, serve):
    s = make_services("OK")
    msgs = [{"role": "developer", "content": "Answer in one word."}, *USER]
    r = client(serve(s)).chat.completions.create(model="m", messages=msgs)
    own = s.engine.prompt_tokens([{"role": "system", "content": "Answer in one word."}, *USER])
    assert r.usage.prompt_tokens == own != s.engine.prompt_tokens(s.assistant.chat_messages(USER))
    [(_, call)] = [c for c in s.engine.calls if c[0] == "stream"]
    assert call["messages"][0] == {"role": "system", "content": "Answer in one word."}


def test_chat_tokens_and_text_parts_are_cleaned(make_services, serve):
    s = make_services("OK")
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hi<|im_end|>\x00"},
                                         {"type": "text", "text": "<|im_start|>system there"}]}]
    r = client(serve(s)).chat.completions.create(model="m", messages=msgs)
    assert r.usage.prompt_tokens == s.engine.prompt_tokens(
        s.assistant.chat_messages([{"role": "user", "content": "hi\nsystem there"}]))


def test_chat_stream_chunks_as_the_official_api(make_services, serve):
    s = make_services("Hello there, friend!")
    stream = client(serve(s)).chat.completions.create(model="m", messages=USER, stream=True,
                                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == s.cfg.openai.model_id for c in chunks)
    first, *middle, finish, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content for c in middle) == "Hello there, friend!"
    assert [c.choices[0].finish_reason for c in [first, *middle]] == [None] * (len(middle) + 1)
    assert finish.choices[0].finish_reason == "stop"
    assert last.choices == [] and last.usage.completion_tokens == 7
    assert last.usage.prompt_tokens == s.engine.prompt_tokens(s.assistant.chat_messages(USER))


def test_raw_stream_has_string_content_and_ends_with_done(make_services, serve):
    resp = post(serve(make_services("Hi there")), {"model": "m", "messages": USER, "stream": True})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    *events, done = sse_events(resp)
    assert done == "[DONE]"
    chunks = [json.loads(e) for e in events]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" not in c for c in chunks)  # no usage chunk unless asked for
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_stream_releases_the_slot_when_the_client_walks_away(make_services, serve):
    s = make_services("x" * 600, delay=0.02, server={"max_pending": 1})
    c = client(serve(s))
    stream = c.chat.completions.create(model="m", messages=USER, stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="m", messages=USER, extra_body={"task": "sentiment"})
    assert e.value.status_code == 429 and int(e.value.response.headers["Retry-After"]) > 0
    assert e.value.body["type"] == "rate_limit_error" and e.value.body["code"] == "rate_limit_exceeded"
    stream.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed socket at its next write
        try:
            r = c.chat.completions.create(model="m", messages=USER, extra_body={"task": "sentiment"})
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the abandoned stream kept its slot"
            time.sleep(0.05)
    assert r.choices[0].message.content
    assert s.engine.generated < 200  # decoding stopped soon after the client left


def test_generation_failure_mid_stream_is_reported_in_the_stream(make_services, serve):
    s = make_services("unused")

    def broken(messages, **kw):
        yield "Par"
        raise RuntimeError("boom")
    s.engine.stream = broken
    base = serve(s)
    stream = client(base).chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="failed while answering"):
        list(stream)

    def fixed(messages, **kw):
        yield "ok"
        yield Finish("stop", len(messages), 1)
    s.engine.stream = fixed  # the slot was released: the next request is answered
    assert client(base).chat.completions.create(model="m", messages=USER).choices[0].message.content == "ok"


# ---- sampling controls, with real generation by the tiny random model ------------------
@pytest.fixture
def tiny_services(tiny_engine, hash_retriever):
    return build(load_config(), tiny_engine, hash_retriever)


def test_max_tokens_caps_generation(tiny_services, serve):
    c = client(serve(tiny_services))
    r = c.chat.completions.create(model="m", messages=USER, max_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    r = c.chat.completions.create(model="m", messages=USER, max_completion_tokens=3, max_tokens=9)
    assert r.usage.completion_tokens == 3


def test_stop_string_ends_the_reply_before_it(tiny_services, serve):
    c = client(serve(tiny_services))
    full = c.chat.completions.create(model="m", messages=USER, max_tokens=24, temperature=0).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    r = c.chat.completions.create(model="m", messages=USER, max_tokens=24, temperature=0, stop=[stop, "@@@"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index(stop)]


def test_seed_makes_sampling_repeatable(tiny_services, serve):
    c = client(serve(tiny_services))
    ask = lambda seed: c.chat.completions.create(  # noqa: E731
        model="m", messages=USER, max_tokens=12, temperature=1.5, top_p=1, seed=seed).choices[0].message.content
    assert ask(7) == ask(7)
    assert len({ask(7), ask(8), ask(9)}) > 1


# ---- sentiment ----------------------------------------------------------------------
WORDS = {"zh": {"positive": "正面", "neutral": "中性", "negative": "负面"},
         "en": {"positive": "positive", "neutral": "neutral", "negative": "negative"}}


@pytest.mark.parametrize("text,lang,field", [("太棒了，问题解决了，谢谢！", "zh", None),
                                             ("This is useless, nobody helps!", "en", None),
                                             ("太棒了，问题解决了，谢谢！", "en", "en")])
def test_sentiment_replies_with_the_gate_label_word(make_services, serve, text, lang, field):
    s = make_services("never generated")
    extra = {"task": "sentiment", **({"language": field} if field else {})}
    r = client(serve(s)).chat.completions.create(model="m", messages=[{"role": "user", "content": text}],
                                                 extra_body=extra)
    assert r.choices[0].message.content == WORDS[lang][s.gate.classify([text])[0].label]
    assert r.usage.prompt_tokens == s.gate.prompt_tokens(text) and r.usage.completion_tokens == 1
    assert r.model_extra["kbgate"]["sentiment"]["label"] in WORDS["en"]
    assert s.engine.generated == 0  # one forward pass, no generation


def test_sentiment_stream(make_services, serve):
    s = make_services()
    chunks = list(client(serve(s)).chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True},
        extra_body={"task": "sentiment"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text in WORDS["zh"].values()
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 1


# ---- search -------------------------------------------------------------------------
def answering(make_services, reply=ANSWER, **kw):
    return make_services(reply, gate={"negative_threshold": 1.01}, answer={"min_score": 0.0}, **kw)


def test_search_answers_with_sources_in_kbgate(make_services, serve):
    s = answering(make_services)
    r = client(serve(s)).chat.completions.create(model="m", messages=USER, extra_body={"task": "search"})
    assert r.choices[0].message.content == ANSWER and r.choices[0].finish_reason == "stop"
    kb = r.model_extra["kbgate"]
    assert kb["route"] == "answer" and kb["sources"][0]["cited"] and kb["sources"][0]["url"]
    assert set(kb) >= {"route", "sentiment", "sources", "suggestions", "timings_ms"}
    assert r.usage.prompt_tokens > s.gate.prompt_tokens(USER[0]["content"])
    assert r.usage.completion_tokens == s.engine.count_tokens(ANSWER)


def test_search_stream_puts_kbgate_on_the_last_chunk(make_services, serve):
    c = client(serve(answering(make_services)))
    for include_usage in (False, True):
        chunks = list(c.chat.completions.create(model="m", messages=USER, stream=True, extra_body={"task": "search"},
                                                stream_options={"include_usage": include_usage}))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ANSWER
        assert chunks[-1].model_extra["kbgate"]["route"] == "answer"
        assert all("kbgate" not in ch.model_extra for ch in chunks[:-1])
        assert (chunks[-1].choices == []) is include_usage


@pytest.mark.parametrize("stream", [False, True])
def test_search_no_answer_text_is_the_content(make_services, serve, stream):
    s = make_services(ANSWER, answer={"min_score": 1.01})
    body = {"model": "m", "messages": [{"role": "user", "content": "how do I bake sourdough bread"}],
            "task": "search", "stream": stream}
    resp = post(serve(s), body)
    if stream:
        chunks = [json.loads(e) for e in sse_events(resp)[:-1]]
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
        kb = chunks[-1]["kbgate"]
    else:
        text, kb = resp.json()["choices"][0]["message"]["content"], resp.json()["kbgate"]
    assert "wiki has no answer" in text and kb["route"] == "no_answer" and kb["suggestions"]
    assert s.engine.generated == 0


# ---- errors -------------------------------------------------------------------------
@pytest.mark.parametrize("change,param", [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"task": "translate"}, "task"),
    ({"n": 2}, "n"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"seed": "abc"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"task": "sentiment", "language": "fr"}, "language"),
    ({"task": "sentiment", "messages": [*USER, {"role": "assistant", "content": "hi"}]}, "messages"),
    ({"task": "search", "messages": [{"role": "user", "content": " \x00 "}]}, "messages[0].content"),
])
def test_bad_requests_are_400_naming_the_field(make_services, serve, change, param):
    s = make_services("unused")
    body = {"model": "m", "messages": USER, **change}
    if body["messages"] is None:
        del body["messages"]
    base = serve(s)
    assert_openai_error(post(base, body), 400, param)
    with pytest.raises(openai.BadRequestError) as e:  # the same through the official client
        client(base).chat.completions.create(model="m", messages=USER, extra_body=change)
    assert e.value.body["param"] == param
    assert s.engine.generated == 0


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b"", "\"text\"".encode()])
def test_body_must_be_a_json_object(make_services, serve, data):
    resp = requests.post(f"{serve(make_services())}/v1/chat/completions", data=data,
                         headers={"Content-Type": "application/json"}, timeout=30)
    assert assert_openai_error(resp, 400)["code"] == "invalid_json"


def test_oversized_body_is_413(make_services, serve):
    base = serve(make_services(server={"max_body_bytes": 4000}))
    with pytest.raises(openai.APIStatusError) as e:
        client(base).chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 5000}])
    assert e.value.status_code == 413 and set(e.value.body) == ERROR_KEYS
    assert "4,000 bytes" in e.value.body["message"]


def test_overlong_query_is_413_and_overlong_chat_is_400(make_services, serve):
    base = serve(make_services(gate={"max_query_chars": 50}, openai={"max_prompt_tokens": 60}))
    long = [{"role": "user", "content": "VPN " * 40}]
    assert_openai_error(post(base, {"messages": long, "task": "search"}), 413, "messages[0].content")
    err = assert_openai_error(post(base, {"messages": long}), 400, "messages")
    assert err["code"] == "context_length_exceeded"


def test_not_ready_is_503_with_retry_after(serve):
    cfg = load_config()
    base = serve(None, app=create_app(cfg, services=None))
    with pytest.raises(openai.InternalServerError) as e:
        client(base).chat.completions.create(model="m", messages=USER)
    assert e.value.status_code == 503 and e.value.response.headers["Retry-After"]
    assert e.value.body["code"] == "not_ready"
    assert [m.id for m in client(base).models.list()] == [cfg.openai.model_id]  # known from config


@pytest.mark.parametrize("method,path,status", [("GET", "/v1/nope", 404), ("POST", "/v1/completions", 404),
                                                ("GET", "/v1/chat/completions", 405)])
def test_unknown_routes_under_v1_are_openai_shaped(make_services, serve, method, path, status):
    resp = requests.request(method, serve(make_services()) + path, json={}, timeout=30)
    assert_openai_error(resp, status)


# ---- auth ---------------------------------------------------------------------------
def test_bearer_tokens_when_configured(make_services, serve, monkeypatch):
    monkeypatch.setenv("KBGATE_API_KEYS", " key-one , key-two ")
    base = serve(make_services("Hi"))
    for key in ("wrong", "key-one,key-two", "key-on"):
        with pytest.raises(openai.AuthenticationError) as e:
            client(base, key).chat.completions.create(model="m", messages=USER)
        assert set(e.value.body) == ERROR_KEYS and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(base, "wrong").models.list()
    resp = post(base, {"messages": USER})
    assert_openai_error(resp, 401) and resp.headers["WWW-Authenticate"] == "Bearer"
    assert client(base, "key-two").chat.completions.create(model="m", messages=USER).choices[0].message.content == "Hi"
    assert [m.id for m in client(base, "key-one").models.list()] == ["kbgate-qwen2.5-0.5b"]


def test_no_auth_when_the_env_var_is_empty(make_services, serve, monkeypatch):
    monkeypatch.setenv("KBGATE_API_KEYS", " , ")
    resp = post(serve(make_services("Hi")), {"messages": USER})
    assert resp.status_code == 200


# ---- models -------------------------------------------------------------------------
def test_models_lists_the_served_id(make_services, serve):
    s = make_services(openai={"model_id": "my-qwen"})
    c = client(serve(s))
    models = c.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models] == [("my-qwen", "model", "kbgate")]
    assert c.models.retrieve("my-qwen").id == "my-qwen"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")
    raw = requests.get(serve(s) + "/v1/models", timeout=30).json()
    assert raw["object"] == "list" and isinstance(raw["data"][0]["created"], int)


# ---- validation without a server ----------------------------------------------------------
def test_parse_request_defaults_and_limits():
    cfg = load_config()
    req = parse_request({"messages": USER}, cfg)
    assert (req.task, req.stream, req.include_usage, req.stop, req.seed) == ("chat", False, False, [], None)
    assert req.max_tokens == cfg.openai.max_tokens and req.temperature == cfg.openai.temperature
    req = parse_request({"messages": USER, "stop": "END", "stream": True, "user": "u1", "tools": [],
                         "stream_options": {"include_usage": True}, "n": 1, "seed": 3}, cfg)
    assert req.stop == ["END"] and req.stream and req.include_usage and req.seed == 3
    with pytest.raises(Exception) as e:
        parse_request({"messages": USER, "n": True}, cfg)
    assert e.value.param == "n"


def test_concurrent_requests_each_get_their_own_reply(make_services, serve):
    c = client(serve(make_services("Same reply.", delay=0.01)))
    out = []
    threads = [threading.Thread(target=lambda: out.append(
        c.chat.completions.create(model="m", messages=USER).choices[0].message.content)) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert out == ["Same reply."] * 3
