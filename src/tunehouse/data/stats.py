"""`tunehouse data stats`: what training on a file will cost, in the base model's own tokens.

Counts come from the model's tokenizer and chat template, cut exactly as the trainer cuts them
(`token_count`), in the same streaming pass that validates the file. From them: the length
distribution, the examples the trainer would truncate, the assistant tokens it would train on,
the `auto` epochs and the tokens they imply, and a time estimate from a measured throughput.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunehouse.config import DEFAULT_BASE_MODEL
from tunehouse.data.reader import existing_file, iter_examples
from tunehouse.data.report import ValidationReport
from tunehouse.data.scan import Progress, default_jobs
from tunehouse.data.token_count import TokenCounter, TokenTally
from tunehouse.data.validate import validate_scan

HISTOGRAM_BINS = 10
SELF_CHECK_EXAMPLES = 32


def quantile(counts: Counter[int], q: float) -> int:
    """The q-quantile (nearest rank) of values given as value -> occurrences."""
    total = sum(counts.values())
    if not total:
        return 0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)


def histogram(counts: Counter[int], bins: int = HISTOGRAM_BINS) -> list[tuple[int, int, int]]:
    """(low, high, examples) for equal-width bins from the shortest to the longest example."""
    if not counts:
        return []
    low, high = min(counts), max(counts)
    width = max(1, -(-(high - low + 1) // bins))
    edges = list(range(low, high + 1, width))
    tally = [0] * len(edges)
    for value, n in counts.items():
        tally[(value - low) // width] += n
    return [(edge, min(edge + width - 1, high), n) for edge, n in zip(edges, tally, strict=True)]


@dataclass
class TokenStats:
    path: str
    model: str
    max_length: int
    validation: ValidationReport
    n_examples: int  # examples counted (valid ones)
    min: int
    median: int
    p95: int
    max: int
    histogram: list[tuple[int, int, int]]
    n_truncated: int  # examples longer than max_length
    n_without_trained_tokens: int  # dropped by the trainer: nothing left to learn after truncation
    total_tokens: int  # before truncation
    epoch_tokens: int  # after truncation: tokens one epoch processes
    assistant_tokens: int  # trained (loss) tokens per epoch, after truncation
    n_epochs: int  # what `auto` resolves to
    trained_tokens: int  # n_epochs x epoch_tokens: what the job reports as trained_tokens
    counting: str  # how counts were made: "fast" (verified against encode_example) or "exact"
    seconds: float
    bytes: int
    tokens_per_second: float | None = None
    estimated_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in self.__dict__.items() if k != "validation"}
        values["histogram"] = [{"low": a, "high": b, "examples": n} for a, b, n in self.histogram]
        values["validation"] = self.validation.to_dict()
        return values


def load_counter(model: str, tokenizer: Any | None, max_length: int) -> TokenCounter:
    if tokenizer is None:
        from tunehouse.models.catalog import load_tokenizer

        tokenizer = load_tokenizer(model)
    return TokenCounter(tokenizer, max_length)


def _self_check(counter: TokenCounter, path: Path) -> bool:
    sample = []
    try:
        for _, example in iter_examples(path):
            sample.append(example)
            if len(sample) >= SELF_CHECK_EXAMPLES:
                break
    except Exception:  # an invalid line early on: the scan reports it; check what we have
        pass
    return counter.self_check(sample)


def compute_stats(
    path: str | Path,
    model: str = DEFAULT_BASE_MODEL,
    *,
    max_length: int,
    epochs_for: Callable[[int], int],
    format: str | None = None,
    tokenizer: Any | None = None,
    jobs: int | None = None,
    throughput: float | None = None,
    measure_throughput: Callable[[str, int], float] | None = None,
    progress: Progress | None = None,
) -> TokenStats:
    """Validate and count a file in one pass, as the trainer would cut it at `max_length`.

    The trainer's rules come from the caller, which sits above both parts: `epochs_for` gives the
    `auto` epochs for a number of examples, and `measure_throughput(model, length)` the tokens/s
    for the time estimate (not called when `throughput` is given, or when it is None).
    """
    path = existing_file(path)
    counter = load_counter(model, tokenizer, max_length)
    started = time.perf_counter()
    agreed = _self_check(counter, path)
    report, scanned = validate_scan(path, format, 1, counter, jobs or default_jobs(), progress)
    seconds = time.perf_counter() - started
    tally = scanned.tally if scanned and scanned.tally else TokenTally(max_length)
    n = sum(tally.lengths.values())
    epochs = epochs_for(n)
    if throughput is None and measure_throughput is not None and n:
        throughput = measure_throughput(model, min(quantile(tally.lengths, 0.5), max_length))
    return TokenStats(
        path=str(path),
        model=model,
        max_length=max_length,
        validation=report,
        n_examples=n,
        min=min(tally.lengths, default=0),
        median=quantile(tally.lengths, 0.5),
        p95=quantile(tally.lengths, 0.95),
        max=max(tally.lengths, default=0),
        histogram=histogram(tally.lengths),
        n_truncated=tally.n_truncated,
        n_without_trained_tokens=tally.trained_lengths.get(0, 0),
        total_tokens=tally.total_tokens,
        epoch_tokens=tally.kept_tokens,
        assistant_tokens=tally.trained_tokens,
        n_epochs=epochs,
        trained_tokens=epochs * tally.kept_tokens,
        counting="fast" if agreed and counter.pieces.use_pieces and counter.template else "exact",
        seconds=seconds,
        bytes=path.stat().st_size,
        tokens_per_second=throughput,
        estimated_seconds=epochs * tally.kept_tokens / throughput if throughput else None,
    )
