"""The compiled CPU kernels against the eager code they replace, and the layers that call them."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from tunehouse.train.speed import kernels as cpu_kernels
from tunehouse.train.speed.fused_layers import fuse_norms_and_mlps

from .conftest import shared_prefix_mask

BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def built() -> Iterator[None]:
    """The libraries in the kernels directory, built there if `make install` has not (a minute).
    A machine without a C++ compiler cannot build them: those tests skip, saying why."""
    try:
        cpu_kernels.build()
    except Exception as error:  # what the compiler or AOTInductor raised
        pytest.skip(f"the CPU kernels cannot be built here: {type(error).__name__}: {error}")
    cpu_kernels.kernel.cache_clear()
    missing = [name for name in cpu_kernels.KERNELS if cpu_kernels.kernel(name) is None]
    assert not missing, f"built but not loadable: {missing}"
    yield
    cpu_kernels.kernel.cache_clear()


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
    out, rstd = cpu_kernels.kernel("norm_forward")(t["x"], t["weight"], torch.tensor(1e-5))
    want_out, want_rstd = cpu_kernels.norm_forward(t["x"], t["weight"], torch.tensor(1e-5))
    assert torch.equal(out, want_out)
    torch.testing.assert_close(rstd, want_rstd, rtol=1e-6, atol=0)
    assert torch.equal(cpu_kernels.kernel("norm_output")(t["x"], t["weight"], rstd), out)
    d_x = cpu_kernels.kernel("norm_input_grad")(t["grad"], t["x"], t["weight"], rstd)
    torch.testing.assert_close(
        d_x, cpu_kernels.norm_input_grad(t["grad"], t["x"], t["weight"], rstd), rtol=0.008, atol=1e-6
    )
    assert torch.equal(cpu_kernels.kernel("swiglu")(t["x"], t["other"]), cpu_kernels.swiglu(t["x"], t["other"]))
    got = cpu_kernels.kernel("swiglu_grads")(t["grad"], t["x"], t["other"])
    for a, b in zip(got, cpu_kernels.swiglu_grads(t["grad"], t["x"], t["other"]), strict=True):
        assert torch.equal(a, b)
    # and the eager silu derivative is PyTorch's own, bit for bit
    assert torch.equal(got[0], torch.ops.aten.silu_backward(t["grad"] * t["other"], t["x"]))


def test_a_strided_input_is_read_as_its_values(built: None) -> None:
    t = _inputs()
    wide = torch.cat([t["x"], t["other"]], dim=1)
    gate = wide[:, : t["x"].shape[1]]  # a column slice: not contiguous
    assert torch.equal(cpu_kernels.kernel("swiglu")(gate, t["other"]), cpu_kernels.swiglu(t["x"], t["other"]))


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
    got = cpu_kernels.kernel("attention_probabilities")(scores, bias, lse)
    want = cpu_kernels.attention_probabilities(scores, bias, lse)
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


@pytest.mark.parametrize("dim", cpu_kernels.ROPE_HEAD_SIZES)
def test_the_rotary_row_kernels_are_transformers_rotary_embedding_and_its_gradient(built: None, dim: int) -> None:
    """`rope_rows` gathers tokens into rows and rotates them as transformers'
    `apply_rotary_pos_emb` does; `rope_tokens_back` is its gradient (float64, eager); the compiled
    bf16 kernels compute what the eager functions do, at sizes they were not traced with."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from tunehouse.train.speed.packed_attention import _signed

    torch.manual_seed(0)
    tokens, heads, rows, width = 10, 3, 2, 6
    index = torch.tensor([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 0, 0]])  # two padding slots
    cos, sin = _rotary_tables(tokens, dim)
    x = torch.randn(tokens, heads, dim, dtype=torch.float64, requires_grad=True)
    want, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], cos[None], sin[None])
    got = cpu_kernels.rope_rows(x, index, cos[index], _signed(sin, backward=False)[index])
    assert got.shape == (rows, heads, width, dim)
    real = (index.flatten() != 0) | (torch.arange(rows * width) == 0)
    torch.testing.assert_close(got.transpose(1, 2).reshape(-1, heads, dim)[real], want[0].transpose(0, 1))
    upstream = torch.randn_like(got)
    upstream[1, :, 4:] = 0  # padding slots: no gradient
    (grad,) = torch.autograd.grad((got * upstream).sum(), [x])
    row, column = torch.arange(tokens) // width, torch.arange(tokens) % width
    back = cpu_kernels.rope_tokens_back(upstream, row, column, cos, _signed(sin, backward=True))
    torch.testing.assert_close(back, grad)

    x16, up16 = x.detach().to(BF16), upstream.to(BF16)
    tables = [t.to(BF16) for t in (cos[index], _signed(sin, backward=False)[index])]
    compiled = cpu_kernels.kernel(f"rope_rows_{dim}")(x16, index, *tables)
    assert torch.equal(compiled, cpu_kernels.rope_rows(x16, index, *tables))
    tables = [t.to(BF16) for t in (cos, _signed(sin, backward=True))]
    compiled = cpu_kernels.kernel(f"rope_tokens_back_{dim}")(up16, row, column, *tables)
    assert torch.equal(compiled, cpu_kernels.rope_tokens_back(up16, row, column, *tables))


