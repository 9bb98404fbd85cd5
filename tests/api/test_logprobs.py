"""`logprobs` through the official openai SDK: on legacy completions (with `echo`, over the prompt too,
and with `max_tokens` 0 to score without generating, as lm-evaluation-harness does) and on chat
completions; each value is the log-softmax a plain transformers forward pass gives on the same tokens,
streamed or not; out-of-range requests are a 400 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.api.test_schemas import assert_schema
from tests.conftest import SHIPPED_ID, TINY_ID, Server
from tunehouse.models.template import render_chat_prompt

TOLERANCE = 1e-4
PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tokenizer(shipped_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(shipped_model_dir))


@pytest.fixture(scope="module")
def model(shipped_model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(shipped_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=120)


def log_softmax(model: Any, token_ids: list[int]) -> torch.Tensor:
    """(T, V): row i is the model's log-distribution of the token after `token_ids[: i + 1]`."""
    with torch.inference_mode():
        return model(torch.tensor([token_ids])).logits[0].float().log_softmax(-1)


def greedy(model: Any, prompt_ids: list[int], steps: int) -> list[int]:
    """The token ids greedy decoding appends to `prompt_ids`, one plain forward pass per token."""
    ids = list(prompt_ids)
    for _ in range(steps):
        ids.append(int(log_softmax(model, ids)[-1].argmax()))
    return ids[len(prompt_ids) :]


def assert_top_ordered(top: dict[str, float]) -> None:
    values = list(top.values())
    assert values == sorted(values, reverse=True) or values[:-1] == sorted(values[:-1], reverse=True)


def test_completion_logprobs_are_the_model_s_log_softmax(client: OpenAI, model: Any, tokenizer: Any) -> None:
    prompt_ids = tokenizer.encode(PROMPT)
    reply = client.completions.create(model=SHIPPED_ID, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=3)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and "".join(logprobs.tokens) == choice.text
    generated = greedy(model, prompt_ids, 4)
    assert logprobs.tokens == [tokenizer.decode([t]) for t in generated]
    rows = log_softmax(model, prompt_ids + generated)[len(prompt_ids) - 1 : -1]
    for token_id, row, value, top in zip(generated, rows, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert abs(value - row[token_id].item()) < TOLERANCE
        best = row.topk(3)
        assert list(top) == [tokenizer.decode([t]) for t in best.indices.tolist()]  # the greedy token is first
        assert all(abs(top[k] - v) < TOLERANCE for k, v in zip(top, best.values.tolist(), strict=True))
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(len(logprobs.tokens))]


def test_echo_with_max_tokens_0_scores_the_prompt_without_generating(
    client: OpenAI, model: Any, tokenizer: Any
) -> None:
    prompt_ids = tokenizer.encode(PROMPT)
    reply = client.completions.create(
        model=SHIPPED_ID, prompt=PROMPT, max_tokens=0, echo=True, logprobs=5, temperature=0
    )
    choice = reply.choices[0]
    assert choice.text == PROMPT and reply.usage.completion_tokens == 0
    logprobs = choice.logprobs
    assert logprobs is not None
    assert logprobs.tokens == [tokenizer.decode([t]) for t in prompt_ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing precedes it
    assert [
        PROMPT[o : o + len(t)] for o, t in zip(logprobs.text_offset, logprobs.tokens, strict=True)
    ] == logprobs.tokens
    rows = log_softmax(model, prompt_ids)[:-1]
    for token_id, row, value, top in zip(
        prompt_ids[1:], rows, logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True
    ):
        assert abs(value - row[token_id].item()) < TOLERANCE
        assert_top_ordered(top)
        assert 5 <= len(top) <= 6 and tokenizer.decode([token_id]) in top  # the top 5 and the token itself
        assert abs(max(top.values()) - row.max().item()) < TOLERANCE


def test_what_lm_eval_sends_token_id_prompts_echoed_with_one_token(
    http: httpx.Client, model: Any, tokenizer: Any
) -> None:
    """lm-eval's `local-completions` posts context + continuation as token ids, `echo`, `logprobs` 1 and
    `max_tokens` 1, then sums `token_logprobs[ctxlen:-1]` and checks each against its top entry."""
    context = tokenizer.encode("Question: What is the capital of France?\nAnswer:")
    answers = [tokenizer.encode(" Paris"), tokenizer.encode(" Berlin")]
    body = {
        "model": SHIPPED_ID,
        "prompt": [context + answer for answer in answers],
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }
    response = http.post("/completions", json=body)
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda c: c["index"])
    scores = []
    for choice, answer in zip(choices, answers, strict=True):
        token_logprobs = choice["logprobs"]["token_logprobs"]
        assert len(token_logprobs) == len(context) + len(answer) + 1  # the prompt and the one token generated
        rows = log_softmax(model, context + answer)
        expected = sum(rows[len(context) - 1 + i, t].item() for i, t in enumerate(answer))
        score = sum(token_logprobs[len(context) : -1])
        assert abs(score - expected) < TOLERANCE
        tops = choice["logprobs"]["top_logprobs"][len(context) : -1]
        greedy_flags = [
            lp == max(top.values()) for lp, top in zip(token_logprobs[len(context) : -1], tops, strict=True)
        ]
        assert greedy_flags == [rows[len(context) - 1 + i].argmax().item() == t for i, t in enumerate(answer)]
        scores.append(score)
    assert scores[0] > scores[1]  # the model knows Paris


