"""Fused SwiGLU MLPs (and the norms fused with them) against transformers' Llama modules."""

from __future__ import annotations

import copy

import pytest
import torch

from tunehouse.train.speed import kernels
from tunehouse.train.speed.casts import WeightCasts
from tunehouse.train.speed.fused_layers import fuse_norms_and_mlps

BF16 = torch.bfloat16


def test_fused_swiglu_is_bitwise_llamas_in_bf16() -> None:
    from transformers.models.llama.modeling_llama import LlamaConfig, LlamaMLP

    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=96, hidden_act="silu")).to(torch.bfloat16)
    fused = copy.deepcopy(mlp)
    assert fuse_norms_and_mlps(fused, WeightCasts()) == 1
    x = torch.randn(7, 32, dtype=torch.bfloat16)
    results = []
    for module in (mlp, fused):
        inputs = x.clone().requires_grad_()
        module(inputs).square().sum().backward()
        results.append([inputs.grad] + [p.grad for p in module.parameters()])
    assert all(torch.equal(got, want) for got, want in zip(results[1], results[0], strict=True))


@pytest.mark.parametrize("module", ["norm", "mlp"])
def test_bf16_layers_on_the_kernels_match_their_eager_path(
    built: None, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused RMSNorm and SwiGLU Functions in bf16: with the libraries and without them."""
    from transformers.models.llama.modeling_llama import LlamaConfig, LlamaMLP, LlamaRMSNorm

    torch.manual_seed(0)
    if module == "norm":
        layer = LlamaRMSNorm(96, eps=1e-5).to(BF16)
        torch.nn.init.normal_(layer.weight, 1.0, 0.1)
        layer.weight.requires_grad_(False)  # frozen, as under LoRA: only the input's gradient
    else:
        layer = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=96, hidden_act="silu")).to(BF16)
    assert fuse_norms_and_mlps(layer, WeightCasts()) == 1
    x = (torch.randn(2, 57, 96 if module == "norm" else 32) * 3).to(BF16)

    def run() -> list[torch.Tensor]:
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        out.float().square().sum().backward()
        return [out.detach(), inputs.grad] + [p.grad for p in layer.parameters() if p.requires_grad]

    compiled = run()
    layer.zero_grad(set_to_none=True)
    monkeypatch.setattr(kernels, "kernel", lambda name: None)  # every library missing
    eager = run()
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0.008, atol=1e-5)
    if module == "mlp":
        assert all(torch.equal(got, want) for got, want in zip(compiled, eager, strict=True))
