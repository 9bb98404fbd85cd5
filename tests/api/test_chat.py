"""Chat and legacy completions through the openai SDK, on the shipped model and a tiny one."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import SHIPPED_ID, TINY_ID, Server
from tests.support import add_broken_model


def test_shipped_model_answers_and_stops(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=SHIPPED_ID,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=40,
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"  # the end-of-turn token ended it, not the token limit
    assert choice.message.role == "assistant"
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == SHIPPED_ID
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_gives_length(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY_ID, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=5, temperature=0
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_seed_reproduces_samples_and_n_gives_distinct_choices(client: OpenAI) -> None:
    kwargs = dict(model=TINY_ID, messages=[{"role": "user", "content": "Say something"}], max_tokens=8, seed=7)
    first = client.chat.completions.create(**kwargs, n=2, temperature=1.0)
    second = client.chat.completions.create(**kwargs, n=2, temperature=1.0)
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert first.choices[0].message.content != first.choices[1].message.content


def test_stream_yields_chunks_then_done(client: OpenAI) -> None:
    full = client.chat.completions.create(
        model=SHIPPED_ID, messages=[{"role": "user", "content": "Name a colour."}], temperature=0, max_tokens=20
    )
    stream = client.chat.completions.create(
        model=SHIPPED_ID,
        messages=[{"role": "user", "content": "Name a colour."}],
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stop_sequence_is_cut_and_not_returned(client: OpenAI) -> None:
    base = client.completions.create(model=TINY_ID, prompt="Once upon a time", max_tokens=12, temperature=0)
    words = base.choices[0].text.split()
    assert len(words) >= 3
    stop = words[2]
    stopped = client.completions.create(
        model=TINY_ID, prompt="Once upon a time", max_tokens=12, temperature=0, stop=[stop]
    )
    assert stop not in stopped.choices[0].text
    assert base.choices[0].text.startswith(stopped.choices[0].text)
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=TINY_ID, prompt="Once upon a time", max_tokens=12, temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == stopped.choices[0].text


def test_legacy_completion_echo_and_prompt_list(client: OpenAI) -> None:
    reply = client.completions.create(model=TINY_ID, prompt=["A", "B"], max_tokens=3, temperature=0, echo=True)
    assert reply.object == "text_completion"
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text.startswith("A") and reply.choices[1].text.startswith("B")
    assert reply.usage.completion_tokens == 6


def test_unknown_model_is_404_with_code(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
    assert err.value.param == "model"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client: OpenAI, kwargs: dict, param: str) -> None:
    request = {"model": TINY_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**request)
    assert err.value.param == param


def test_prompt_over_the_context_length_is_a_400(client: OpenAI) -> None:
    too_long = "word " * 1100  # the tiny model's context is 1024 positions
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=TINY_ID, messages=[{"role": "user", "content": too_long}], max_tokens=2)
    assert err.value.code == "context_length_exceeded"


def test_null_means_the_default_and_an_empty_body_names_the_model(server: Server) -> None:
    http = httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=120)
    body = {"model": TINY_ID, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}
    nulls = {"n": None, "max_tokens": None, "temperature": None, "top_p": None, "stop": None, "stream": None}
    response = http.post("/chat/completions", json={**body, **nulls})  # what the 0.28 CLI sends
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1
    empty = http.post("/chat/completions", json={})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "model"
    bad_stop = http.post("/chat/completions", json={**body, "stop": 5})
    assert bad_stop.status_code == 400 and bad_stop.json()["error"]["param"] == "stop"


def test_a_model_whose_weights_do_not_load_is_a_400(server: Server, client: OpenAI, tmp_path: Path) -> None:
    broken = add_broken_model(server, tmp_path, "broken-for-chat")
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=broken, messages=[{"role": "user", "content": "hi"}], stream=stream)
        assert err.value.code == "model_load_error" and err.value.param == "model"


def test_a_tiny_temperature_is_greedy_not_a_500(client: OpenAI) -> None:
    # 5e-324 is a valid temperature by OpenAI's schema; dividing logits by it overflowed them.
    for temperature in (5e-324, 1e-40):
        reply = client.chat.completions.create(
            model=TINY_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=temperature
        )
        greedy = client.chat.completions.create(
            model=TINY_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
        )
        assert reply.choices[0].message.content == greedy.choices[0].message.content
