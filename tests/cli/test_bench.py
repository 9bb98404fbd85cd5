"""`tunehouse bench train` run as a user runs it: both trainers, one table, one JSON summary."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.support import chat_rows, write_jsonl
from tunehouse.models.random_init import SHAPES


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`tunehouse bench train ARGS` as a user runs it."""
    command = [sys.executable, "-m", "tunehouse.cli.main", "bench", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_bench_train_compares_both_trainers_on_a_random_init_model(shipped_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    summary_path = tmp_path / "bench.json"
    model = ["--model", str(shipped_model_dir), "--random-init", "tiny"]
    result = run_bench(str(data), *model, "--limit", "8", "--batch-size", "4", "--json", str(summary_path))
    assert result.returncode == 0, result.stderr
    assert "TRL's tokens/s" in result.stdout
    summary = json.loads(summary_path.read_text())
    ours, trl = summary["results"]["ours"], summary["results"]["trl"]
    assert ours["tokens"] == trl["tokens"] > 0  # the same examples on both sides
    for side in (ours, trl):
        assert side["tokens_per_second"] > 0 and 0 < side["mfu"] < 1
        assert math.isfinite(side["final_assistant_loss"]) and side["peak_rss_bytes"] > 0
    assert summary["speedup"] == ours["tokens_per_second"] / trl["tokens_per_second"]
    assert summary["pair_speedups"] == [summary["speedup"]]  # one run each: the one pair
    assert summary["device"].startswith("CPU (") and "cores" in summary["device"]


def test_bench_train_names_the_shapes_it_knows(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(2))
    result = run_bench(str(data), "--random-init", "huge")
    assert result.returncode == 2
    assert ", ".join(SHAPES) in result.stderr and "Traceback" not in result.stderr


def test_repeated_runs_report_each_sides_median(shipped_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    summary_path = tmp_path / "bench.json"
    model = ["--model", str(shipped_model_dir), "--random-init", "tiny"]
    result = run_bench(str(data), *model, "--ours-only", "--repeat", "3", "--json", str(summary_path))
    assert result.returncode == 0, result.stderr
    assert "median of 3 runs" in result.stdout
    ours = json.loads(summary_path.read_text())["results"]["ours"]
    speeds = sorted(run["tokens_per_second"] for run in ours["runs"])
    memories = sorted(run["peak_rss_bytes"] for run in ours["runs"])
    assert len(speeds) == 3 and ours["tokens_per_second"] == speeds[1] and ours["peak_rss_bytes"] == memories[1]
