"""The masked, summed next-token loss: chunked or not, the same numbers; untrained turns add nothing."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tests.train.conftest import assert_same_gradients, gradients
from tunehouse.models.template import IGNORE_INDEX
from tunehouse.train.loss import ChunkBuffers, chunked_lm_loss_sum, masked_lm_loss_sum
from tunehouse.train.recipe import Trainer

BF16 = torch.bfloat16


def test_chunked_cross_entropy_equals_plain_cross_entropy() -> None:
    """Over several chunks, and over passes that share their chunk buffers (a trainer's): each pass
    gets the plain numbers, whatever the pass before left in the buffers."""
    torch.manual_seed(0)
    buffers = ChunkBuffers()
    for length in (11, 3, 11):  # the second pass has fewer trained positions than one chunk
        hidden = torch.randn(3, length, 16, requires_grad=True)
        weight = torch.randn(50, 16, requires_grad=True)
        labels = torch.randint(0, 50, (3, length))
        labels[0, :4] = IGNORE_INDEX
        labels[2, 7:] = IGNORE_INDEX
        plain = masked_lm_loss_sum(hidden @ weight.t(), labels)
        plain_grads = torch.autograd.grad(plain.loss_sum, [hidden, weight])
        chunked = chunked_lm_loss_sum(hidden, labels, weight, chunk_size=5, buffers=buffers)  # several chunks
        chunked_grads = torch.autograd.grad(chunked.loss_sum, [hidden, weight])
        torch.testing.assert_close(chunked.loss_sum, plain.loss_sum)
        assert (chunked.correct, chunked.tokens) == (plain.correct, plain.tokens)
        for got, want in zip(chunked_grads, plain_grads, strict=True):
            torch.testing.assert_close(got, want)
    first = buffers.take(5, weight)[0].data_ptr()
    assert buffers.take(2, weight)[0].data_ptr() == first  # kept, not allocated again


def test_chunked_loss_in_the_trainer_matches_full_logits(make_trainer: Callable[..., Trainer]) -> None:
    chunked = make_trainer(chunked_loss=True)
    full = make_trainer(chunked_loss=False)
    assert chunked.decoder is not None and full.decoder is None
    assert_same_gradients(gradients(chunked, [0, 1, 2, 3]), gradients(full, [0, 1, 2, 3]))


def test_weight_zero_turns_contribute_no_loss(make_trainer: Callable[..., Trainer]) -> None:
    messages = [
        {"role": "user", "content": "Say a colour."},
        {"role": "assistant", "content": "Purple, obviously, the best of all colours.", "weight": 0},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green."},
    ]
    trainer = make_trainer([{"messages": messages}] * 2)
    with_weight = [dict(m, weight=1) if m["role"] == "assistant" else m for m in messages]
    [both] = trainer.encode([{"messages": with_weight}])
    [second_only] = trainer.encode([{"messages": messages}])
    assert both.input_ids == second_only.input_ids
    assert 0 < second_only.trained_tokens < both.trained_tokens
    first_turn = [i for i, (a, b) in enumerate(zip(both.labels, second_only.labels, strict=True)) if a != b]
    assert all(second_only.labels[i] == IGNORE_INDEX for i in first_turn)
    # The loss is exactly the cross-entropy of the second turn's tokens: the first adds nothing.
    sums = trainer.method.pass_sums(trainer, [second_only])
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([second_only.input_ids], device=trainer.device)).logits[0, :-1]
    targets = torch.tensor(second_only.labels[1:], device=trainer.device)
    keep = targets != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    torch.testing.assert_close(sums.loss_sum.detach(), expected, rtol=1e-5, atol=1e-5)
    assert sums.tokens == second_only.trained_tokens
