"""The engine in-process on the tiny model: one resolution per request, token ids in, continuous batching
(requests join a running batch, prompts prefill in chunks, each reply the same as served alone), adapters
mixed in one batch, a prefix cache, deletion that does not wait for a running generation, a stream that
stops when its reader goes away, and the bounded line of requests in front of the scheduler."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY_ID
from tests.serve.conftest import FT_ID
from tunehouse.errors import InvalidRequest, ModelLoadError, ModelNotFound, ServerBusy
from tunehouse.models import catalog
from tunehouse.serve import engine as engine_module
from tunehouse.serve.batch.kv import BLOCK
from tunehouse.serve.engine import Engine, Generation, SamplingParams, ScoredPrompt, TextDelta

GREEDY = SamplingParams(max_tokens=4, temperature=0)


def record_generate(monkeypatch: pytest.MonkeyPatch, model: Any, hold: threading.Event | None = None) -> list[Any]:
    """Spy on `model.generate` (the Hugging Face path): records its input ids, thread and output."""
    calls: list[Any] = []
    real = model.generate

    def generate(**kwargs: Any) -> torch.Tensor:
        calls.append({"input_ids": kwargs["input_ids"].tolist(), "thread": threading.current_thread().name})
        if hold is not None:
            hold.wait(timeout=60)
        output = real(**kwargs)
        calls[-1]["generated"] = output.shape[1] - kwargs["input_ids"].shape[1]
        return output

    monkeypatch.setattr(model, "generate", generate)
    return calls


class Steps:
    """Spy on a model's batched forward pass: each step's rows as (token ids, positions cached before)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, batched: Any, hold: threading.Event | None = None) -> None:
        self.calls: list[list[tuple[list[int], int]]] = []
        self.threads: set[str] = set()
        real = batched.forward

        def forward(rows: list[Any]) -> torch.Tensor:
            self.calls.append([(list(row.token_ids), row.cache.length) for row in rows])
            self.threads.add(threading.current_thread().name)
            if hold is not None:
                hold.wait(timeout=60)
            return real(rows)

        monkeypatch.setattr(batched, "forward", forward)

    def prefills(self) -> list[list[int]]:
        """The prompts (or their first chunks) that started prefilling, in order."""
        return [ids for step in self.calls for ids, cached in step if cached == 0]

    def decoded(self) -> int:
        """Tokens fed back after they were drawn (one per decode row)."""
        return sum(1 for step in self.calls for ids, cached in step if cached and len(ids) == 1)


def test_a_request_resolves_its_model_once_and_the_ids_reach_generation_unchanged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    real_get_model = engine_module.get_model
    monkeypatch.setattr(
        engine_module, "get_model", lambda model_id: lookups.append(model_id) or real_get_model(model_id)
    )
    handle = engine.open(TINY_ID)
    assert handle.is_base and handle.tokenizer is handle.weights.tokenizer
    assert handle.weights.batched is not None  # a Llama: served by the batched forward pass
    steps = Steps(monkeypatch, handle.weights.batched)
    ids = handle.encode("he") + handle.encode("llo")  # not how "hello" encodes: a decode would merge them
    assert handle.encode(handle.decode(ids)) != ids
    first = engine.generate(handle, ids, GREEDY)
    engine.generate(handle, ids, GREEDY)
    assert lookups == [TINY_ID]
    assert steps.prefills() == [ids, ids]
    assert first.prompt_tokens == len(ids) and first.completion_tokens == 4


@pytest.mark.parametrize(
    ("token_ids", "message"),
    [([], "empty"), ([-1], "token id -1"), ([49152], "token id 49152"), ([1] * 1024, "maximum context length")],
)
def test_prompts_the_model_cannot_continue_are_rejected_naming_the_param(
    engine: Engine, token_ids: list[int], message: str
) -> None:
    handle = engine.open(TINY_ID)
    with pytest.raises(InvalidRequest, match=message) as err:
        handle.check_prompt(token_ids, param="prompt")
    assert err.value.param == "prompt"


