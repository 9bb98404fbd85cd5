"""A Llama attention layer's rotary embedding and attention over a packed pass, in one Function:
transformers' numbers, on the compiled kernels and off them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.train.conftest import shared_prefix_mask
from tunehouse.train.batching import PackedRow
from tunehouse.train.recipe import Trainer
from tunehouse.train.speed import attention, kernels, packed_attention
from tunehouse.train.speed.attention import (
    MIN_SPLIT_LENGTH,
    PASS_KWARG,
    PackedPass,
    use_matmul_attention,
)

BF16 = torch.bfloat16


@pytest.mark.parametrize("rows", ["packed", "long", "shared_prefix"])
def test_packed_attention_layer_gives_llamas_outputs_and_gradients(
    rows: str, monkeypatch: pytest.MonkeyPatch, forward_path: bool
) -> None:
    """A Llama attention layer on a one-row pass (rotary embedding, grouped heads, examples laid out
    in rows, the causal quadrant skipped in long rows, a prefix shared by the examples) against
    transformers' own forward over SDPA, in float64; a padded batch keeps the layer's own forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=64,
        attn_implementation="sdpa",
    )
    reference = LlamaForCausalLM(config).double()
    model = copy.deepcopy(reference)
    assert use_matmul_attention(model) and packed_attention.fuse_packed_attention(model) == 1
    taken = []
    original_apply = packed_attention._PackedAttention.apply
    monkeypatch.setattr(packed_attention._PackedAttention, "apply", lambda *a: taken.append(1) or original_apply(*a))
    lengths = {"packed": [5, 3, 2, 1], "long": [MIN_SPLIT_LENGTH + 6, 9, 40], "shared_prefix": [6, 3, 2, 4]}[rows]
    prefix, mask = (5, shared_prefix_mask(5, lengths)) if rows == "shared_prefix" else (0, None)
    positions = torch.cat([torch.arange(prefix)] + [torch.arange(prefix, prefix + n) for n in lengths])[None]
    ids = torch.randint(0, 64, positions.shape)
    boundaries = {PASS_KWARG: PackedPass(PackedRow.of(lengths, prefix), torch.device("cpu"))}
    results = []
    for m in (reference, model):
        m.zero_grad()
        hidden = m.model.embed_tokens(ids).detach().requires_grad_()
        extra = boundaries if m is model else {}
        out = m.model(inputs_embeds=hidden, position_ids=positions, attention_mask=mask, use_cache=False, **extra)
        out = out.last_hidden_state
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        results.append([out, hidden.grad] + [p.grad for p in m.parameters() if p.grad is not None])
    assert taken == [1]
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want)
    padded, batch = torch.ones(2, 6, dtype=torch.long), torch.randint(0, 64, (2, 6))
    padded[1, 4:] = 0
    got, want = (m(batch, attention_mask=padded).logits[padded.bool()] for m in (model, reference))
    torch.testing.assert_close(got, want)
    assert taken == [1]  # the padded batch ran the layer's own forward


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_bf16_packed_attention_on_the_kernels_matches_its_eager_path(
    built: None, shared_prefix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Llama attention layer (heads of 64) on a one-row pass in bf16, its examples gathered
    into rows, rotated and gathered back by the kernels and by the eager code: the same outputs
    and gradients, with a shared prefix's copies too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setattr(attention, "cpu_has_amx", lambda: True)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        vocab_size=64,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(BF16)
    assert attention.use_matmul_attention(model) and packed_attention.fuse_packed_attention(model) == 1
    lengths, prefix = [9, 5, 4, 3], (4 if shared_prefix else 0)
    mask = shared_prefix_mask(prefix, lengths) if shared_prefix else None
    positions = torch.cat([torch.arange(prefix)] + [torch.arange(prefix, prefix + n) for n in lengths])[None]
    ids = torch.randint(0, 64, positions.shape)

    def run() -> list[torch.Tensor]:
        model.zero_grad()
        hidden = model.model.embed_tokens(ids).detach().requires_grad_()
        boundaries = {PASS_KWARG: PackedPass(PackedRow.of(lengths, prefix), torch.device("cpu"))}
        out = model.model(
            inputs_embeds=hidden, position_ids=positions, attention_mask=mask, use_cache=False, **boundaries
        )
        out = out.last_hidden_state
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return [out.detach(), hidden.grad] + [p.grad for p in model.parameters() if p.grad is not None]

    compiled = run()
    monkeypatch.setattr(kernels, "kernel", lambda name: None)
    for got, want in zip(compiled, run(), strict=True):  # bf16 roundings, at the tensor's scale
        assert float((got.float() - want.float()).abs().max()) <= 0.01 * float(want.float().abs().max())


def test_what_a_passs_layers_share_is_computed_once_and_goes_with_the_pass(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every training pass gets a new `PackedPass` with the packer's boundaries; its layers share
    one row layout, one additive mask and one set of rotary tables, kept in it and nowhere else."""
    from tunehouse.train import speed

    made: list[PackedPass] = []

    class Recorded(PackedPass):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(speed, "PackedPass", Recorded)
    trainer = make_trainer()
    if not trainer.speed.matmul_attention:
        pytest.skip("the CPU's attention")
    trainer.accumulate_gradients([0, 1, 2, 3])
    trainer.accumulate_gradients([4, 5, 6, 7])
    assert len(made) == 2 and made[0].packed != made[1].packed
    for packed in made:
        assert packed.packed is not None and len(packed.packed.segments) == 4
        assert packed._layout is not None and len(packed._masks) == 1 and len(packed.rotary_tables) == 1
