"""`compute_stats`: distribution, truncation, trained tokens, auto epochs and time estimate."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.data.samples import chat
from tunehouse.data.stats import compute_stats, histogram, quantile
from tunehouse.models.template import encode_example
from tunehouse.train.hyperparams import auto_n_epochs


def test_quantiles_and_histogram_from_counts() -> None:
    counts = Counter({10: 50, 20: 45, 100: 5})
    assert (quantile(counts, 0.5), quantile(counts, 0.95), quantile(counts, 1.0)) == (10, 20, 100)
    assert quantile(Counter(), 0.5) == 0
    bins = histogram(counts, bins=3)
    assert bins == [(10, 40, 95), (41, 71, 0), (72, 100, 5)]
    assert sum(n for _, _, n in bins) == 100


def test_stats_match_the_trainer_encoding(write_jsonl, tokenizer: Any) -> None:
    examples = [chat(f"Question {i}: " + "why " * i, "Because " * (i + 1), system="Be kind.") for i in range(30)]
    path = write_jsonl(examples)
    stats = compute_stats(
        path, "test-model", tokenizer=tokenizer, max_length=64, epochs_for=auto_n_epochs, throughput=1000.0
    )
    lengths = [len(encode_example(tokenizer, e).input_ids) for e in examples]
    trained = [encode_example(tokenizer, e, 64).trained_tokens for e in examples]
    assert stats.validation.ok and stats.n_examples == 30
    assert (stats.min, stats.max) == (min(lengths), max(lengths))
    assert stats.median == sorted(lengths)[14]
    assert stats.n_truncated == sum(n > 64 for n in lengths)
    assert stats.total_tokens == sum(lengths)
    assert stats.assistant_tokens == sum(trained)
    assert stats.epoch_tokens == sum(min(n, 64) for n, t in zip(lengths, trained, strict=True) if t)
    assert stats.n_epochs == 3  # auto: 30 examples x 3 epochs >= 100
    assert stats.trained_tokens == 3 * stats.epoch_tokens
    assert stats.estimated_seconds == stats.trained_tokens / 1000.0
    assert stats.counting == "fast"
    over = [p for p in stats.validation.problems if p.category == "over_context_length"]
    assert len(over) == stats.n_truncated


def test_small_files_get_more_epochs(write_jsonl, tokenizer: Any) -> None:
    path = write_jsonl([chat(f"q{i}", f"a{i}") for i in range(10)])
    stats = compute_stats(path, "test-model", tokenizer=tokenizer, max_length=2048, epochs_for=auto_n_epochs)
    assert stats.n_epochs == 10  # 3 x 10 < 100, so 100 // 10
    assert stats.estimated_seconds is None


def test_a_conversation_starting_with_the_assistant_is_a_template_error(write_jsonl, tokenizer: Any) -> None:
    rows = [*[chat(f"q{i}", f"a{i}") for i in range(10)], {"messages": [{"role": "assistant", "content": "hi"}]}]
    stats = compute_stats(
        write_jsonl(rows), "test-model", tokenizer=tokenizer, max_length=2048, epochs_for=auto_n_epochs
    )
    assert [(p.line, p.category) for p in stats.validation.errors] == [(11, "example_starts_with_assistant")]
    assert stats.n_examples == 10


def test_completion_files_count_the_eos_token(write_jsonl, tokenizer: Any) -> None:
    rows = [{"prompt": f"Say {i} ->", "completion": f" {i} times\n"} for i in range(12)]
    stats = compute_stats(
        write_jsonl(rows), "test-model", tokenizer=tokenizer, max_length=2048, epochs_for=auto_n_epochs
    )
    assert stats.total_tokens == sum(len(encode_example(tokenizer, r).input_ids) for r in rows)
    assert stats.assistant_tokens == sum(encode_example(tokenizer, r).trained_tokens for r in rows)
