"""Batches of encoded examples: seeded order, length grouping, right padding, packing."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch

from tunehouse.models.template import IGNORE_INDEX, EncodedExample


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Optimizer-step batches of example indices for one epoch, reproducible from (seed, epoch).

    Examples are shuffled, then grouped by length inside windows of 50 batches so that a batch pads
    little, and the batch order is shuffled again so long and short batches alternate randomly.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if batch_size == 1:
        return [[i] for i in order]
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class PackedRow:
    """Where the examples of a one-row pass lie, as `pack_examples(one_row=True)` laid them out.

    The trainer hands it with the pass to an attention that lays the examples out in rows for
    itself (the speed wing's), so attention keeps the examples apart by what the packer says
    rather than by reading it back from a mask.
    """

    segments: tuple[tuple[int, int], ...]
    """Each example's own tokens, `(start, end)` in the row; end to end, in row order."""
    prefix: int
    """Tokens `0..prefix` are a prefix every example shares and sees (`share_prefix`); 0: none."""
    rows: tuple[tuple[int, ...], ...]
    """The examples (indices into `segments`) side by side in each of attention's rows: rows as
    wide as the longest example with the prefix, filled first-fit (`first_fit_rows`), as a padded
    packing would fill them."""

    @classmethod
    def of(cls, lengths: Sequence[int], prefix: int = 0) -> PackedRow:
        """Examples of `lengths` (their tokens after the prefix) end to end after a `prefix`.

        >>> PackedRow.of([5, 3, 2, 1])
        PackedRow(segments=((0, 5), (5, 8), (8, 10), (10, 11)), prefix=0, rows=((0,), (1, 2), (3,)))
        >>> PackedRow.of([3, 1], prefix=2).rows
        ((0,), (1,))
        """
        ends = [prefix + n for n in itertools.accumulate(lengths)]
        segments = tuple(zip([prefix, *ends[:-1]], ends, strict=True))
        widths = [prefix + n for n in lengths]
        return cls(segments, prefix, tuple(tuple(row) for row in first_fit_rows(widths, max(widths))))


class Batch(TypedDict, total=False):
    """One forward pass's tensors (`[rows, length]` each; a shared prefix's mask `[1, 1, L, L]`)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    """Which of the pass's examples each token belongs to: -1 for padding, -2 for a shared prefix."""
    packed_row: PackedRow
    """A one-row pass's example boundaries (`pack_examples(one_row=True)` only)."""


def collate(examples: list[EncodedExample], pad_token_id: int) -> Batch:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def token_budget_micro_batches(indices: list[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split one optimizer step's examples into forward passes of at most `max_tokens` tokens each.

    Longest first, so each pass packs examples of similar length; an example longer than the budget
    gets a pass of its own. The split changes no numbers: the step's loss is normalized once over all
    its trained tokens (see `loss.py`).
    """
    passes: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in sorted(indices, key=lambda i: lengths[i], reverse=True):
        if current and used + lengths[i] > max_tokens:
            passes.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        passes.append(current)
    return passes


def first_fit_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of `lengths` in rows of at most `width`, first-fit by decreasing length."""
    free: list[int] = []
    rows: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        n = lengths[index]
        for r, space in enumerate(free):
            if n <= space:
                rows[r].append(index)
                free[r] -= n
                break
        else:
            rows.append([index])
            free.append(width - n)
    return rows


def shared_prefix_length(examples: Sequence[EncodedExample]) -> int:
    """How many leading tokens all `examples` have in common, none of them nor the token after them
    trained: the tokens a pass can compute once for all of them (`pack_examples(share_prefix=True)`).
    Chat data repeats its system prompt in every example, as OpenAI's guide asks; on the training
    bench that is 22 of an example's ~194 tokens. 0 for fewer than two examples."""
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    common = min(len(e.input_ids) for e in examples) - 1  # every example keeps a token of its own
    for example in examples:
        ids, labels = example.input_ids, example.labels
        common = next((t for t in range(common) if ids[t] != first[t]), common)
        # the token after the prefix is not trained either: the prefix's last hidden state is shared
        common = min(common, next((t - 1 for t, label in enumerate(labels) if label != IGNORE_INDEX), common))
    return max(common, 0)


def _pack_with_shared_prefix(examples: list[EncodedExample], prefix: int) -> Batch:
    """One row: the examples' common `prefix` once, then each example's remaining tokens, at the
    positions they have in the example; a 4D attention mask lets every token see the prefix and the
    earlier tokens of its own example. The prefix's segment id is -2."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids), reverse=True)  # as one_row packs
    ids, labels, positions, segments = [examples[0].input_ids[:prefix]], [[IGNORE_INDEX] * prefix], [], []
    positions.append(torch.arange(prefix))
    segments.append(torch.full((prefix,), -2))
    for index in order:
        example = examples[index]
        ids.append(example.input_ids[prefix:])
        labels.append(example.labels[prefix:])  # the first is unlabelled (`shared_prefix_length`)
        positions.append(torch.arange(prefix, len(example.input_ids)))
        segments.append(torch.full((len(example.input_ids) - prefix,), index))
    segment_ids = torch.cat(segments)
    length = len(segment_ids)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & ((segment_ids[:, None] == segment_ids[None, :]) | (segment_ids[None, :] == -2))
    return {
        "input_ids": torch.tensor([t for part in ids for t in part])[None],
        "labels": torch.tensor([t for part in labels for t in part])[None],
        "position_ids": torch.cat(positions)[None],
        "segment_ids": segment_ids[None],
        "attention_mask": allowed[None, None],
        "packed_row": PackedRow.of([len(examples[i].input_ids) - prefix for i in order], prefix),
    }


def packed_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The model's inputs from a `pack_examples` batch: token and position ids, and the batch's own
    4D attention mask where it has one (a shared prefix's)."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def pack_examples(
    examples: list[EncodedExample], pad_token_id: int, one_row: bool = False, share_prefix: bool = False
) -> Batch:
    """Sequence packing: several examples per row, none attending to another, with no loss change.

    Rows are as wide as the longest example; the others fill them first-fit by decreasing length, so
    the padding that a padded batch spends on short examples is spent on more examples instead.
    `one_row`: all examples end to end in a single row with no padding at all, for an attention that
    lays them out in rows for itself (the speed wing's CPU attention does); an attention over the
    whole row would cost its full square. `packed_row` then says where each example lies and which
    share one of attention's rows (`PackedRow`).
    `segment_ids` says which of `examples` each token belongs to (-1 for padding).
    Position ids restart at 0 for every example (and for a row's padding tail): transformers reads
    those restarts as sequence boundaries and gives attention a block-diagonal causal mask (its
    `find_packed_sequence_indices`, the path `DataCollatorWithFlattening` uses), so tokens see only
    their own example at the positions they would have unpacked. The first token of every example
    is unlabelled, so no example is trained to predict the start of the next one.
    `share_prefix` (with `one_row`): the leading tokens the examples have in common and train on
    none of (`shared_prefix_length`) are computed once, and every example attends to that one copy
    (`_pack_with_shared_prefix`); the batch then carries its own 4D `attention_mask`. Each token
    sees the same keys at the same positions as unshared, so the loss and the gradients are the
    same up to float summation order; the tokens computed are fewer.
    """
    prefix = shared_prefix_length(examples) if (one_row and share_prefix) else 0
    if prefix > 0:
        return _pack_with_shared_prefix(examples, prefix)
    lengths = [len(e.input_ids) for e in examples]
    width = sum(lengths) if one_row else max(lengths)
    rows = first_fit_rows(lengths, width)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            example = examples[index]
            n = len(example.input_ids)
            segment_ids[r, start : start + n] = index
            input_ids[r, start : start + n] = torch.tensor(example.input_ids)
            labels[r, start : start + n] = torch.tensor(example.labels)
            labels[r, start] = IGNORE_INDEX
            position_ids[r, start : start + n] = torch.arange(n)
            start += n
        position_ids[r, start:] = torch.arange(width - start)
    batch: Batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "segment_ids": segment_ids}
    if one_row:
        batch["packed_row"] = PackedRow.of([lengths[i] for i in rows[0]])
    return batch
