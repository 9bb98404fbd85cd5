"""`GET /metrics`: Prometheus's text format, counters moved by what a chat through the SDK did (the
engine counts them; the route renders them)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TINY_ID, Server, make_home


def scrape(server: Server, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's `/metrics`, by name and labels."""
    response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_chat_and_a_stream_move_the_counters_by_their_usage(server: Server, client: OpenAI) -> None:
    before = scrape(server)
    messages = [{"role": "user", "content": "Count to ten."}]
    reply = client.chat.completions.create(model=TINY_ID, messages=messages, max_tokens=6, temperature=0)
    stream = client.chat.completions.create(
        model=TINY_ID,
        messages=messages,
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [chunk.usage for chunk in stream if chunk.usage is not None][0]
    after = scrape(server)

    assert reply.choices[0].finish_reason == "length"
    computed = [u.prompt_tokens - u.prompt_tokens_details.cached_tokens for u in (reply.usage, streamed)]
    assert streamed.prompt_tokens_details.cached_tokens > 0  # the same prompt again: from the prefix cache
    assert moved(before, after, "tunehouse:prompt_tokens_total") == sum(computed)  # the tokens prefilled
    assert (
        moved(before, after, "tunehouse:generation_tokens_total")
        == 6 + 4
        == (reply.usage.completion_tokens + streamed.completion_tokens)
    )
    assert moved(before, after, "tunehouse:request_success_total", finished_reason="length") == 2
    assert moved(before, after, "tunehouse:e2e_request_latency_seconds_count") == 2
    assert moved(before, after, "tunehouse:e2e_request_latency_seconds_sum") > 0
    assert ("tunehouse:num_requests_running", ()) in after  # the engine's gauges are exposed, at 0 or more


def test_a_legacy_completion_is_counted_per_choice(server: Server, client: OpenAI) -> None:
    before = scrape(server)
    reply = client.completions.create(model=TINY_ID, prompt="Once upon a time", max_tokens=3, n=2, temperature=0)
    after = scrape(server)
    assert moved(before, after, "tunehouse:generation_tokens_total") == reply.usage.completion_tokens == 6
    assert moved(before, after, "tunehouse:request_success_total", finished_reason="length") == 2


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path):
    server = Server(make_home(tmp_path_factory.mktemp("locked-metrics"), shipped_model_dir), api_key="sk-metrics-key")
    server.start()
    yield server
    server.stop()


def test_with_an_api_key_metrics_want_it_as_v1_does(locked_server: Server) -> None:
    response = httpx.get(f"http://127.0.0.1:{locked_server.port}/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    samples = scrape(locked_server, authorization="Bearer sk-metrics-key")
    assert ("tunehouse:generation_tokens_total", ()) in samples
