"""The OpenAI-compatible API with the real bundled Qwen (slow): the sentiment task and a short chat."""
import json

import pytest
import requests
from openai import OpenAI

from web import create_app
from web.server import serve_in_thread

pytestmark = pytest.mark.slow

CLEAR = [
    ("太棒了，问题解决了，谢谢！", "正面"),
    ("IT 小哥太给力了，五分钟就修好了，非常感谢！", "正面"),
    ("新电脑特别好用，太开心了！", "正面"),
    ("Thank you so much, the fix worked perfectly and I'm really happy!", "positive"),
    ("Great job, the new VPN guide is excellent. Thanks!", "positive"),
    ("太烂了，打印机又坏了，根本没人管！", "负面"),
    ("气死我了，密码重置了三次还是登不上，烦死了！", "负面"),
    ("垃圾系统，又崩了，一整天都白干了！", "负面"),
    ("This is useless, I've been locked out all day and nobody helps!", "negative"),
    ("Terrible. The VPN drops every five minutes and my ticket was ignored for a week.", "negative"),
]


@pytest.fixture(scope="module")
def base_url(real_services):
    server, base = serve_in_thread(create_app(real_services.cfg, services=real_services))
    yield base
    server.close()


@pytest.fixture
def client(base_url):
    return OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)


def test_sentiment_task_labels_clear_cases(client, real_services):
    got = [client.chat.completions.create(model="kbgate", messages=[{"role": "user", "content": text}],
                                          extra_body={"task": "sentiment"}).choices[0].message.content
           for text, _ in CLEAR]
    assert got == [want for _, want in CLEAR]


def test_sentiment_task_language_field(client):
    r = client.chat.completions.create(model="kbgate", messages=[{"role": "user", "content": CLEAR[0][0]}],
                                       extra_body={"task": "sentiment", "language": "en"})
    assert r.choices[0].message.content == "positive"


def test_short_real_chat_stream_counts_real_tokens(client, base_url, real_services):
    msgs = [{"role": "user", "content": "Say hello in five words."}]
    chunks = list(client.chat.completions.create(model="kbgate", messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    use = chunks[-1].usage
    assert text.strip() and 1 <= use.completion_tokens <= 8
    assert use.prompt_tokens == real_services.engine.prompt_tokens(real_services.assistant.chat_messages(msgs))
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] in ("stop", "length") and set(finish[:-1]) == {None}
    # the same request, non-streaming and greedy, gives the same text
    r = client.chat.completions.create(model="kbgate", messages=msgs, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == text
    raw = requests.post(f"{base_url}/v1/chat/completions", timeout=120, json={
        "model": "kbgate", "messages": msgs, "max_tokens": 4, "stream": True})
    events = raw.text.strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][len("data: "):])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
