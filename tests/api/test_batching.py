"""Continuous batching through the official SDK: sixteen concurrent streams for two fine-tunes and the
base, each the reply that request gets alone; `seed` reproduces; a shared system prompt is cached."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server
from tests.models.conftest import _make_adapter

FT_IDS = [f"ft:{TINY_ID}:tunehouse:batch{n}:ftjob-batching0{n}" for n in (1, 2)]


@pytest.fixture(scope="module")
def models(server: Server, tiny_model_dir: Path) -> list[str]:
    """The base and two LoRA fine-tunes of it, registered in the running server's store."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNEHOUSE_HOME", str(server.home))
        if "TUNEHOUSE_DATABASE_URL" in server.env:
            env.setenv("TUNEHOUSE_DATABASE_URL", server.env["TUNEHOUSE_DATABASE_URL"])
        from tunehouse.models.catalog import register_trained_model

        for seed, model_id in enumerate(FT_IDS):
            job = model_id.rsplit(":", 1)[1]
            path = _make_adapter(tiny_model_dir, server.home / "models" / "ft" / job, head=None, seed=seed + 11)
            register_trained_model(model_id, kind="fine-tuned", path=path, base_model=TINY_ID, adapter=True, job_id=job)
    return [TINY_ID, *FT_IDS]


def ask(client: OpenAI, model: str, index: int, *, stream: bool) -> str:
    messages = [{"role": "user", "content": f"Question number {index}: what comes next?"}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_sixteen_mixed_streams_each_answer_as_alone(client: OpenAI, models: list[str]) -> None:
    requests = [(models[i % 3], i) for i in range(16)]
    alone = [ask(client, model, index, stream=False) for model, index in requests]
    assert len({alone[0], alone[1], alone[2]}) == 3  # the base and each fine-tune answer differently
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda request: ask(client, *request, stream=True), requests))
    assert together == alone


def test_seed_reproduces_a_sampled_reply(client: OpenAI, models: list[str]) -> None:
    def sampled(seed: int) -> str:
        reply = client.chat.completions.create(
            model=models[1], messages=[{"role": "user", "content": "Say anything."}], max_tokens=12, seed=seed
        )
        return reply.choices[0].message.content or ""

    assert sampled(5) == sampled(5) != sampled(6)


def test_a_repeated_system_prompt_is_served_from_the_prefix_cache(client: OpenAI) -> None:
    system = {"role": "system", "content": "You answer questions about the Moon. " * 12}
    usages = []
    for question in ("How far is it?", "How old is it?"):
        reply = client.chat.completions.create(
            model=TINY_ID, messages=[system, {"role": "user", "content": question}], max_tokens=2
        )
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        usages.append(reply.usage)
    assert usages[0].prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
    cached = usages[1].prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert 64 <= cached < usages[1].prompt_tokens and cached % 16 == 0  # the system prompt's whole blocks
