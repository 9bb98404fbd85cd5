"""`tunehouse bench serve`: its statistics, its prompts, and a tiny run of tunehouse alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunehouse.bench.serve import (
    BEFORE,
    LONG_PROMPT_WORDS,
    SHORT_PROMPT_WORDS,
    ServeBenchSettings,
    medians,
    mixed_clients,
    percentile,
    prompt,
    ratios,
    unavailable,
)


def test_percentiles_interpolate_as_numpy_does() -> None:
    latencies = [float(x) for x in range(1, 101)]
    assert percentile(latencies, 50) == 50.5
    assert percentile(latencies, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_each_figure_is_its_median_over_the_rounds_that_measured_it() -> None:
    rounds = [{"ttft": 1.0, "tps": 10.0}, {"ttft": 3.0, "tps": 30.0}, {"ttft": 2.0}]
    assert medians(rounds) == {"ttft": 2.0, "tps": 20.0}


def test_ratios_are_tunehouse_over_each_peer_from_the_same_run() -> None:
    summary = {
        "tunehouse": {"c16_tokens_per_second": 150.0, "ttft_long_seconds": 0.4},
        "vllm": {"c16_tokens_per_second": 100.0, "ttft_long_seconds": 0.5},
        "llama.cpp": {"c16_tokens_per_second": 50.0},
    }
    assert ratios(summary) == {
        "vllm": {"c16_tokens_per_second": 1.5, "ttft_long_seconds": 0.8},
        "llama.cpp": {"c16_tokens_per_second": 3.0},
    }
    assert ratios({"vllm": {"x": 1.0}}) == {}  # nothing to compare without tunehouse


def test_the_mixed_adapter_round_runs_at_the_largest_level_up_to_16() -> None:
    assert mixed_clients((1, 4, 16, 64)) == 16
    assert mixed_clients((1, 2)) == 2
    assert mixed_clients((32, 64)) == 32


def test_prompts_are_about_50_and_500_tokens_and_each_starts_its_own_way(shipped_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from tunehouse.models.template import render_chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(shipped_model_dir)

    def tokens(text: str) -> int:  # as the server counts a chat's prompt
        rendered = render_chat_prompt(tokenizer, [{"role": "user", "content": text}])
        return len(tokenizer.encode(rendered, add_special_tokens=False))

    short, long = prompt(SHORT_PROMPT_WORDS, "Name a harbour town."), prompt(LONG_PROMPT_WORDS, "Which town is this?")
    assert 40 <= tokens(short) <= 65
    assert 450 <= tokens(long) <= 560
    assert short.split()[0] != prompt(SHORT_PROMPT_WORDS, "Name a harbour town.").split()[0]  # no prefix-cache hit


def test_peers_that_are_not_installed_are_skipped_saying_why(tmp_path: Path) -> None:
    settings = ServeBenchSettings(model_id="m", model_dir=tmp_path, gguf=None, repo=tmp_path)
    assert unavailable("tunehouse", settings) is None
    assert "GGUF" in (unavailable("llama.cpp", settings) or "")
    with_gguf = ServeBenchSettings(model_id="m", model_dir=tmp_path, gguf=tmp_path / "m.gguf", repo=tmp_path)
    assert unavailable("llama.cpp", with_gguf) == "not installed (make llamacpp)"
    assert unavailable("vllm", settings) == "not installed (make vllm)"
    assert "--before" in (unavailable(BEFORE, settings) or "")


def test_a_tiny_run_of_tunehouse_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    command = [sys.executable, "-m", "tunehouse.cli.main", "bench", "serve", "--model", str(tiny_model_dir)]
    command += ["--systems", "tunehouse", "--rounds", "1", "--clients", "1,2", "--max-tokens", "4"]
    command += ["--decode-tokens", "6", "--no-adapters", "--json", str(report_file)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    figures = report["summary"]["tunehouse"]
    assert set(figures) == {
        "ttft_short_seconds",
        "ttft_long_seconds",
        "decode_tokens_per_second",
        *(f"c{n}_{name}" for n in (1, 2) for name in ("tokens_per_second", "p50_seconds", "p99_seconds")),
    }
    assert all(value > 0 for value in figures.values())
    assert figures["c2_p99_seconds"] >= figures["c2_p50_seconds"]
    assert report["peak_rss_bytes"]["tunehouse"] > 0
    assert report["ratios"] == {} and report["mixed_over_base"] is None
    assert "aggregate tokens/s, 2 clients" in done.stdout
    assert "decode tokens/s, one stream" in done.stdout
