"""bf16 training: a bf16 frozen base under fp32 master adapters, the fp32 step's numbers to bf16 precision."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tunehouse.train.recipe import Trainer
from tunehouse.train.speed.fused_lora import keep_adapter_inputs_as_is

BF16 = torch.bfloat16


def test_bf16_run_stores_the_frozen_base_in_bf16_and_trains_fp32_adapters(
    make_trainer: Callable[..., Trainer],
) -> None:
    fp32 = make_trainer(bf16=False)
    bf16 = make_trainer(bf16=True)
    frozen = [p for p in bf16.model.parameters() if not p.requires_grad]
    trainable = [p for p in bf16.model.parameters() if p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # fp32 master weights
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())
    # No adapted layer copies its input to fp32 and back (autocast feeds it bf16 as it is).
    assert keep_adapter_inputs_as_is(bf16.model) == 2 * 7
    # The same step's loss and adapter gradients as fp32 training, to bf16 precision.
    indices = list(range(8))
    want_loss = fp32.accumulate_gradients(indices)["train_loss"]
    got_loss = bf16.accumulate_gradients(indices)["train_loss"]
    want, got = ({n: p.grad for n, p in t.model.named_parameters() if p.requires_grad} for t in (fp32, bf16))
    assert got_loss == pytest.approx(want_loss, rel=2e-2)
    for name in want:
        if not want[name].any():  # lora_A at the first step: B starts at zero
            assert not got[name].any(), name
            continue
        cosine = F.cosine_similarity(got[name].flatten(), want[name].flatten(), dim=0)
        assert cosine > 0.98, name
