"""Serving metrics for Prometheus, named as vLLM names them (`vllm:` → `tunehouse:`) where they overlap,
with vLLM's histogram buckets, so a vLLM dashboard or alert reads tunehouse after a change of prefix.

The serving engine reports them all, as its scheduler sees them (`serve/engine.py`), so generations
that no HTTP request made (eval runs, graders) count too. They live in prometheus-client's default
registry of the process that calls these functions, which `GET /metrics` renders (`api/metrics.py`).
Tokens per second are the rate of `tunehouse:generation_tokens_total`, as with vLLM.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# vLLM's buckets (vllm/v1/metrics/loggers.py), so quantiles compare across the two servers.
FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

TIME_TO_FIRST_TOKEN = Histogram(
    "tunehouse:time_to_first_token_seconds",
    "Histogram of time to first token in seconds.",
    buckets=FIRST_TOKEN_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "tunehouse:inter_token_latency_seconds",
    "Histogram of inter-token latency in seconds.",
    buckets=INTER_TOKEN_BUCKETS,
)
E2E_REQUEST_LATENCY = Histogram(
    "tunehouse:e2e_request_latency_seconds",
    "Histogram of e2e request latency in seconds.",
    buckets=REQUEST_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("tunehouse:prompt_tokens", "Number of prefill tokens processed.")
GENERATION_TOKENS = Counter("tunehouse:generation_tokens", "Number of generation tokens processed.")
REQUEST_SUCCESS = Counter(
    "tunehouse:request_success", "Count of successfully processed requests.", labelnames=["finished_reason"]
)
REQUESTS_RUNNING = Gauge("tunehouse:num_requests_running", "Number of requests in model execution batches.")
REQUESTS_WAITING = Gauge("tunehouse:num_requests_waiting", "Number of requests waiting to be processed.")
KV_CACHE_USAGE = Gauge("tunehouse:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
ADAPTER_LOADS = Counter("tunehouse:lora_adapter_loads", "Number of LoRA adapters loaded into the engine.")


def observe_first_token(seconds: float) -> None:
    """A request's first token came `seconds` after it arrived."""
    TIME_TO_FIRST_TOKEN.observe(seconds)


def observe_inter_token(seconds: float) -> None:
    """A request's next token came `seconds` after its previous one."""
    INTER_TOKEN_LATENCY.observe(seconds)


def count_tokens(prompt: int, generated: int) -> None:
    """Tokens a request prefilled and generated."""
    PROMPT_TOKENS.inc(prompt)
    GENERATION_TOKENS.inc(generated)


def set_queue(running: int, waiting: int) -> None:
    """Requests in the running batch, and requests waiting for a place in it."""
    REQUESTS_RUNNING.set(running)
    REQUESTS_WAITING.set(waiting)


def set_kv_cache_usage(fraction: float) -> None:
    """The share of the KV-cache budget in use, 0 to 1."""
    KV_CACHE_USAGE.set(fraction)


def count_adapter_load() -> None:
    """An adapter was loaded (a first request for it, or again after the LRU evicted it)."""
    ADAPTER_LOADS.inc()


def observe_request(e2e_seconds: float, finish_reason: str) -> None:
    """A request (one choice) finished `e2e_seconds` after it arrived, for `finish_reason` (`stop`,
    `length`, or `abort` when its client hung up first)."""
    E2E_REQUEST_LATENCY.observe(e2e_seconds)
    REQUEST_SUCCESS.labels(finished_reason=finish_reason).inc()
