"""The compiled CPU kernels against the eager code they replace, and the layers that call them."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from tunehouse.train import cpu_kernels
from tunehouse.train.fused_layers import fuse_norms_and_mlps

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
    torch.testing.assert_close(d_x, cpu_kernels.norm_input_grad(t["grad"], t["x"], t["weight"], rstd), rtol=0.008, atol=1e-6)
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


def test_bf16_attention_gradients_on_the_kernel_match_its_eager_path(built: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused-forward attention's gradients in bf16 (probabilities again from the log-sum-exp,
    in two blocks of queries), with the library and without it."""
    from tunehouse.train import attention

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
