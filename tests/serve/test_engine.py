"""The engine in-process on the tiny model: one resolution per request, token ids in, deletion that
does not wait for a running generation, a stream that stops when its reader goes away, and the
bounded line of requests in front of the generation thread."""

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
from tunehouse.serve.engine import Engine, Generation, SamplingParams, ScoredPrompt, TextDelta

GREEDY = SamplingParams(max_tokens=4, temperature=0)


def record_generate(monkeypatch: pytest.MonkeyPatch, model: Any, hold: threading.Event | None = None) -> list[Any]:
    """Spy on `model.generate`: records its input ids, thread and output; waits for `hold` first when given."""
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
    calls = record_generate(monkeypatch, handle.weights.model)
    ids = handle.encode("he") + handle.encode("llo")  # not how "hello" encodes: a decode would merge them
    assert handle.encode(handle.decode(ids)) != ids
    first = engine.generate(handle, ids, GREEDY)
    engine.generate(handle, ids, GREEDY)
    assert lookups == [TINY_ID]
    assert [c["input_ids"] for c in calls] == [[ids], [ids]]
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
    with torch.no_grad():
        handle.weights.model.model.norm.weight.fill_(float("nan"))
    for params in (GREEDY, SamplingParams(max_tokens=4, temperature=1.0)):
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
    from peft import PeftModel

    handle = engine.open(FT_ID)
    base = engine.open(TINY_ID)
    assert handle.weights is base.weights  # the adapter rides on the one copy of its base
    tuned, plain = engine.generate(handle, [1, 2, 3], GREEDY), engine.generate(base, [1, 2, 3], GREEDY)
    assert tuned.text != plain.text
    assert isinstance(base.weights.model, PeftModel)

    hold, results = threading.Event(), []
    calls = record_generate(monkeypatch, base.weights.model, hold)
    running = threading.Thread(target=lambda: results.append(engine.generate(handle, [1, 2, 3], GREEDY)))
    running.start()
    while not calls:  # the generation holds the engine now
        time.sleep(0.01)
    started = time.monotonic()
    engine.delete(FT_ID)
    assert time.monotonic() - started < 5
    with pytest.raises(ModelNotFound):
        engine.open(FT_ID)
    assert isinstance(base.weights.model, PeftModel)  # still in use: unloaded when the generation ends

    hold.set()
    running.join(timeout=60)
    assert results[0].text == tuned.text  # the running generation finished with the adapter it had
    assert not isinstance(base.weights.model, PeftModel)  # its last adapter gone, the base is unwrapped
    with pytest.raises(ModelNotFound):
        engine.generate(handle, [1, 2, 3], GREEDY)  # a handle opened before the deletion answers no more
    assert engine.generate(base, [1, 2, 3], GREEDY).text == plain.text


def test_closing_a_stream_stops_its_generation(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    calls = record_generate(monkeypatch, handle.weights.model)
    items: Iterator[TextDelta | ScoredPrompt | Generation] = engine.stream(
        handle, [1, 2, 3], SamplingParams(max_tokens=10**9, temperature=0)
    )
    assert isinstance(next(items), TextDelta)
    items.close()  # what the server does when the client disconnects
    engine.generate(handle, [1, 2, 3], GREEDY)  # waits for the engine, so the stream's generation has ended
    assert calls[0]["generated"] < 200  # of the 1,021 the context allowed


LONG = SamplingParams(max_tokens=10**9, temperature=0)  # the rest of the context: ~1,000 tokens


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_requests_wait_in_a_bounded_line_for_the_generation_thread(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = engine.open(TINY_ID)
    hold = threading.Event()
    calls = record_generate(monkeypatch, handle.weights.model, hold)
    running = engine.submit(handle, [[1, 2, 3]], GREEDY)
    wait_for(lambda: calls)
    waiting = [engine.submit(handle, [[4, 5]], GREEDY), engine.submit(handle, [[6], [7]], GREEDY)]
    with pytest.raises(ServerBusy, match="busy") as refused:  # TUNEHOUSE_MAX_QUEUED_GENERATIONS=2
        engine.submit(handle, [[8]], GREEDY)
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"

    hold.set()
    results = [work.future.result(timeout=60) for work in (running, *waiting)]
    assert [len(r) for r in results] == [1, 1, 2]  # a request's choices run back to back
    assert [c["input_ids"] for c in calls] == [[[1, 2, 3]], [[4, 5]], [[6]], [[7]]]  # in the order they came
    assert {c["thread"] for c in calls} == {"tunehouse-generate"}  # never the caller's thread
    assert engine.generate(handle, [8], GREEDY).completion_tokens == 4  # room again


def test_a_request_given_up_while_it_waits_never_runs(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    hold = threading.Event()
    calls = record_generate(monkeypatch, handle.weights.model, hold)
    running = engine.submit(handle, [[1, 2, 3]], GREEDY)
    wait_for(lambda: calls)
    abandoned = engine.submit(handle, [[4, 5]], GREEDY)
    engine.cancel(abandoned)  # what the server does when a waiting client hangs up
    assert abandoned.future.cancelled()
    hold.set()
    running.future.result(timeout=60)
    engine.generate(handle, [6], GREEDY)
    assert [c["input_ids"] for c in calls] == [[[1, 2, 3]], [[6]]]


def test_cancelling_an_awaiting_task_stops_its_generation(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = engine.open(TINY_ID)
    calls = record_generate(monkeypatch, handle.weights.model)

    async def give_up() -> None:
        task = asyncio.ensure_future(engine.generate_async(handle, [[1, 2, 3]], LONG))
        while not calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()  # the client hung up, or the server stops
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(give_up())
    engine.generate(handle, [1, 2, 3], GREEDY)  # waits for the engine, so the cancelled generation has ended
    assert calls[0]["generated"] < 200  # of the 1,021 the context allowed


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
    handle = engine.open(TINY_ID)
    calls = record_generate(monkeypatch, handle.weights.model)
    running = engine.submit(handle, [[1, 2, 3]], LONG)
    waiting = engine.submit(handle, [[4, 5]], LONG)
    wait_for(lambda: calls)
    started = time.monotonic()
    engine.close()  # the server's lifespan ends
    assert time.monotonic() - started < 5
    assert waiting.future.cancelled() and len(calls) == 1
    assert running.future.result(timeout=5)[0].completion_tokens < 200
    with pytest.raises(ServerBusy, match="shutting down"):
        engine.submit(handle, [[1]], GREEDY)
