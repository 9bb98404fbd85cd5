"""Training benchmark: tunehouse's trainer against TRL's SFTTrainer (see BENCHMARKS.md, Training).

Same as `tunehouse bench train` (typer runs a group's only command without its name):

    .venv/bin/python bench/train_bench.py ../shared/bench/chat_256.jsonl --limit 64
"""

from __future__ import annotations

from tunehouse.cli.bench import bench_app

if __name__ == "__main__":
    bench_app()
