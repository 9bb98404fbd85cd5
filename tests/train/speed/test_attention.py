"""The CPU matmul attention against SDPA: packed rows, grouped heads, shared prefixes, long rows, the
fused forward; the boundaries it takes from the packer; what stays with SDPA."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tests.train.conftest import assert_same_gradients, gradients, shared_prefix_mask, varied_chat_rows
from tunehouse.models.template import EncodedExample
from tunehouse.train.batching import PackedRow, pack_examples
from tunehouse.train.recipe import Trainer
from tunehouse.train.speed import attention, kernels
from tunehouse.train.speed.attention import (
    MIN_SPLIT_LENGTH,
    PASS_KWARG,
    PackedPass,
    additive_mask,
    attend,
    attention_forward,
    full_causal_attention,
    matmul_attention,
    training_sdpa_backends,
    use_matmul_attention,
)

BF16 = torch.bfloat16


def test_no_prefix_is_shared_where_a_sliding_window_would_be_lost() -> None:
    """transformers uses a 4D mask as given, so a model with sliding-window layers keeps the
    position-id packing, whose masks transformers builds with the window."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    assert full_causal_attention(LlamaConfig()) and full_causal_attention(Qwen2Config())
    assert full_causal_attention(MistralConfig(sliding_window=None))
    assert not full_causal_attention(MistralConfig(sliding_window=4096))
    assert not full_causal_attention(Qwen2Config(use_sliding_window=True, max_window_layers=0))


def block_causal_mask(segments: list[list[int]]) -> torch.Tensor:
    """`[rows, 1, L, L]`: a token sees the earlier tokens of its own segment (a packed row's mask)."""
    ids = torch.tensor(segments)
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    return ((ids[:, :, None] == ids[:, None, :]) & causal)[:, None]


def assert_matmul_attention_is_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> None:
    """`matmul_attention`'s output and Q/K/V gradients are SDPA's (grouped heads, head size 8)."""
    upstream = torch.randn(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    want_grads = torch.autograd.grad((want * upstream).sum(), [q, k, v])
    got = matmul_attention(q, k, v, mask, 8**-0.5)
    got_grads = torch.autograd.grad((got * upstream).sum(), [q, k, v])
    torch.testing.assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad)


def test_matmul_attention_equals_sdpa_on_packed_rows_with_grouped_heads(forward_path: bool) -> None:
    torch.manual_seed(0)
    mask = block_causal_mask([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 0, 1, 1]])
    q = torch.randn(2, 6, 9, 8, dtype=torch.float64, requires_grad=True)  # 6 query heads share
    k = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)  # 2 key/value heads
    v = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    assert_matmul_attention_is_sdpa(q, k, v, mask)


def assert_one_row_attention_is_sdpa(mask: torch.Tensor, packed: PackedRow) -> None:
    """`attention_forward` on a one-row pass with `mask` and the packer's boundaries `packed` (6
    query heads sharing 2 key/value heads, head size 8) gives SDPA's output and Q/K/V gradients."""
    torch.manual_seed(0)
    layer = torch.nn.Module()
    layer.num_key_value_groups, layer.is_causal = 3, True
    length = mask.shape[-1]
    q = torch.randn(1, 6, length, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, length, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, length, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, length, 6, 8, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    want_grads = torch.autograd.grad((want * upstream).sum(), [q, k, v])
    got, _ = attention_forward(layer, q, k, v, mask, **{PASS_KWARG: PackedPass(packed, q.device)})
    got_grads = torch.autograd.grad((got * upstream).sum(), [q, k, v])
    torch.testing.assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad)


def test_a_one_row_pass_gathers_its_examples_into_rows_for_attention(forward_path: bool) -> None:
    """Four examples end to end in one row: attention through the rows the packer chose, as wide as
    the longest example (first-fit: 5 | 3+2 | 1, so two padding slots), gives SDPA's output and
    gradients."""
    examples = [EncodedExample(input_ids=[1] * n, labels=[1] * n) for n in (3, 5, 1, 2)]
    batch = pack_examples(examples, pad_token_id=0, one_row=True)
    packed, mask = batch["packed_row"], block_causal_mask(batch["segment_ids"].tolist())
    layout = PackedPass(packed, torch.device("cpu")).layout(11, 6)
    assert layout is not None and layout.allowed.shape == (3, 1, 5, 5)
    assert_one_row_attention_is_sdpa(mask, packed)


