"""The compute dtype of the fused layers, and the adapter weights' cast copies they keep: kept until
the weights change, by an in-place update or by the optimizer's word (`weights_changed`)."""

from __future__ import annotations

import copy

import torch

from tunehouse.train.speed.casts import WeightCasts, compute_dtype


def test_compute_dtype_is_autocasts_where_it_is_on() -> None:
    x = torch.randn(2, 3)
    assert compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(x) == torch.bfloat16


def test_a_cast_copy_is_kept_until_its_weights_change() -> None:
    casts = WeightCasts()
    a, b = torch.randn(4, 8), torch.randn(2, 8)
    assert casts(torch.float32, a) is a  # already in the dtype: no copy
    both = casts(torch.bfloat16, a, b)
    assert torch.equal(both, torch.cat([a, b]).bfloat16())
    assert casts(torch.bfloat16, a, b) is both  # kept from one call to the next
    a.add_(1.0)  # an in-place update moves the version counter
    moved = casts(torch.bfloat16, a, b)
    assert moved is not both and torch.equal(moved, torch.cat([a, b]).bfloat16())
    with torch.no_grad():
        a.data.add_(1.0)  # as a fused optimizer updates it: the version counter stays
    assert casts(torch.bfloat16, a, b) is moved  # stale until the optimizer says so
    casts.weights_changed()
    assert torch.equal(casts(torch.bfloat16, a, b), torch.cat([a, b]).bfloat16())


def test_each_trainer_keeps_its_own_casts_and_a_model_copy_shares_them() -> None:
    first, second = WeightCasts(), WeightCasts()
    weight = torch.randn(4, 8)
    kept = first(torch.bfloat16, weight)
    second.weights_changed()  # another trainer's optimizer step
    assert first(torch.bfloat16, weight) is kept
    assert copy.deepcopy(first) is first  # DPO's frozen reference model, deep-copied with its layers
