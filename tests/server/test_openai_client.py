"""The official `openai` client against a live server: models, completions, chat, streaming,
usage, logprobs, stop strings, seeds, and every error status."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest

API_KEY = "sk-test-fineserve"


@pytest.fixture(scope="module")
def client(live: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_models_lists_every_served_model(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert ids == {"llama", "qwen-awq", "llama-q1"}
    assert client.models.retrieve("qwen-awq").id == "qwen-awq"


def test_completion_with_usage_and_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="llama", prompt="the time of the year", max_tokens=5, temperature=0,
        logprobs=2, extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == "llama"
    assert choice.finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + 5
    assert choice.logprobs is not None and len(choice.logprobs.token_logprobs) == 5
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs)


def test_token_id_prompt_and_greedy_is_deterministic(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": "qwen-awq", "prompt": [5, 6, 7, 8], "max_tokens": 6}
    a = client.completions.create(temperature=0, extra_body={"ignore_eos": True}, **kw)
    b = client.completions.create(temperature=0, extra_body={"ignore_eos": True}, **kw)
    assert a.choices[0].text == b.choices[0].text
    s1 = client.completions.create(temperature=1.0, seed=7, extra_body={"ignore_eos": True}, **kw)
    s2 = client.completions.create(temperature=1.0, seed=7, extra_body={"ignore_eos": True}, **kw)
    assert s1.choices[0].text == s2.choices[0].text


def test_chat_uses_the_template_and_returns_a_message(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="llama", messages=[{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "hello"}],
        max_tokens=4, temperature=0, logprobs=True, top_logprobs=3,
    )  # fmt: skip
    msg = out.choices[0].message
    assert out.object == "chat.completion" and msg.role == "assistant"
    assert isinstance(msg.content, str)
    assert out.usage is not None and out.usage.prompt_tokens > 6  # template tokens included
    lps = out.choices[0].logprobs
    assert lps is not None and lps.content is not None
    assert all(len(e.top_logprobs) <= 3 for e in lps.content)


def test_streaming_chat_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="qwen-awq",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"


def test_streaming_completion_text_equals_the_whole_answer(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": "llama", "prompt": "a day in the life", "max_tokens": 8,
                          "temperature": 0, "extra_body": {"ignore_eos": True}}  # fmt: skip
    whole = client.completions.create(**kw).choices[0].text
    parts = [c.choices[0].text for c in client.completions.create(stream=True, **kw)]
    assert "".join(parts) == whole


def test_stop_string_cuts_the_output(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": "llama", "prompt": "the world", "max_tokens": 12,
                          "temperature": 0, "extra_body": {"ignore_eos": True}}  # fmt: skip
    full = client.completions.create(**kw).choices[0].text
    stop = full.strip()[:2] if full.strip() else None
    if not stop:
        pytest.skip("the tiny model produced no visible text")
    out = client.completions.create(stop=[stop], **kw).choices[0]
    assert stop not in out.text and out.finish_reason == "stop"
    assert full.startswith(out.text)


def _error(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    return info.value


def test_400_for_invalid_fields(client: openai.OpenAI) -> None:
    for kw in ({"temperature": -1}, {"max_tokens": 0}, {"n": 2}, {"top_p": 0}):
        err = _error(lambda kw=kw: client.completions.create(model="llama", prompt="x", **kw))
        assert err.status_code == 400 and err.body["type"] == "invalid_request_error"  # type: ignore[index]
    err = _error(lambda: client.completions.create(model="llama", prompt="x", max_tokens=99999))
    assert err.status_code == 400 and err.body["param"] == "max_tokens"  # type: ignore[index]


def test_401_without_the_key(live: Any) -> None:
    bad = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0)
    err = _error(lambda: bad.models.list())
    assert err.status_code == 401 and err.body["type"] == "authentication_error"  # type: ignore[index]
    assert httpx.get(live.url + "/v1/models").status_code == 401
    assert httpx.get(live.url + "/health").status_code == 200


def test_404_for_an_unknown_model(client: openai.OpenAI) -> None:
    err = _error(lambda: client.completions.create(model="gpt-9", prompt="x"))
    assert err.status_code == 404 and err.body["code"] == "model_not_found"  # type: ignore[index]
    err = _error(lambda: client.chat.completions.create(model="gpt-9", messages=[
        {"role": "user", "content": "x"}]))  # fmt: skip
    assert err.status_code == 404


def test_413_for_a_prompt_longer_than_the_context(client: openai.OpenAI, live: Any) -> None:
    err = _error(lambda: client.completions.create(model="llama", prompt=[5] * 2048))
    assert err.status_code == 413 and err.body["code"] == "context_length_exceeded"  # type: ignore[index]
    huge = {"model": "llama", "prompt": "x" * (300 << 10)}
    resp = httpx.post(live.url + "/v1/completions", json=huge,
                      headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "invalid_request_error"


def test_429_with_retry_after_when_a_queue_is_full(client: openai.OpenAI, live: Any) -> None:
    started = threading.Event()
    stream = client.completions.create(model="llama-q1", prompt="x", max_tokens=1000,
                                       stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    first = next(iter(stream))
    started.set()
    assert first.choices
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model="llama-q1", prompt="y", max_tokens=2)
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1
    stream.close()  # the client goes away: the request is aborted
    assert client.completions.create(model="llama", prompt="z", max_tokens=2).choices


def test_metrics_use_vllm_names_and_kv_slab_gauges(client: openai.OpenAI, live: Any) -> None:
    client.completions.create(model="llama", prompt="metrics", max_tokens=2)
    text = httpx.get(live.url + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds",
                 "vllm:generation_tokens_total", "vllm:request_success_total",
                 "vllm:kv_cache_usage_perc", "fineserve:kv_slabs", "fineserve:kv_free_bytes",
                 "fineserve:kv_stranded_bytes", "fineserve:request_slo_met_total"):  # fmt: skip
        assert name in text, name
    assert 'vllm:generation_tokens_total{model_name="llama"}' in text
