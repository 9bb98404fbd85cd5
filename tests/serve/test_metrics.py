"""The serving metrics, read back from prometheus-client's registry as a scrape would see them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tunehouse.serve import metrics


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_counters_move_by_what_they_are_told() -> None:
    before = {
        "prompt": value("tunehouse:prompt_tokens_total"),
        "generated": value("tunehouse:generation_tokens_total"),
        "loads": value("tunehouse:lora_adapter_loads_total"),
        "length": value("tunehouse:request_success_total", finished_reason="length"),
    }
    metrics.count_tokens(prompt=12, generated=5)
    metrics.count_adapter_load()
    metrics.observe_request(0.7, "length")
    assert value("tunehouse:prompt_tokens_total") == before["prompt"] + 12
    assert value("tunehouse:generation_tokens_total") == before["generated"] + 5
    assert value("tunehouse:lora_adapter_loads_total") == before["loads"] + 1
    assert value("tunehouse:request_success_total", finished_reason="length") == before["length"] + 1


def test_latencies_land_in_vllms_buckets() -> None:
    below = value("tunehouse:time_to_first_token_seconds_bucket", le="0.25")
    above = value("tunehouse:time_to_first_token_seconds_bucket", le="0.1")
    metrics.observe_first_token(0.2)
    assert value("tunehouse:time_to_first_token_seconds_bucket", le="0.25") == below + 1
    assert value("tunehouse:time_to_first_token_seconds_bucket", le="0.1") == above
    count = value("tunehouse:inter_token_latency_seconds_count")
    metrics.observe_inter_token(0.05)
    assert value("tunehouse:inter_token_latency_seconds_count") == count + 1


def test_gauges_hold_the_latest_figures() -> None:
    metrics.set_queue(running=3, waiting=7)
    metrics.set_kv_cache_usage(0.25)
    assert value("tunehouse:num_requests_running") == 3
    assert value("tunehouse:num_requests_waiting") == 7
    assert value("tunehouse:kv_cache_usage_perc") == 0.25
