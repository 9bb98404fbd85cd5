"""The fused RMSNorm against transformers' own, and the norm → LoRA protocol."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from tunehouse.train.recipe import Trainer
from tunehouse.train.speed.casts import WeightCasts
from tunehouse.train.speed.fused_layers import fuse_norms_and_mlps

BF16 = torch.bfloat16


def test_fused_rms_norm_gives_llamas_outputs_and_gradients() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(32, eps=1e-5)
    torch.nn.init.normal_(norm.weight, 1.0, 0.1)
    fused = copy.deepcopy(norm)
    assert fuse_norms_and_mlps(fused, WeightCasts()) == 1
    x = torch.randn(3, 5, 32) * 4
    upstream = torch.randn(3, 5, 32)
    results = []
    for module in (norm, fused):
        inputs = x.clone().requires_grad_()
        out = module(inputs)
        (out * upstream).sum().backward()
        results.append((out, inputs.grad, module.weight.grad))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want)


def test_adapted_layers_recompute_the_rms_norm_output_they_read_instead_of_keeping_it(
    make_trainer: Callable[..., Trainer],
) -> None:
    """Q, K and V read the input norm's output: backward recomputes it from what the norm keeps,
    and every gradient is PEFT's."""
    trainer = make_trainer()
    layer = trainer.model.get_base_model().model.layers[1]
    projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
    x = torch.randn(2, 5, trainer.model.config.hidden_size)
    upstream = [torch.randn(2, 5, p.out_features) for p in projections]
    saved: list[int] = []

    def run() -> list[torch.Tensor]:
        trainer.model.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.data_ptr()) or t, lambda t: t):
            normed = layer.input_layernorm(inputs)
            outs = [p(normed) for p in projections]
        sum((o * u).sum() for o, u in zip(outs, upstream, strict=True)).backward()
        lora = [p.lora_A["default"].weight.grad for p in projections] + [
            p.lora_B["default"].weight.grad for p in projections
        ]
        return [inputs.grad, *lora, normed.detach()]

    fused = run()
    assert fused[-1].data_ptr() not in saved  # the norm's output is not kept for backward
    for module in projections:
        module.__dict__.pop("forward")  # PEFT's own forward
    for got, want in zip(fused, run(), strict=True):
        torch.testing.assert_close(got, want)


def test_a_norms_output_says_how_it_was_computed_and_no_other_tensor_does() -> None:
    """The norm's end of the norm → LoRA protocol: its output carries a `NormedInput` that
    recomputes it bit for bit; its input, a copy or a later norm's output say nothing of it."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from tunehouse.train.speed.rms_norm import normed_input_of

    torch.manual_seed(0)
    norm = LlamaRMSNorm(32, eps=1e-5)
    assert fuse_norms_and_mlps(norm, WeightCasts()) == 1
    x = torch.randn(3, 5, 32)
    first, second = norm(x), norm(x * 2)
    recipe = normed_input_of(first)
    assert recipe is not None and recipe.x is x
    assert torch.equal(recipe.recompute(), first)
    assert normed_input_of(second) is not recipe  # each output its own, whatever ran since
    assert normed_input_of(x) is None and normed_input_of(first.clone()) is None