def test_max_tokens_is_cut_to_what_the_context_has_left(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    result = engine.generate(handle, [1] * 1000, SamplingParams(max_tokens=10**9, temperature=0))
    assert result.completion_tokens <= 24 and result.finish_reason == "length"


def test_nan_logits_are_a_model_error_not_a_crash(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    assert handle.weights.batched is not None
    with torch.no_grad():
        handle.weights.model.model.norm.weight.fill_(float("nan"))  # the Hugging Face path's weights
        handle.weights.batched.norm.fill_(float("nan"))  # the batched pass's (a bf16 copy where that is fast)
    for params in (GREEDY, SamplingParams(max_tokens=4, temperature=1.0), SamplingParams(max_tokens=4, logprobs=1)):
        with pytest.raises(ModelLoadError, match="NaN") as err:
            engine.generate(handle, [1, 2, 3], params)
        assert err.value.param == "model"


def test_a_folder_that_does_not_load_is_a_model_error(engine: Engine, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    (broken / "tokenizer.json").write_text("{}")
    catalog.register_base_model("broken", broken)
    with pytest.raises(ModelLoadError) as err:
        engine.open("broken")
    assert err.value.param == "model"


def test_deleting_does_not_wait_for_a_running_generation(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(FT_ID)
    base = engine.open(TINY_ID)
    assert handle.weights is base.weights  # the adapter rides on the one copy of its base
    tuned, plain = engine.generate(handle, [1, 2, 3], GREEDY), engine.generate(base, [1, 2, 3], GREEDY)
    assert tuned.text != plain.text
    assert FT_ID in base.weights.loras  # read once, kept for the next request

    hold, results = threading.Event(), []
    steps = Steps(monkeypatch, base.weights.batched, hold)
    running = threading.Thread(target=lambda: results.append(engine.generate(handle, [1, 2, 3], GREEDY)))
    running.start()
    wait_for(lambda: steps.calls)  # the generation runs now
    started = time.monotonic()
    engine.delete(FT_ID)
    assert time.monotonic() - started < 5
    with pytest.raises(ModelNotFound):
        engine.open(FT_ID)
    assert FT_ID not in base.weights.loras  # out of the engine's adapters at once

    hold.set()
    running.join(timeout=60)
    assert results[0].text == tuned.text  # the running generation finished with the adapter it had
    with pytest.raises(ModelNotFound):
        engine.generate(handle, [1, 2, 3], GREEDY)  # a handle opened before the deletion answers no more
    assert engine.generate(base, [1, 2, 3], GREEDY).text == plain.text


def test_closing_a_stream_stops_its_generation(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    steps = Steps(monkeypatch, handle.weights.batched)
    items: Iterator[TextDelta | ScoredPrompt | Generation] = engine.stream(
        handle, [1, 2, 3], SamplingParams(max_tokens=10**9, temperature=0)
    )
    assert isinstance(next(items), TextDelta)
    items.close()  # what the server does when the client disconnects
    engine.generate(handle, [1, 2, 3], GREEDY)
    assert steps.decoded() < 200  # of the 1,021 the context allowed


LONG = SamplingParams(max_tokens=10**9, temperature=0)  # the rest of the context: ~1,000 tokens


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_requests_join_the_running_batch_from_a_bounded_line(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    hold = threading.Event()
    steps = Steps(monkeypatch, handle.weights.batched, hold)
    running = engine.submit(handle, [[1, 2, 3]], GREEDY)
    wait_for(lambda: steps.calls)
    waiting = [engine.submit(handle, [[4, 5]], GREEDY), engine.submit(handle, [[6], [7]], GREEDY)]
    with pytest.raises(ServerBusy, match="busy") as refused:  # TUNEHOUSE_MAX_QUEUED_GENERATIONS=2
        engine.submit(handle, [[8]], GREEDY)
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"

    hold.set()
    results = [work.future.result(timeout=60) for work in (running, *waiting)]
    assert [len(r) for r in results] == [1, 1, 2]
    assert steps.prefills() == [[1, 2, 3], [4, 5], [6], [7]]  # in the order they came
    joined = steps.calls[1]  # the step after the first: the first request decodes, the others prefill
    assert joined[0][1] == 3 and [ids for ids, cached in joined[1:]] == [[4, 5], [6], [7]]
    assert steps.threads == {"tunehouse-generate"}  # never the caller's thread
    assert engine.generate(handle, [8], GREEDY).completion_tokens == 4  # room again


def test_a_request_given_up_while_it_waits_never_runs(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    hold = threading.Event()
    steps = Steps(monkeypatch, handle.weights.batched, hold)
    running = engine.submit(handle, [[1, 2, 3]], GREEDY)
    wait_for(lambda: steps.calls)
    abandoned = engine.submit(handle, [[4, 5]], GREEDY)
    engine.cancel(abandoned)  # what the server does when a waiting client hangs up
    assert abandoned.future.cancelled()
    hold.set()
    running.future.result(timeout=60)
    engine.generate(handle, [6], GREEDY)
    assert steps.prefills() == [[1, 2, 3], [6]]


def test_cancelling_an_awaiting_task_stops_its_generation(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    steps = Steps(monkeypatch, handle.weights.batched)

    async def give_up() -> None:
        task = asyncio.ensure_future(engine.generate_async(handle, [[1, 2, 3]], LONG))
        while not steps.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()  # the client hung up, or the server stops
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(give_up())
    engine.generate(handle, [1, 2, 3], GREEDY)
    assert steps.decoded() < 200  # of the 1,021 the context allowed


def test_stream_async_hands_out_each_choice_s_deltas_then_its_generation(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    expected = engine.generate(handle, [1, 2, 3], GREEDY).text

    async def collect() -> list[Any]:
        return [event async for event in engine.stream_async(handle, [[1, 2, 3], [1, 2, 3]], GREEDY)]

    events = asyncio.run(collect())
    for index in (0, 1):
        mine = [item for i, item in events if i == index]
        assert isinstance(mine[-1], Generation) and mine[-1].text == expected
        assert "".join(item.text for item in mine[:-1] if isinstance(item, TextDelta)) == expected


def test_close_stops_the_running_generation_and_drops_the_waiting(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "MAX_BATCH", 1)  # the batch is full: the second request waits
    handle = engine.open(TINY_ID)
    steps = Steps(monkeypatch, handle.weights.batched)
    running = engine.submit(handle, [[1, 2, 3]], LONG)
    wait_for(lambda: steps.calls)
    waiting = engine.submit(handle, [[4, 5]], LONG)
    started = time.monotonic()
    engine.close()  # the server's lifespan ends
    assert time.monotonic() - started < 5
    assert waiting.future.cancelled() and steps.prefills() == [[1, 2, 3]]
    assert running.future.result(timeout=5)[0].completion_tokens < 200
    with pytest.raises(ServerBusy, match="shutting down"):
        engine.submit(handle, [[1]], GREEDY)


# --- continuous batching --------------------------------------------------------------------------


@pytest.fixture
def second_ft(engine: Engine, tmp_path: Path, tiny_model_dir: Path) -> str:
    """Another LoRA fine-tune of the tiny model, on every projection, with its own weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(tmp_path / "second"))
    model_id = f"ft:{TINY_ID}:tunehouse:second:ef567890"
    catalog.register_trained_model(
        model_id, kind="fine-tuned", path=tmp_path / "second", base_model=TINY_ID, adapter=True, job_id="ftjob-2"
    )
    return model_id


def test_mixed_adapters_in_one_batch_answer_as_each_does_alone(
    engine: Engine, second_ft: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "max_queued", 64)
    handles = [engine.open(model_id) for model_id in (TINY_ID, FT_ID, second_ft)]
    requests = [(handles[i % 3], [1, 2, 3 + i]) for i in range(12)]
    params = SamplingParams(max_tokens=12, temperature=0)
    alone = [engine.generate(handle, prompt, params).text for handle, prompt in requests]
    assert len({alone[0], alone[1], alone[2]}) == 3  # each adapter says something else
    assert {FT_ID, second_ft} <= set(handles[0].weights.loras)  # both on the batched pass

    steps = Steps(monkeypatch, handles[0].weights.batched)
    works = [engine.submit(handle, [prompt], params) for handle, prompt in requests]
    together = [work.future.result(timeout=120)[0].text for work in works]
    assert together == alone
    assert max(len(step) for step in steps.calls) > 3  # they did share steps


def test_seed_reproduces_whatever_shares_the_batch(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    alone = engine.generate(handle, [1, 2, 3], seeded).text
    engine.max_queued = 64
    noise = [engine.submit(handle, [[5, 6, 7 + i]], SamplingParams(max_tokens=30, temperature=1.0)) for i in range(2)]
    assert engine.generate(handle, [1, 2, 3], seeded).text == alone
    for work in noise:
        work.future.result(timeout=60)
    assert engine.generate(handle, [1, 2, 3], SamplingParams(max_tokens=12, temperature=1.0, seed=8)).text != alone


def test_a_long_prompt_prefills_in_chunks_while_a_stream_decodes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = engine.open(TINY_ID)
    steps = Steps(monkeypatch, handle.weights.batched)
    streaming = engine.submit(handle, [[1, 2, 3]], SamplingParams(max_tokens=40, temperature=0))
    wait_for(lambda: steps.calls)
    long_prompt = [(i * 7) % 500 + 10 for i in range(3 * engine_module.STEP_TOKENS)]
    long = engine.submit(handle, [long_prompt], GREEDY)
    result = long.future.result(timeout=120)[0]
    streaming.future.result(timeout=120)
    chunked = [step for step in steps.calls if any(len(ids) > 1 for ids, _ in step)]
    assert len(chunked) >= 3  # the long prompt took several steps
    assert all(sum(len(ids) for ids, _ in step) <= engine_module.STEP_TOKENS for step in steps.calls)
    assert all(any(len(ids) == 1 and cached >= 3 for ids, cached in step) for step in chunked[1:3])  # it decodes on
    assert result.text == engine.generate(handle, long_prompt, GREEDY).text


def test_a_shared_prompt_prefix_is_computed_once(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    system = [(i * 13) % 400 + 20 for i in range(5 * BLOCK)]
    first = engine.generate(handle, [*system, 1, 2], GREEDY)
    steps = Steps(monkeypatch, handle.weights.batched)
    second = engine.generate(handle, [*system, 3, 4, 5], GREEDY)
    assert first.cached_tokens == 0 and second.cached_tokens == 5 * BLOCK
    assert steps.calls[0] == [([3, 4, 5], 5 * BLOCK)]  # only what follows the shared prefix is computed
    cold = Engine()  # the same answer as from an engine that computes the whole prompt
    try:
        assert cold.generate(cold.open(TINY_ID), [*system, 3, 4, 5], GREEDY).text == second.text
    finally:
        cold.close()


def test_the_choices_of_one_request_share_its_prefill(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    steps = Steps(monkeypatch, handle.weights.batched)
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3)
    results = engine.submit(handle, [[9, 8, 7, 6]] * 3, params).future.result(timeout=60)
    assert steps.prefills() == [[9, 8, 7, 6]]
    assert [r.cached_tokens for r in results] == [0, 4, 4]
    assert len({r.text for r in results}) > 1  # each choice draws with its own generator