def test_the_row_gathers_compute_what_their_eager_functions_do(built: None) -> None:
    """`rows_of` (a negative index: a slot of zeros) and its inverse `tokens_of`, compiled, against
    their eager functions and each other."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 40).to(BF16)
    index = torch.tensor([[0, 1, 2, -1], [3, 4, 5, 6]])
    rows = cpu_kernels.kernel("rows_of")(x, index)
    assert torch.equal(rows, cpu_kernels.rows_of(x, index))
    assert torch.equal(rows[0, :, 3], torch.zeros(3, 40, dtype=BF16))
    row, column = torch.tensor([0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 2, 3])
    tokens = cpu_kernels.kernel("tokens_of")(rows, row, column)
    assert torch.equal(tokens, cpu_kernels.tokens_of(rows, row, column))
    assert torch.equal(tokens, x)


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_bf16_packed_attention_on_the_kernels_matches_its_eager_path(
    built: None, shared_prefix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Llama attention layer (heads of 64) on a one-row pass in bf16, its examples gathered
    into rows, rotated and gathered back by the kernels and by the eager code: the same outputs
    and gradients, with a shared prefix's copies too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunehouse.train.speed import attention, packed_attention

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
        out = model.model(inputs_embeds=hidden, position_ids=positions, attention_mask=mask, use_cache=False)
        out = out.last_hidden_state
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return [out.detach(), hidden.grad] + [p.grad for p in model.parameters() if p.grad is not None]

    compiled = run()
    monkeypatch.setattr(cpu_kernels, "kernel", lambda name: None)
    for got, want in zip(compiled, run(), strict=True):  # bf16 roundings, at the tensor's scale
        assert float((got.float() - want.float()).abs().max()) <= 0.01 * float(want.float().abs().max())


def test_bf16_attention_gradients_on_the_kernel_match_its_eager_path(
    built: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused-forward attention's gradients in bf16 (probabilities again from the log-sum-exp,
    in two blocks of queries), with the library and without it."""
    from tunehouse.train.speed import attention

    monkeypatch.setattr(attention, "cpu_has_amx", lambda: True)
    torch.manual_seed(0)
    length = attention.MIN_SPLIT_LENGTH + 10
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None].expand(2, 1, length, length)
    q, k, v = ((torch.randn(2, heads, length, 16) * 0.5).to(BF16) for heads in (6, 2, 2))
    upstream = torch.randn(2, 6, length, 16).to(BF16)

    def grads() -> list[torch.Tensor]:
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention.matmul_attention(*inputs, allowed, 16**-0.5)
        return list(torch.autograd.grad((out.float() * upstream.float()).sum(), inputs))

    compiled = grads()
    monkeypatch.setattr(cpu_kernels, "kernel", lambda name: None)
    for got, want in zip(compiled, grads(), strict=True):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)


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
    assert fuse_norms_and_mlps(layer) == 1
    x = (torch.randn(2, 57, 96 if module == "norm" else 32) * 3).to(BF16)

    def run() -> list[torch.Tensor]:
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        out.float().square().sum().backward()
        return [out.detach(), inputs.grad] + [p.grad for p in layer.parameters() if p.requires_grad]

    compiled = run()
    layer.zero_grad(set_to_none=True)
    monkeypatch.setattr(cpu_kernels, "kernel", lambda name: None)  # every library missing
    eager = run()
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0.008, atol=1e-5)
    if module == "mlp":
        assert all(torch.equal(got, want) for got, want in zip(compiled, eager, strict=True))


def test_without_a_library_the_layers_run_their_eager_code(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """No compiler, or a kernels directory never built: the same norm, from eager PyTorch."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    monkeypatch.setenv("TUNEHOUSE_KERNELS_DIR", str(tmp_path))
    cpu_kernels.kernel.cache_clear()
    try:
        assert all(cpu_kernels.kernel(name) is None for name in cpu_kernels.KERNELS)
        norm = LlamaRMSNorm(96, eps=1e-5).to(BF16)
        fused = copy.deepcopy(norm)
        assert fuse_norms_and_mlps(fused) == 1
        x = _inputs()["x"]
        assert torch.equal(fused(x), norm(x))
    finally:
        cpu_kernels.kernel.cache_clear()