def test_a_shared_prefix_is_copied_into_every_examples_row_for_attention(forward_path: bool) -> None:
    """Three examples after a 2-token prefix: rows of prefix + example (2+5 | 2+2 + 2+1), the
    gradients of the prefix's keys and values summed over its copies; SDPA's output and gradients."""
    mask, packed = shared_prefix_mask(2, [5, 2, 1]), PackedRow.of([5, 2, 1], prefix=2)
    layout = PackedPass(packed, torch.device("cpu")).layout(10, 6)
    assert layout is not None and layout.allowed.shape == (2, 1, 7, 7)
    assert layout.shared_tokens.tolist() == [0, 1, 0, 1]
    assert_one_row_attention_is_sdpa(mask, packed)


def assert_attention_forward_is_sdpa(mask: torch.Tensor) -> None:
    """`attention_forward` on one row under `mask`, no boundaries handed: SDPA's output."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    layer = torch.nn.Module()
    layer.num_key_value_groups, layer.is_causal = 3, True
    length = mask.shape[-1]
    q, k, v = (torch.randn(1, heads, length, 8, dtype=torch.float64) for heads in (6, 2, 2))
    got, _ = attention_forward(layer, q, k, v, mask)
    want, _ = sdpa_attention_forward(layer, q, k, v, mask)
    torch.testing.assert_close(got, want)


def test_attention_lays_out_rows_from_the_packers_boundaries_never_from_a_mask() -> None:
    """Rows come only with a one-row pass's boundaries (`PackedRow`), and only for several examples
    whose rows fit; a mask handed without boundaries, of any shape (block-diagonal, a sliding
    window, padding), keeps the general path and SDPA's numbers."""
    cpu = torch.device("cpu")
    assert PackedPass(PackedRow.of([2, 3, 1]), cpu).layout(6, 6) is not None
    assert PackedPass(PackedRow.of([4]), cpu).layout(4, 6) is None  # one example: nothing to gather
    assert PackedPass(PackedRow.of([3, 2], prefix=2), cpu).layout(7, 6) is not None
    assert PackedPass(PackedRow.of([3], prefix=2), cpu).layout(5, 6) is None  # plain causal: one example
    assert PackedPass(PackedRow.of([2, 3, 1]), cpu).layout(7, 6) is None  # boundaries of another pass
    assert PackedPass(None, cpu).layout(6, 6) is None  # a pass not packed in one row
    wide = PackedRow.of([1024, 1024])  # rows × heads × width² against MAX_SCORE_ELEMENTS = 2**24
    assert PackedPass(wide, cpu).layout(2048, 8) is not None and PackedPass(wide, cpu).layout(2048, 9) is None
    blocks = block_causal_mask([[0, 0, 1, 1, 1, 2]])
    window = torch.ones(6, 6, dtype=torch.bool).tril().triu(-1)[None, None]  # a sliding window of 2
    padded = blocks.clone()
    padded[..., 4, 2] = False  # a query that skips one of its example's keys
    taken = []
    original = attention.rows_attention
    try:
        attention.rows_attention = lambda *a: taken.append(1) or original(*a)  # type: ignore[assignment]  # counts the calls
        for mask in (blocks, window, padded):
            assert_attention_forward_is_sdpa(mask)
    finally:
        attention.rows_attention = original  # type: ignore[assignment]  # restored
    assert not taken


@pytest.mark.parametrize("causal", [True, False])
def test_long_rows_skip_the_causal_quadrant_and_keep_sdpas_numbers(causal: bool, forward_path: bool) -> None:
    """Rows of MIN_SPLIT_LENGTH tokens or more compute their first half of queries against the
    first half of keys only, where the mask allows no more; a mask that does (here: a row that may
    see every key) keeps one block."""
    torch.manual_seed(0)
    length = MIN_SPLIT_LENGTH + 6
    ids = [[0] * 30 + [1] * 25 + [2] * (length - 55), [0] * (length - 3) + [1] * 3]
    mask = block_causal_mask(ids)
    if not causal:
        mask[1] = True
    q = torch.randn(2, 6, length, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, length, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, length, 8, dtype=torch.float64, requires_grad=True)
    half = length // 2
    want_blocks = ((half, length, length), (0, half, half)) if causal else ((0, length, length),)
    assert additive_mask(mask, torch.float64)[1:] == (want_blocks, causal)
    assert_matmul_attention_is_sdpa(q, k, v, mask)


