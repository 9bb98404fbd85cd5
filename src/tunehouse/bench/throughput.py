"""Training throughput measured on this machine, for the time estimate of `tunehouse data stats`.

Measured rather than guessed: a few optimizer steps of the real trainer (`sft_trainer`, LoRA as jobs
default to) on synthetic examples of the file's typical length. Results are cached per model,
length and thread count in `$TUNEHOUSE_HOME/throughput.json`, so only the first `stats` pays.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tunehouse.config import settings

MEASURED_STEPS = 2
BATCH_EXAMPLES = 4


def _cache_key(model_id: str, length: int) -> str:
    import torch

    return f"{model_id}|{length}|threads={torch.get_num_threads()}|cuda={torch.cuda.is_available()}"


def _bucket(length: int) -> int:
    """Lengths rounded up to a power of two (64..8192), so similar files share one measurement."""
    bucket = 64
    while bucket < min(length, 8192):
        bucket *= 2
    return bucket


def _synthetic_examples(length: int) -> list[dict[str, Any]]:
    words = " ".join(["training"] * max(8, length // 2))
    return [{"messages": [{"role": "user", "content": words}, {"role": "assistant", "content": words}]}] * (
        BATCH_EXAMPLES * (MEASURED_STEPS + 1)
    )


def measure_throughput(model_id: str, length: int) -> float:
    """Tokens per second the trainer processes for examples of about `length` tokens (cached)."""
    length = _bucket(length)
    cache = settings().home / "throughput.json"
    key = _cache_key(model_id, length)
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key in known:
        return float(known[key])
    from tunehouse.models.catalog import base_of, get_model, weights_dir
    from tunehouse.train.config import SFTConfig
    from tunehouse.train.reporting import SilentReporter
    from tunehouse.train.sft import sft_trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            base_model_dir=weights_dir(base_of(get_model(model_id))),
            output_dir=Path(tmp),
            checkpoint_dir=Path(tmp),
            batch_size=BATCH_EXAMPLES,
            max_length=length,
        )
        trainer = sft_trainer(config, SilentReporter())
        trainer.setup(_synthetic_examples(length), None)
        batches = [list(range(i * BATCH_EXAMPLES, (i + 1) * BATCH_EXAMPLES)) for i in range(MEASURED_STEPS + 1)]
        trainer.train_step(batches[0])  # warm-up: allocations and kernel selection
        started = time.perf_counter()
        for batch in batches[1:]:
            trainer.train_step(batch)
        seconds = time.perf_counter() - started
        tokens = sum(len(trainer.train[i].input_ids) for batch in batches[1:] for i in batch)
    rate = tokens / seconds
    known[key] = rate
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=1))
    return rate
