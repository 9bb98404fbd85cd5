"""The compiled CPU kernels against the reference arithmetic they are built from (`reference.py`)."""

from __future__ import annotations

import copy

import pytest
import torch

from tunehouse.train.speed import kernels, reference
from tunehouse.train.speed.casts import WeightCasts
from tunehouse.train.speed.fused_layers import fuse_norms_and_mlps
from tunehouse.train.speed.packed_attention import _signed

BF16 = torch.bfloat16


def _inputs(tokens: int = 301, features: int = 96) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "x": (torch.randn(tokens, features) * 3).to(BF16),
        "other": torch.randn(tokens, features).to(BF16),
        "grad": torch.randn(tokens, features).to(BF16),
        "weight": (torch.rand(features) + 0.5).to(BF16),
    }


def test_compiled_kernels_compute_what_their_eager_functions_do(built: None) -> None:
    """Bit for bit, but for the last bit of the norm gradient's rounding (its sums run in another
    order); at a token count the libraries were not traced with."""
    t = _inputs()
    out, rstd = kernels.kernel("norm_forward")(t["x"], t["weight"], torch.tensor(1e-5))
    want_out, want_rstd = reference.norm_forward(t["x"], t["weight"], torch.tensor(1e-5))
    assert torch.equal(out, want_out)
    torch.testing.assert_close(rstd, want_rstd, rtol=1e-6, atol=0)
    assert torch.equal(kernels.kernel("norm_output")(t["x"], t["weight"], rstd), out)
    d_x = kernels.kernel("norm_input_grad")(t["grad"], t["x"], t["weight"], rstd)
    torch.testing.assert_close(
        d_x, reference.norm_input_grad(t["grad"], t["x"], t["weight"], rstd), rtol=0.008, atol=1e-6
    )
    assert torch.equal(kernels.kernel("swiglu")(t["x"], t["other"]), reference.swiglu(t["x"], t["other"]))
    got = kernels.kernel("swiglu_grads")(t["grad"], t["x"], t["other"])
    for a, b in zip(got, reference.swiglu_grads(t["grad"], t["x"], t["other"]), strict=True):
        assert torch.equal(a, b)
    # and the eager silu derivative is PyTorch's own, bit for bit
    assert torch.equal(got[0], torch.ops.aten.silu_backward(t["grad"] * t["other"], t["x"]))


def test_a_strided_input_is_read_as_its_values(built: None) -> None:
    t = _inputs()
    wide = torch.cat([t["x"], t["other"]], dim=1)
    gate = wide[:, : t["x"].shape[1]]  # a column slice: not contiguous
    assert torch.equal(kernels.kernel("swiglu")(gate, t["other"]), reference.swiglu(t["x"], t["other"]))