def test_a_causal_mask_over_rows_longer_than_a_key_block_keeps_sdpas_numbers(forward_path: bool) -> None:
    """Rows longer than the fused kernel's key blocks (512), where a causal mask lets it skip those
    above the diagonal; a mask that lets one row see every key is not causal, and skips nothing."""
    torch.manual_seed(0)
    length = 600
    mask = block_causal_mask([[0] * 550 + [1] * 50, [0] * length])
    assert additive_mask(mask, torch.float64)[2]
    q = torch.randn(2, 6, length, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, length, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, length, 8, dtype=torch.float64, requires_grad=True)
    assert_matmul_attention_is_sdpa(q, k, v, mask)
    mask = mask.clone()
    mask[1] = True
    assert not additive_mask(mask, torch.float64)[2]
    assert_matmul_attention_is_sdpa(q, k, v, mask)


def test_the_fused_attention_forward_is_the_nearer_to_exact_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """In bf16, SDPA's fused forward keeps its scores in fp32; the batched matmuls round scores and
    probabilities to bf16. Both against the same attention in float64 on the same bf16 inputs."""
    torch.manual_seed(0)
    mask = block_causal_mask([[0] * 40 + [1] * 30, [0] * 70])
    q, k, v = torch.randn(2, 2, 3 * 70, 16), torch.randn(2, 2, 70, 16), torch.randn(2, 2, 70, 16)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    exact_bias, blocks, causal = additive_mask(mask, torch.float64)
    exact, _ = attend(q.double(), k.double(), v.double(), exact_bias, 3, blocks, causal)
    errors = {}
    for fused in (True, False):
        monkeypatch.setattr(attention, "cpu_has_amx", lambda fused=fused: fused)
        got, _ = attend(q, k, v, additive_mask(mask, torch.bfloat16)[0], 3, blocks, causal)
        errors[fused] = float((got.double() - exact).abs().max())
    assert errors[True] < errors[False] / 2, errors


def test_matmul_attention_with_a_value_head_size_of_its_own(forward_path: bool) -> None:
    """Multi-head latent attention (DeepSeek-V2/V3) has value heads narrower than query heads."""
    torch.manual_seed(0)
    mask = block_causal_mask([[0, 0, 1, 1, 1, 1]])
    q, k = torch.randn(1, 4, 6, 12, dtype=torch.float64), torch.randn(1, 4, 6, 12, dtype=torch.float64)
    v = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(matmul_attention(q, k, v, mask, 12**-0.5), want)


def test_models_transformers_runs_without_sdpa_keep_their_attention() -> None:
    """Gemma 2 softcaps its scores, so transformers runs it eagerly; it is not switched."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    config = Gemma2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=64,
    )
    model = AutoModelForCausalLM.from_config(config)
    implementation = model.config._attn_implementation
    assert implementation != "sdpa"
    assert not use_matmul_attention(model)
    assert model.config._attn_implementation == implementation
    model(torch.randint(0, 64, (1, 5)))


def test_attention_leaves_queries_that_see_no_key_to_sdpa() -> None:
    """Left padding gives queries with no key to attend to; those rows keep SDPA's own rules."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    layer = torch.nn.Module()
    layer.num_key_value_groups, layer.is_causal = 2, True
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    mask = block_causal_mask([[0, 0, 1, 1, 1]])
    mask[0, 0, :2] = False  # two padding queries on the left
    got, _ = attention_forward(layer, q, k, v, mask)
    want, _ = sdpa_attention_forward(layer, q, k, v, mask)
    assert torch.equal(got, want)


def test_matmul_attention_in_the_trainer_gives_sdpa_gradients(make_trainer: Callable[..., Trainer]) -> None:
    rows = varied_chat_rows(12)
    rows[0]["messages"][0]["content"] += " A long preamble." * 40  # so short examples share rows
    matmul = make_trainer(rows, matmul_attention=True)
    sdpa = make_trainer(rows, matmul_attention=False)
    assert matmul.speed.matmul_attention and not sdpa.speed.matmul_attention
    assert_same_gradients(gradients(matmul, list(range(8))), gradients(sdpa, list(range(8))))


def test_training_on_cuda_leaves_cudnn_attention_out() -> None:
    """cuDNN re-plans attention for every new sequence length; training runs flash or efficient."""
    with training_sdpa_backends(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    with training_sdpa_backends(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_bf16_attention_gradients_on_the_kernel_match_its_eager_path(
    built: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused-forward attention's gradients in bf16 (probabilities again from the log-sum-exp,
    in two blocks of queries), with the library and without it."""
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
    monkeypatch.setattr(kernels, "kernel", lambda name: None)
    for got, want in zip(compiled, grads(), strict=True):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)