def test_an_end_of_turn_token_is_listed_in_the_legacy_shape_and_not_in_chat_content(
    client: OpenAI, tokenizer: Any
) -> None:
    """OpenAI's legacy logprobs listed the `<|endoftext|>` that ended a completion, and lm-eval counts on
    `max_tokens` 1 adding one entry whatever the token; chat's content holds the reply's tokens only."""
    prompt = render_chat_prompt(tokenizer, MESSAGES) + "The capital of France is Paris."
    legacy = client.completions.create(
        model=SHIPPED_ID, prompt=prompt, max_tokens=1, echo=True, logprobs=1, temperature=0
    ).choices[0]
    assert legacy.finish_reason == "stop" and legacy.text == prompt  # the end-of-turn token has no text
    assert legacy.logprobs is not None and legacy.logprobs.tokens[-1] == tokenizer.eos_token
    assert len(legacy.logprobs.tokens) == len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1
    assert legacy.logprobs.text_offset[-1] == len(prompt)
    chat = client.chat.completions.create(
        model=SHIPPED_ID, messages=MESSAGES, max_tokens=16, temperature=0, logprobs=True
    ).choices[0]
    assert chat.finish_reason == "stop" and chat.logprobs is not None and chat.logprobs.content
    assert "".join(t.token for t in chat.logprobs.content) == chat.message.content


def test_a_streamed_completion_carries_the_same_logprobs_chunk_by_chunk(client: OpenAI) -> None:
    kwargs: dict[str, Any] = dict(model=TINY_ID, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2, echo=True)
    whole = client.completions.create(**kwargs).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**kwargs, stream=True) if c.choices]
    assert "".join(c.text for c in chunks) == whole.text
    assert whole.logprobs is not None and all(c.logprobs is not None for c in chunks)
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        streamed = [item for c in chunks for item in getattr(c.logprobs, field)]
        assert streamed == getattr(whole.logprobs, field), field


def test_completion_logprobs_match_openai_s_schema(http: httpx.Client) -> None:
    for body in (
        {"model": TINY_ID, "prompt": PROMPT, "max_tokens": 3, "logprobs": 2},
        {"model": TINY_ID, "prompt": [PROMPT, "Hi"], "max_tokens": 0, "logprobs": 0, "n": 2},
    ):
        response = http.post("/completions", json=body)
        assert response.status_code == 200, response.text
        assert_schema(response.json(), "CreateCompletionResponse")
    echoed = http.post(
        "/completions", json={"model": TINY_ID, "prompt": PROMPT, "max_tokens": 2, "logprobs": 1, "echo": True}
    )
    body = echoed.json()
    first = body["choices"][0]["logprobs"]
    assert first["token_logprobs"][0] is None and first["top_logprobs"][0] is None
    first["token_logprobs"][0], first["top_logprobs"][0] = 0.0, {}  # OpenAI sends null there; its schema says not
    assert_schema(body, "CreateCompletionResponse")


@pytest.mark.parametrize("logprobs", [6, -1, 1.5, "many"])
def test_logprobs_outside_0_to_5_is_a_400_naming_it(client: OpenAI, logprobs: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=TINY_ID, prompt=PROMPT, max_tokens=1, logprobs=logprobs)
    assert err.value.param == "logprobs" and "logprobs" in err.value.message


def test_without_logprobs_a_choice_carries_none(client: OpenAI) -> None:
    reply = client.completions.create(model=TINY_ID, prompt=PROMPT, max_tokens=2, echo=True)
    assert reply.choices[0].logprobs is None


def chat_prompt_ids(tokenizer: Any) -> list[int]:
    return tokenizer(render_chat_prompt(tokenizer, MESSAGES), add_special_tokens=False)["input_ids"]


def test_chat_logprobs_are_the_model_s_log_softmax(client: OpenAI, model: Any, tokenizer: Any) -> None:
    reply = client.chat.completions.create(
        model=SHIPPED_ID, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    assert b"".join(bytes(t.bytes or []) for t in content).decode() == choice.message.content
    prompt_ids = chat_prompt_ids(tokenizer)
    generated = greedy(model, prompt_ids, len(content))
    rows = log_softmax(model, prompt_ids + generated)[len(prompt_ids) - 1 : -1]
    for token_id, row, item in zip(generated, rows, content, strict=True):
        assert item.token == tokenizer.decode([token_id])
        assert abs(item.logprob - row[token_id].item()) < TOLERANCE
        best = row.topk(3)
        assert [t.token for t in item.top_logprobs] == [tokenizer.decode([t]) for t in best.indices.tolist()]
        assert all(abs(t.logprob - v) < TOLERANCE for t, v in zip(item.top_logprobs, best.values.tolist(), strict=True))
        assert all(bytes(t.bytes or []) == t.token.encode() for t in item.top_logprobs)


def test_chat_logprobs_without_alternatives_and_in_a_stream(client: OpenAI, http: httpx.Client) -> None:
    kwargs: dict[str, Any] = dict(model=TINY_ID, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True)
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.logprobs is not None and whole.logprobs.content
    assert all(t.top_logprobs == [] for t in whole.logprobs.content)  # top_logprobs left out: none
    streamed = [
        t
        for chunk in client.chat.completions.create(**kwargs, stream=True)
        for c in chunk.choices
        if c.logprobs is not None and c.logprobs.content is not None
        for t in c.logprobs.content
    ]
    assert streamed == whole.logprobs.content
    raw = http.post("/chat/completions", json={**kwargs, "top_logprobs": 2})
    assert raw.status_code == 200, raw.text
    assert_schema(raw.json(), "CreateChatCompletionResponse")
    plain = client.chat.completions.create(**{**kwargs, "logprobs": False})
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs")],
    ids=["without-logprobs", "over-20"],
)
def test_chat_top_logprobs_out_of_bounds_is_a_400_naming_it(client: OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=TINY_ID, messages=MESSAGES, max_tokens=1, **extra)
    assert err.value.param == param
