"""Batching and packing: seeded order, passes by token budget, packed rows with the same loss and
gradients as padded ones, a shared prefix computed once, and the boundaries the packer hands on."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tests.train.conftest import assert_same_gradients, gradients, varied_chat_rows
from tunehouse.models.template import EncodedExample
from tunehouse.train.batching import PackedRow, pack_examples, shared_prefix_length, token_budget_micro_batches
from tunehouse.train.recipe import Trainer

BF16 = torch.bfloat16


def test_packed_rows_restart_positions_and_never_train_across_examples() -> None:
    examples = [
        EncodedExample(input_ids=[1, 2, 3, 4, 5, 6], labels=[-100, -100, 3, 4, 5, 6]),
        EncodedExample(input_ids=[7, 8, 9], labels=[7, 8, 9]),
        EncodedExample(input_ids=[10, 11], labels=[-100, 11]),
    ]
    batch = pack_examples(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    # Each example's first token is unlabelled: nothing learns to predict the next example's start.
    assert batch["labels"].tolist() == [[-100, -100, 3, 4, 5, 6], [-100, 8, 9, -100, 11, -100]]


def test_one_row_packing_lays_examples_end_to_end_without_padding() -> None:
    examples = [
        EncodedExample(input_ids=[1, 2, 3], labels=[1, 2, 3]),
        EncodedExample(input_ids=[4, 5, 6, 7, 8], labels=[-100, -100, 6, 7, 8]),
        EncodedExample(input_ids=[9, 10], labels=[9, 10]),
    ]
    batch = pack_examples(examples, pad_token_id=0, one_row=True)
    assert batch["input_ids"].tolist() == [[4, 5, 6, 7, 8, 1, 2, 3, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 8, -100, 2, 3, -100, 10]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0, 2, 2]]


def test_packing_gives_the_unpacked_loss_and_gradients(make_trainer: Callable[..., Trainer]) -> None:
    rows = varied_chat_rows(12)
    rows[0]["messages"][0]["content"] += " A long preamble." * 40  # so short examples share rows
    packed = make_trainer(rows, packing=True)
    padded = make_trainer(rows, packing=False)
    indices = list(range(8))
    examples = [packed.train[i] for i in indices]
    assert len(pack_examples(examples, packed.pad_id)["input_ids"]) < len(examples)  # it did pack
    packed_sums = packed.method.pass_sums(packed, examples)
    padded_sums = padded.method.pass_sums(padded, examples)
    assert packed_sums.tokens == padded_sums.tokens == sum(e.trained_tokens for e in examples)
    torch.testing.assert_close(packed_sums.loss_sum, padded_sums.loss_sum, rtol=1e-5, atol=1e-4)
    assert_same_gradients(gradients(packed, indices), gradients(padded, indices))


def test_the_shared_prefix_stops_before_the_first_trained_token_and_where_examples_differ() -> None:
    def example(ids: list[int], first_trained: int) -> EncodedExample:
        return EncodedExample(input_ids=ids, labels=[-100] * first_trained + ids[first_trained:])

    system = [1, 2, 3, 4, 5]
    assert shared_prefix_length([example(system + [6, 7, 8], 6), example(system + [6, 9], 7)]) == 5
    # the prefix's last hidden state is shared, so the token after it may not be trained
    assert shared_prefix_length([example(system + [6, 7, 8], 6), example(system + [6, 9, 9], 5)]) == 4
    assert shared_prefix_length([example(system + [6, 7], 7), example(system, 4)]) == 3  # each keeps a token
    assert shared_prefix_length([example([9] + system, 6), example(system + [6], 5)]) == 0
    assert shared_prefix_length([example(system + [6, 7, 8], 6)]) == 0  # one example: nothing to share


def test_one_row_packing_computes_the_shared_prefix_once() -> None:
    examples = [
        EncodedExample(input_ids=[1, 2, 3, 4], labels=[-100, -100, -100, 4]),
        EncodedExample(input_ids=[1, 2, 5, 6, 7], labels=[-100, -100, -100, 6, 7]),
    ]
    batch = pack_examples(examples, pad_token_id=0, one_row=True, share_prefix=True)
    assert batch["input_ids"].tolist() == [[1, 2, 5, 6, 7, 3, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 6, 7, -100, 4]]
    assert batch["segment_ids"].tolist() == [[-2, -2, 1, 1, 1, 0, 0]]
    # every token sees the prefix and the earlier tokens of its own example
    want = [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1, 1]]  # fmt: skip
    assert batch["attention_mask"].int().tolist() == [[want]]
    unshared = pack_examples(examples, pad_token_id=0, one_row=True)
    assert "attention_mask" not in unshared and unshared["input_ids"].shape == (1, 9)


def test_sharing_the_prefix_gives_the_unshared_loss_and_gradients(make_trainer: Callable[..., Trainer]) -> None:
    rows = varied_chat_rows(12)
    for row in rows:
        row["messages"][0]["content"] = "You are a careful assistant who answers in one sentence, always."
    shared, unshared = make_trainer(rows), make_trainer(rows, share_prefix=False)
    assert shared.share_prefix and not unshared.share_prefix
    indices = list(range(4))
    examples = [shared.train[i] for i in indices]
    prefix = shared_prefix_length(examples)
    assert prefix > 15
    batch = pack_examples(examples, shared.pad_id, one_row=True, share_prefix=True)
    assert batch["input_ids"].shape[1] == sum(shared.lengths[i] for i in indices) - 3 * prefix
    shared_sums, unshared_sums = (
        shared.method.pass_sums(shared, examples),
        unshared.method.pass_sums(unshared, examples),
    )
    assert shared_sums.tokens == unshared_sums.tokens == sum(e.trained_tokens for e in examples)
    torch.testing.assert_close(shared_sums.loss_sum, unshared_sums.loss_sum, rtol=1e-5, atol=1e-4)
    assert_same_gradients(gradients(shared, indices), gradients(unshared, indices))
    assert shared.computed_tokens < unshared.computed_tokens == sum(unshared.lengths[i] for i in indices)


def test_gradient_accumulation_one_by_eight_equals_batch_eight(make_trainer: Callable[..., Trainer]) -> None:
    whole = make_trainer(pass_tokens=100_000)
    one_at_a_time = make_trainer(pass_tokens=1)  # every example its own forward pass
    indices = list(range(8))
    assert len(token_budget_micro_batches(indices, one_at_a_time.lengths, 1)) == 8
    assert len(token_budget_micro_batches(indices, whole.lengths, 100_000)) == 1
    assert_same_gradients(gradients(whole, indices), gradients(one_at_a_time, indices))


def test_the_packer_says_where_each_example_of_a_one_row_pass_lies() -> None:
    """The boundaries it hands to attention with the pass (`PackedRow`): each example's span in the
    row order, a shared prefix, and which examples share each of attention's rows (first-fit by
    decreasing length in rows as wide as the longest, as a padded packing fills its rows)."""
    examples = [EncodedExample(input_ids=[1] * n, labels=[1] * n) for n in (3, 5, 1, 2)]
    batch = pack_examples(examples, pad_token_id=0, one_row=True)
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0, 3, 3, 2]]
    assert batch["packed_row"] == PackedRow(
        segments=((0, 5), (5, 8), (8, 10), (10, 11)), prefix=0, rows=((0,), (1, 2), (3,))
    )
    padded = pack_examples(examples, pad_token_id=0)
    assert "packed_row" not in padded
    assert [sorted(set(row) - {-1}) for row in padded["segment_ids"].tolist()] == [[1], [0, 3], [2]]  # the same rows
    shared = [
        EncodedExample(input_ids=[1, 2, 3, 4], labels=[-100, -100, -100, 4]),
        EncodedExample(input_ids=[1, 2, 5, 6, 7], labels=[-100, -100, -100, 6, 7]),
    ]
    batch = pack_examples(shared, pad_token_id=0, one_row=True, share_prefix=True)
    assert batch["packed_row"] == PackedRow(segments=((2, 5), (5, 7)), prefix=2, rows=((0,), (1,)))
