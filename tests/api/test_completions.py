"""Legacy `/v1/completions` through the openai SDK and raw HTTP: token-id prompts pass through as ids,
bad input is a 400 naming the parameter, and a client that goes away stops its generation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from transformers import AutoTokenizer

from tests.conftest import SHIPPED_ID, TINY_ID, Server


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def nan_model(server: Server, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model with a NaN in its final norm, so every logit it computes is NaN."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    target = tmp_path_factory.mktemp("nan-llama")
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(target))
    added = server.cli("models", "add", "nan-llama", str(target))
    assert added.returncode == 0, added.stderr
    return "nan-llama"


def test_token_id_prompts_reach_the_model_as_sent(client: OpenAI, tokenizer: Any) -> None:
    ids = tokenizer.encode("he", add_special_tokens=False) + tokenizer.encode("llo", add_special_tokens=False)
    assert len(tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False)) != len(ids)  # a round trip merges
    reply = client.completions.create(model=TINY_ID, prompt=ids, max_tokens=3, temperature=0, echo=True)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.choices[0].text.startswith("hello")  # echo gives the prompt back as text

    batch = client.completions.create(model=TINY_ID, prompt=[ids, [1, 2, 3]], max_tokens=2, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.usage.prompt_tokens == len(ids) + 3
    assert (
        batch.choices[0].text
        == client.completions.create(model=TINY_ID, prompt=ids, max_tokens=2, temperature=0).choices[0].text
    )

    streamed = client.completions.create(model=TINY_ID, prompt=ids, max_tokens=3, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text.removeprefix("hello")


@pytest.mark.parametrize(
    "body",
    [
        {"model": TINY_ID},
        {"model": TINY_ID, "prompt": None},
        {"model": TINY_ID, "prompt": ""},
        {"model": TINY_ID, "prompt": []},
        {"model": TINY_ID, "prompt": [[]]},
        {"model": TINY_ID, "prompt": [[1, 2], []]},
        {"model": TINY_ID, "prompt": [-1]},
        {"model": TINY_ID, "prompt": [10**9]},
        {"model": TINY_ID, "prompt": {"text": "hi"}},
        {"model": TINY_ID, "prompt": [1, "a"]},
        {"model": TINY_ID, "prompt": [1] * 1024},
    ],
    ids=[
        "omitted",
        "null",
        "empty",
        "empty-list",
        "empty-ids",
        "one-empty",
        "negative",
        "out-of-vocab",
        "object",
        "mixed",
        "too-long",
    ],
)
def test_bad_prompts_are_400_naming_the_prompt(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/completions", json={**body, "max_tokens": 2})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_body_without_fields_names_the_model_and_no_body_says_so(http: httpx.Client) -> None:
    empty = http.post("/completions", json={})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "model"
    for content in (b"", b"[]", b"null"):
        response = http.post("/completions", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "The request body must be a JSON object."


def test_null_means_the_default(http: httpx.Client) -> None:
    body = {"model": TINY_ID, "prompt": "Hi", "temperature": 0}
    nulls = {"n": None, "max_tokens": None, "top_p": None, "stop": None, "seed": None, "stream": None, "echo": None}
    response = http.post("/completions", json={**body, **nulls})
    assert response.status_code == 200, response.text
    reply = response.json()
    assert len(reply["choices"]) == 1 and reply["usage"]["completion_tokens"] == 16  # max_tokens' default


def test_weights_that_compute_nan_are_a_400_naming_the_model(client: OpenAI, nan_model: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=nan_model, prompt="Hi", max_tokens=2)
    assert err.value.param == "model" and "NaN" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # a stream fails before its response starts
        client.completions.create(model=nan_model, prompt="Hi", max_tokens=2, stream=True)
    assert err.value.param == "model"


def test_a_client_that_disconnects_stops_its_generation(server: Server, client: OpenAI) -> None:
    counting = "1, 2, 3, 4, 5, 6, 7, 8,"  # greedy decoding keeps counting: it would run to the context's end
    body = {"model": SHIPPED_ID, "prompt": counting, "temperature": 0, "max_tokens": 10**9, "stream": True}
    headers = {"Authorization": "Bearer sk-local"}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, headers=headers, timeout=60) as stream:
        next(line for line in stream.iter_lines() if line.startswith("data: "))
    started = time.monotonic()
    reply = client.completions.create(model=SHIPPED_ID, prompt=counting, max_tokens=5, temperature=0)
    assert time.monotonic() - started < 30  # the abandoned generation had thousands of tokens to go
    assert reply.choices[0].finish_reason == "length"
