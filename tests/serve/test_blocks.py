"""Block-quantized weights (`serve/batch/blocks.py`, `blocks.c`): found exactly, multiplied like the
float32 weights they stand for, and each row's result the same bits whatever shares the call."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from tunehouse.serve.batch import kernels
from tunehouse.serve.batch.blocks import BlockWeight, quantized
from tunehouse.serve.batch.llama import BatchedLlama, Row

LIBRARY = kernels.library()
pytestmark = pytest.mark.skipif(
    LIBRARY is None or not LIBRARY.block_matmul_available(), reason="no C compiler, or a CPU without AVX-512 BF16"
)


def lib() -> ctypes.CDLL:
    assert LIBRARY is not None
    return LIBRARY


def on_grid(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` rounded as GGUF's Q4_1 (4 bits) or Q8_0 (8 bits) quantizer and dequantizer do, per 32."""
    blocks = weight.reshape(weight.shape[0], -1, 32)
    if bits == 4:
        low = blocks.amin(-1, keepdim=True).half()
        scale = ((blocks.amax(-1, keepdim=True) - low.float()) / 15).half()
        q = ((blocks - low.float()) / scale.float()).round().clamp(0, 15)
        return (q * scale.float() + low.float()).reshape(weight.shape)
    scale = (blocks.abs().amax(-1, keepdim=True) / 127).half()
    return ((blocks / scale.float()).round().clamp(-127, 127) * scale.float()).reshape(weight.shape)


@pytest.mark.parametrize(("bits", "int8_inputs"), [(4, False), (4, True), (8, False)])
def test_block_values_are_found_exactly_and_multiply_as_their_floats(bits: int, int8_inputs: bool) -> None:
    torch.manual_seed(bits)
    weight = on_grid(torch.randn(96, 128) * 0.05, bits)
    blocks = quantized(weight, int8_inputs)
    assert isinstance(blocks, BlockWeight) and blocks.bits == bits and blocks.int8_inputs == int8_inputs
    index = torch.tensor([0, 15, 16, 31, 32, 95, 7])
    assert torch.equal(blocks.rows(index), weight[index])

    x = torch.randn(9, 128).bfloat16()
    exact = x.float() @ weight.T
    got = blocks.matmul(lib(), x).float()
    assert (got - exact).abs().max() <= 1e-2 * exact.abs().max()  # one bf16 rounding of each output


def test_int8_inputs_are_each_row_s_values_rounded_per_16() -> None:
    """With `int8_inputs`, a row is rounded to `dx * xq` per 16 values (`dx` = their largest magnitude /
    127) and multiplied exactly; the blocks' `m` multiplies the sum of the rounded values."""
    torch.manual_seed(3)
    weight = on_grid(torch.randn(64, 128) * 0.05, 4)
    blocks = quantized(weight, int8_inputs=True)
    assert blocks is not None
    x = torch.randn(6, 128).bfloat16()
    x[2, 16:32] = 0  # a run of zeros rounds to zeros
    runs = x.float().reshape(6, -1, 16)
    largest = runs.abs().amax(-1, keepdim=True)
    rounded = ((runs * torch.where(largest > 0, 127 / largest, 0)).round() * (largest / 127)).reshape(6, 128)
    expected = rounded.double() @ weight.double().T
    got = blocks.matmul(lib(), x, torch.float32)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (got - x.float() @ weight.T).abs().max() > 1e-4  # it did round: not the bf16 product


def test_other_weights_stay_as_they_are() -> None:
    torch.manual_seed(0)
    assert quantized(torch.randn(64, 64)) is None  # not block values
    assert quantized(on_grid(torch.randn(64, 64), 4)[:, :48].contiguous()) is None  # rows not whole blocks
    assert quantized(on_grid(torch.randn(48, 64), 4)) is None  # columns not whole panels
    assert quantized(on_grid(torch.randn(64, 64), 4).bfloat16()) is None  # bf16 has lost the values


@pytest.mark.parametrize(("bits", "int8_inputs"), [(4, False), (4, True), (8, False)])
def test_a_row_s_result_does_not_depend_on_its_companions(bits: int, int8_inputs: bool) -> None:
    torch.manual_seed(1)
    blocks = quantized(on_grid(torch.randn(64, 96), bits), int8_inputs)
    assert blocks is not None
    wide = torch.randn(17, 200).bfloat16()
    x = wide[:, 50:146]  # strided rows, as a view of a wider activation
    together = blocks.matmul(lib(), x)
    for start, count in [(0, 1), (3, 1), (2, 3), (5, 4), (1, 7), (16, 1)]:
        assert torch.equal(blocks.matmul(lib(), x[start : start + count]), together[start : start + count])


def test_the_batched_pass_on_a_block_quantized_model(tmp_path: Path) -> None:
    """A Llama saved as block values runs on the blocks, close to its float32 forward, each row as alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.copy_(on_grid(parameter, 8 if "embed" in name else 4))
    model.save_pretrained(tmp_path)
    batched = BatchedLlama(model.to(torch.bfloat16), torch.bfloat16, str(tmp_path))
    assert isinstance(batched.layers[0].qkv.weight, BlockWeight) and isinstance(batched.embed, BlockWeight)
    assert not batched.layers[0].qkv.weight.int8_inputs and batched.layers[0].gate_up.weight.int8_inputs
    assert batched.lm_head.weight is batched.embed  # tied: one copy of the blocks

    prompts = [[5, 9, 11, 3], [7, 7, 2], [1, 300, 40, 41, 42]]
    alone = [batched.forward([Row(prompt, batched.new_cache())]) for prompt in prompts]
    together = batched.forward([Row(prompt, batched.new_cache()) for prompt in prompts])
    assert all(torch.equal(together[i : i + 1], alone[i]) for i in range(len(prompts)))

    # Every layer in one call to kernels.c is the passes called one by one, bit for bit (prefill, decode).
    def prefill_then_decode() -> list[torch.Tensor]:
        caches = [batched.new_cache() for _ in prompts]
        first = batched.forward([Row(prompt, cache) for prompt, cache in zip(prompts, caches, strict=True)])
        return [first, batched.forward([Row([17], cache) for cache in caches])]

    assert batched.layer_table is not None
    in_one_call = prefill_then_decode()
    table, batched.layer_table = batched.layer_table, None
    one_by_one = prefill_then_decode()
    batched.layer_table = table
    assert torch.equal(in_one_call[0], together) and all(map(torch.equal, in_one_call, one_by_one))

    reference = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    for prompt, logits in zip(prompts, alone, strict=True):
        with torch.no_grad():
            expected = reference(torch.tensor([prompt])).logits[0, -1]
        assert (logits[0] - expected).abs().max() <= 0.05 * expected.abs().max()