def _causal_bias(rows: int, queries: int, keys: int) -> torch.Tensor:
    """`[rows, 1, queries, keys]`: 0 where a query (the last `queries` of `keys` positions) may see
    a key, −inf where not; the second row holds two examples (its second half sees only itself)."""
    position = torch.arange(keys - queries, keys)[:, None]
    allowed = (torch.arange(keys)[None, :] <= position).expand(rows, 1, queries, keys).clone()
    allowed[-1, :, :, : keys // 2] &= position < keys // 2
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf")).to(BF16)


@pytest.mark.parametrize("rows", [1, 2])
def test_attention_probabilities_are_softmax_again_from_the_log_sum_exp(built: None, rows: int) -> None:
    """The compiled `exp(scores + bias − lse)` against its eager function and against softmax, at
    sizes it was not traced with, one row or several."""
    torch.manual_seed(0)
    scores = (torch.randn(rows, 6, 13, 29) * 4).to(BF16)
    bias = _causal_bias(rows, 13, 29)
    lse = torch.logsumexp(scores.float() + bias.float(), dim=-1, keepdim=True)
    got = kernels.kernel("attention_probabilities")(scores, bias, lse)
    want = reference.attention_probabilities(scores, bias, lse)
    torch.testing.assert_close(got, want)  # the exponentials' last bit may differ
    torch.testing.assert_close(got, torch.softmax(scores.float() + bias.float(), dim=-1).to(BF16))
    assert bool((got[bias.expand_as(got) == float("-inf")] == 0).all())


def _rotary_tables(tokens: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=4 * dim, num_attention_heads=4, head_dim=dim)
    x = torch.zeros(1, tokens, dim, dtype=torch.float64)
    cos, sin = LlamaRotaryEmbedding(config)(x, torch.arange(tokens)[None])
    return cos[0].double(), sin[0].double()


@pytest.mark.parametrize("dim", kernels.ROPE_HEAD_SIZES)
def test_the_rotary_row_kernels_are_transformers_rotary_embedding_and_its_gradient(built: None, dim: int) -> None:
    """`rope_rows` gathers tokens into rows and rotates them as transformers'
    `apply_rotary_pos_emb` does; `rope_tokens_back` is its gradient (float64, eager); the compiled
    bf16 kernels compute what the eager functions do, at sizes they were not traced with."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    tokens, heads, rows, width = 10, 3, 2, 6
    index = torch.tensor([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 0, 0]])  # two padding slots
    cos, sin = _rotary_tables(tokens, dim)
    x = torch.randn(tokens, heads, dim, dtype=torch.float64, requires_grad=True)
    want, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], cos[None], sin[None])
    got = reference.rope_rows(x, index, cos[index], _signed(sin, backward=False)[index])
    assert got.shape == (rows, heads, width, dim)
    real = (index.flatten() != 0) | (torch.arange(rows * width) == 0)
    torch.testing.assert_close(got.transpose(1, 2).reshape(-1, heads, dim)[real], want[0].transpose(0, 1))
    upstream = torch.randn_like(got)
    upstream[1, :, 4:] = 0  # padding slots: no gradient
    (grad,) = torch.autograd.grad((got * upstream).sum(), [x])
    row, column = torch.arange(tokens) // width, torch.arange(tokens) % width
    back = reference.rope_tokens_back(upstream, row, column, cos, _signed(sin, backward=True))
    torch.testing.assert_close(back, grad)

    x16, up16 = x.detach().to(BF16), upstream.to(BF16)
    tables = [t.to(BF16) for t in (cos[index], _signed(sin, backward=False)[index])]
    compiled = kernels.kernel(f"rope_rows_{dim}")(x16, index, *tables)
    assert torch.equal(compiled, reference.rope_rows(x16, index, *tables))
    tables = [t.to(BF16) for t in (cos, _signed(sin, backward=True))]
    compiled = kernels.kernel(f"rope_tokens_back_{dim}")(up16, row, column, *tables)
    assert torch.equal(compiled, reference.rope_tokens_back(up16, row, column, *tables))


def test_the_row_gathers_compute_what_their_eager_functions_do(built: None) -> None:
    """`rows_of` (a negative index: a slot of zeros) and its inverse `tokens_of`, compiled, against
    their eager functions and each other."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 40).to(BF16)
    index = torch.tensor([[0, 1, 2, -1], [3, 4, 5, 6]])
    rows = kernels.kernel("rows_of")(x, index)
    assert torch.equal(rows, reference.rows_of(x, index))
    assert torch.equal(rows[0, :, 3], torch.zeros(3, 40, dtype=BF16))
    row, column = torch.tensor([0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 2, 3])
    tokens = kernels.kernel("tokens_of")(rows, row, column)
    assert torch.equal(tokens, reference.tokens_of(rows, row, column))
    assert torch.equal(tokens, x)


def test_without_a_library_the_layers_run_their_eager_code(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """No compiler, or a kernels directory never built: the same norm, from eager PyTorch."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    monkeypatch.setenv("TUNEHOUSE_KERNELS_DIR", str(tmp_path))
    kernels.kernel.cache_clear()
    try:
        assert all(kernels.kernel(name) is None for name in kernels.KERNELS)
        norm = LlamaRMSNorm(96, eps=1e-5).to(BF16)
        fused = copy.deepcopy(norm)
        assert fuse_norms_and_mlps(fused, WeightCasts()) == 1
        x = _inputs()["x"]
        assert torch.equal(fused(x), norm(x))
    finally:
        kernels.kernel.cache_clear()


def test_the_libraries_are_named_by_the_reference_arithmetic_and_the_trace_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change to `reference.py` or to how it is traced names new libraries (a stale one is never
    loaded); the build system's own source is not hashed, so rewording it rebuilds nothing."""
    import dataclasses
    import inspect

    original = inspect.getsource

    def key(reworded: object = None) -> str:
        monkeypatch.setattr(inspect, "getsource", lambda obj: original(obj) + ("# x" if obj is reworded else ""))
        kernels._source_key.cache_clear()
        return kernels.library_path("swiglu").name

    try:
        built_key = key()
        assert key(reworded=kernels) == built_key
        assert key(reworded=reference) != built_key
        monkeypatch.setattr(kernels, "TRACE", dataclasses.replace(kernels.TRACE, queries=302))
        assert key() != built_key
    finally:
        monkeypatch.undo()
        kernels._source_key.cache_clear()
