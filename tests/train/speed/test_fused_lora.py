"""Fused LoRA layers against PEFT's own forward: siblings sharing one input, weight copies that follow
the optimizer, dropout left to PEFT."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from tests.train.conftest import assert_same_gradients, gradients
from tunehouse.hardware import bf16_supported
from tunehouse.train.recipe import Trainer
from tunehouse.train.speed.fused_layers import fuse_norms_and_mlps
from tunehouse.train.speed.fused_lora import fuse_lora_forward

BF16 = torch.bfloat16


def test_fused_forwards_give_the_models_own_gradients(make_trainer: Callable[..., Trainer]) -> None:
    """LoRA addmm, RMSNorm and SwiGLU Functions against PEFT's and transformers' own forwards."""
    trainer = make_trainer()
    with torch.no_grad():  # B starts at zero, which would hide a wrong scaling
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    layers = trainer.model.config.num_hidden_layers
    assert fuse_lora_forward(trainer.model, trainer.speed.casts) == 0  # the trainer fused every adapted layer already
    assert fuse_norms_and_mlps(trainer.model, trainer.speed.casts) == 0
    fresh = make_trainer()
    for module in fresh.model.modules():
        module.__dict__.pop("forward", None)
    assert fuse_lora_forward(fresh.model, fresh.speed.casts) == 7 * layers
    assert (
        fuse_norms_and_mlps(fresh.model, fresh.speed.casts) == 3 * layers + 1
    )  # two norms and an MLP per layer, final norm
    fused = gradients(trainer, [0, 1, 2, 3])
    for module in trainer.model.modules():
        module.__dict__.pop("forward", None)  # back to PEFT's and transformers' own forwards
    assert_same_gradients(fused, gradients(trainer, [0, 1, 2, 3]))


def test_adapted_siblings_share_one_pass_over_their_input_and_never_a_stale_result(
    make_trainer: Callable[..., Trainer],
) -> None:
    """Q, K and V run together when called on one input; called on another input, K computes its own."""
    trainer = make_trainer()
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    attention = trainer.model.get_base_model().model.layers[0].self_attn
    x, other = torch.randn(2, 5, trainer.model.config.hidden_size), torch.randn(2, 5, trainer.model.config.hidden_size)
    together = [attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)]
    attention.q_proj(x)
    group = attention.q_proj.forward.args[2]
    assert id(attention.k_proj) in group.ahead and id(attention.v_proj) in group.ahead  # computed with Q
    k_on_other = attention.k_proj(other)  # not the K computed ahead for x
    alone = {}
    for module in (attention.q_proj, attention.k_proj, attention.v_proj):
        module.__dict__.pop("forward")  # PEFT's own forward
        alone[module] = (module(x), module(other))
    for got, module in zip(together, (attention.q_proj, attention.k_proj, attention.v_proj), strict=True):
        torch.testing.assert_close(got, alone[module][0])
    torch.testing.assert_close(k_on_other, alone[attention.k_proj][1])


@pytest.mark.parametrize("bf16", [False, True])
def test_the_adapter_copies_the_fused_layers_keep_follow_every_optimizer_step(
    bf16: bool, make_trainer: Callable[..., Trainer]
) -> None:
    """The fused layers keep their adapters' A matrices concatenated (and cast to bf16 under bf16
    autocast) between passes; after each optimizer step they compute with the new weights: as PEFT's
    forward does in fp32, and bit for bit as with every kept copy forgotten under bf16."""
    if bf16 and not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no fast bf16")
    trainer = make_trainer(bf16=bf16)
    with torch.no_grad():  # B starts at zero, which leaves A's first gradient zero
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    attention = trainer.model.get_base_model().model.layers[0].self_attn
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    x = torch.randn(2, 5, trainer.model.config.hidden_size)
    for _ in range(2):
        before = [p.lora_A["default"].weight.clone() for p in projections]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fused = [p(x) for p in projections]  # computes Q, K and V together, keeping the copies
            if bf16:
                trainer.speed.weights_changed()  # what the optimizer's post-step hook calls
                want = [p(x) for p in projections]
                assert all(torch.equal(a, b) for a, b in zip(fused, want, strict=True))
            else:
                for got, peft in zip(fused, [type(p).forward(p, x) for p in projections], strict=True):
                    torch.testing.assert_close(got, peft)
        trainer.train_step([0, 1, 2, 3])
        assert not torch.equal(before[0], projections[0].lora_A["default"].weight), "the step changed A"


def test_fused_lora_forward_leaves_dropout_to_peft(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(lora_dropout=0.5)
    from peft.tuners.lora import Linear as LoraLinear

    layer = next(m for m in trainer.model.modules() if isinstance(m, LoraLinear))
    assert isinstance(layer.__dict__.get("forward"), functools.partial)  # switched to the fused forward
    layer.train()
    with torch.no_grad():
        for parameter in layer.lora_B.parameters():
            parameter.normal_(0, 0.5)
    x = torch.randn(3, layer.in_features, device=trainer.device)
    torch.manual_seed(1)
    fused = layer(x)
    torch.manual_seed(1)
    assert torch.equal(fused, type(layer).forward(layer, x))
