"""Token counts per example, equal to the trainer's `encode_example`, at bulk speed.

`encode_example` renders and tokenizes one example at a time. Here the same segments (context and
reply text of each assistant turn, exactly as `encode_chat_example` cuts them) are rendered with the
learned `FastTemplate` and counted in batches by `PieceCounter`. `TokenCounter.self_check` compares
the result with `encode_example` on the first examples of every file and falls back to the slow,
exact path on any difference, so a template or tokenizer we do not understand costs speed, never
correctness.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunehouse.data.fast_template import FastTemplate, learn_fast_template
from tunehouse.data.piece_count import PieceCounter
from tunehouse.errors import DataValidationError
from tunehouse.models.template import encode_example, normalize_messages

Segment = tuple[str, bool]  # (text, trained)


class TemplateMismatch(ValueError):
    """The chat template cannot render this conversation turn by turn (the trainer would fail too)."""


@dataclass(frozen=True)
class ExampleTokens:
    tokens: int  # before truncation
    trained: int  # trained (assistant) tokens that survive truncation


def chat_segments(tokenizer: Any, template: FastTemplate | None, messages: list[dict[str, Any]]) -> list[Segment]:
    """The texts `encode_chat_example` tokenizes, in order, each marked trained or not."""
    normalized = normalize_messages(messages)
    fast = template is not None and template.supports(normalized)

    def render(upto: list[dict[str, str]], generation: bool) -> str:
        if template is not None and fast:
            return template.render(upto, generation)
        return tokenizer.apply_chat_template(upto, add_generation_prompt=generation, tokenize=False)

    segments: list[Segment] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        try:
            prompt = render(normalized[:index], True)
            full = render(normalized[: index + 1], False)
        except Exception as exc:  # Jinja or transformers refusing the conversation
            raise TemplateMismatch(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise TemplateMismatch("the chat template does not render this conversation turn by turn")
        segments += [(prompt[len(rendered) :], False), (full[len(prompt) :], message.get("weight", 1) != 0)]
        rendered = full
    return segments


def example_segments(tokenizer: Any, template: FastTemplate | None, example: dict[str, Any]) -> list[Segment]:
    """Segments of a chat or completion example; a preference example's chosen conversation."""
    if "messages" in example:
        return chat_segments(tokenizer, template, example["messages"])
    if "input" in example:
        conversation = [*example["input"]["messages"], *example["preferred_output"]]
        return chat_segments(tokenizer, template, conversation)
    return [(example["prompt"], False), (example["completion"], True)]


def truncate(counts: list[int], trained: list[bool], eos: bool, max_length: int | None) -> ExampleTokens:
    """Total tokens, and trained tokens within the first `max_length` (the trainer truncates so)."""
    if eos:
        counts, trained = [*counts, 1], [*trained, True]
    total = sum(counts)
    limit = total if max_length is None else max_length
    kept_trained = 0
    position = 0
    for count, is_trained in zip(counts, trained, strict=True):
        if is_trained:
            kept_trained += max(0, min(count, limit - position))
        position += count
    return ExampleTokens(total, kept_trained)


@dataclass
class TokenTally:
    """Token statistics of many examples, mergeable across chunks in constant memory."""

    max_length: int | None = None
    lengths: Counter[int] = field(default_factory=Counter)  # tokens per example -> examples
    trained_lengths: Counter[int] = field(default_factory=Counter)
    total_tokens: int = 0
    kept_tokens: int = 0  # after truncation: what one epoch costs
    trained_tokens: int = 0  # after truncation
    n_truncated: int = 0

    def add(self, counted: ExampleTokens) -> None:
        self.lengths[counted.tokens] += 1
        self.trained_lengths[counted.trained] += 1
        self.total_tokens += counted.tokens
        if counted.trained:  # the trainer drops examples left with nothing to learn
            self.kept_tokens += counted.tokens if self.max_length is None else min(counted.tokens, self.max_length)
        self.trained_tokens += counted.trained
        self.n_truncated += self.max_length is not None and counted.tokens > self.max_length

    def merge(self, other: TokenTally) -> None:
        self.lengths.update(other.lengths)
        self.trained_lengths.update(other.trained_lengths)
        self.total_tokens += other.total_tokens
        self.kept_tokens += other.kept_tokens
        self.trained_tokens += other.trained_tokens
        self.n_truncated += other.n_truncated


class TokenCounter:
    """Counts examples with a model's tokenizer and chat template, fast where that stays exact."""

    def __init__(self, tokenizer: Any, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = learn_fast_template(tokenizer)
        self.pieces = PieceCounter(tokenizer.backend_tokenizer)
        self.eos = tokenizer.eos_token_id is not None

    def count(self, examples: list[dict[str, Any]]) -> list[ExampleTokens | TemplateMismatch]:
        """Per example its tokens, or the TemplateMismatch that `encode_example` would hit."""
        plans: list[list[Segment] | TemplateMismatch] = []
        texts: list[str] = []
        for example in examples:
            try:
                segments = example_segments(self.tokenizer, self.template, example)
            except TemplateMismatch as exc:
                plans.append(exc)
                continue
            plans.append(segments)
            texts += [text for text, _ in segments]
        counts = iter(self.pieces.count_many(texts))
        results: list[ExampleTokens | TemplateMismatch] = []
        for example, plan in zip(examples, plans, strict=True):
            if isinstance(plan, TemplateMismatch):
                results.append(plan)
                continue
            segment_counts = [next(counts) for _ in plan]
            eos = self.eos and "prompt" in example and "messages" not in example
            results.append(truncate(segment_counts, [t for _, t in plan], eos, self.max_length))
        return results

    def self_check(self, examples: list[dict[str, Any]]) -> bool:
        """Compare with `encode_example` on these examples; on any difference switch to the slow path.

        Returns True when the fast path agreed (or there was nothing to compare).
        """
        supervised = [e for e in examples if "messages" in e or "prompt" in e]
        fast = self.count(supervised)
        for example, got in zip(supervised, fast, strict=True):
            try:
                encoded = encode_example(self.tokenizer, example, self.max_length)
            except (DataValidationError, ValueError):
                continue
            full = encode_example(self.tokenizer, example)
            if isinstance(got, TemplateMismatch) or (got.tokens, got.trained) != (
                len(full.input_ids),
                encoded.trained_tokens,
            ):
                self.template = None
                self.pieces.use_pieces = False
                return False
        return True
