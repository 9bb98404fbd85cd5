"""Every sampling field a completion request sends is honoured or refused with a 400 naming it."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID

HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"top_k": 5}, "top_k", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
        ({"service_tier": "flex"}, "service_tier", "unsupported_value"),
        ({"logit_bias": {"not-a-token": 5}}, "logit_bias", "invalid_request"),
        ({"logit_bias": {"11": 101}}, "logit_bias", "invalid_request"),
    ],
)
def test_chat_refuses_what_it_does_not_honour(client: OpenAI, extra: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY_ID, messages=HI, max_tokens=2, extra_body=extra)
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert caught.value.body["code"] == code  # type: ignore[index]


def test_harmless_fields_are_accepted(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY_ID,
        messages=HI,
        max_tokens=2,
        user="someone",
        metadata={"team": "support"},
        store=False,
        service_tier="auto",
        extra_body={"modalities": ["text"], "prompt_cache_key": "k"},
    )
    assert reply.usage.completion_tokens == 2


def test_legacy_completions_refuse_a_suffix_and_choosing_best_of(client: OpenAI) -> None:
    for extra, param in (({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"), ({"echo2": 1}, "echo2")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=TINY_ID, prompt="Hi", max_tokens=2, extra_body=extra)
        assert caught.value.body["param"] == param  # type: ignore[index]
    assert client.completions.create(model=TINY_ID, prompt="Hi", max_tokens=2, best_of=1, suffix="").choices


def test_logit_bias_forces_a_token(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY_ID, messages=HI, max_tokens=3, temperature=0, logit_bias={"28": 100}, logprobs=True
    )
    assert [t.token for t in reply.choices[0].logprobs.content] == [",", ",", ","]  # token 28 of SmolLM2's vocabulary
    legacy = client.completions.create(model=TINY_ID, prompt="Hi", max_tokens=3, temperature=0, logit_bias={"28": 100})
    assert legacy.choices[0].text == ",,,"


def test_a_frequency_penalty_changes_a_greedy_reply(client: OpenAI) -> None:
    def reply(**penalty: float) -> str:
        answer = client.chat.completions.create(model=TINY_ID, messages=HI, max_tokens=24, temperature=0, **penalty)
        return answer.choices[0].message.content or ""

    assert reply(frequency_penalty=2.0) != reply() == reply(frequency_penalty=0.0)
    assert reply(presence_penalty=2.0) != reply()
