"""Training benchmark: tunehouse's trainer against TRL's SFTTrainer (see BENCHMARKS.md, Training).

Same as `tunehouse bench train`; kept here beside the other benchmarks:

    .venv/bin/python bench/train_bench.py ../shared/bench/chat_256.jsonl --limit 64
"""

from __future__ import annotations

import sys

from tunehouse.cli.bench import bench_app

if __name__ == "__main__":
    sys.argv.insert(1, "train")
    bench_app()
