"""Each speed trick changes no number it should not (STYLE: readable training)."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tunehouse.errors import OutOfMemoryRisk
from tunehouse.hardware import bf16_supported
from tunehouse.models.template import IGNORE_INDEX, EncodedExample
from tunehouse.train import memory
from tunehouse.train.batching import pack_examples, shared_prefix_length, token_budget_micro_batches
from tunehouse.train.loss import ChunkBuffers, chunked_lm_loss_sum, masked_lm_loss_sum
from tunehouse.train.recipe import Trainer
from tunehouse.train.speed import attention
from tunehouse.train.speed.attention import (
    MIN_SPLIT_LENGTH,
    additive_mask,
    attend,
    attention_forward,
    full_causal_attention,
    matmul_attention,
    packed_row_layout,
    training_sdpa_backends,
    use_matmul_attention,
)
from tunehouse.train.speed.casts import keep_adapter_inputs_as_is, weights_changed
from tunehouse.train.speed.fused_layers import fuse_norms_and_mlps
from tunehouse.train.speed.fused_lora import fuse_lora_forward

from .conftest import shared_prefix_mask, varied_chat_rows


def gradients(trainer: Trainer, indices: list[int]) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    trainer.accumulate_gradients(indices)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=name)


def test_packed_rows_restart_positions_and_never_train_across_examples() -> None:
    examples = [
        EncodedExample(input_ids=[1, 2, 3, 4, 5, 6], labels=[-100, -100, 3, 4, 5, 6]),
        EncodedExample(input_ids=[7, 8, 9], labels=[7, 8, 9]),
        EncodedExample(input_ids=[10, 11], labels=[-100, 11]),
    ]
    batch = pack_examples(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    # Each example's first token is unlabelled: nothing learns to predict the next example's start.
    assert batch["labels"].tolist() == [[-100, -100, 3, 4, 5, 6], [-100, 8, 9, -100, 11, -100]]


def test_one_row_packing_lays_examples_end_to_end_without_padding() -> None:
    examples = [
        EncodedExample(input_ids=[1, 2, 3], labels=[1, 2, 3]),
        EncodedExample(input_ids=[4, 5, 6, 7, 8], labels=[-100, -100, 6, 7, 8]),
        EncodedExample(input_ids=[9, 10], labels=[9, 10]),
    ]
    batch = pack_examples(examples, pad_token_id=0, one_row=True)
    assert batch["input_ids"].tolist() == [[4, 5, 6, 7, 8, 1, 2, 3, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 8, -100, 2, 3, -100, 10]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0, 2, 2]]


def test_packing_gives_the_unpacked_loss_and_gradients(make_trainer: Callable[..., Trainer]) -> None:
    rows = varied_chat_rows(12)
    rows[0]["messages"][0]["content"] += " A long preamble." * 40  # so short examples share rows
    packed = make_trainer(rows, packing=True)
    padded = make_trainer(rows, packing=False)
    indices = list(range(8))
    examples = [packed.train[i] for i in indices]
    assert len(pack_examples(examples, packed.pad_id)["input_ids"]) < len(examples)  # it did pack
    packed_sums = packed.method.pass_sums(packed, examples)
    padded_sums = padded.method.pass_sums(padded, examples)
    assert packed_sums.tokens == padded_sums.tokens == sum(e.trained_tokens for e in examples)
    torch.testing.assert_close(packed_sums.loss_sum, padded_sums.loss_sum, rtol=1e-5, atol=1e-4)
    assert_same_gradients(gradients(packed, indices), gradients(padded, indices))


def test_the_shared_prefix_stops_before_the_first_trained_token_and_where_examples_differ() -> None:
    def example(ids: list[int], first_trained: int) -> EncodedExample:
        return EncodedExample(input_ids=ids, labels=[-100] * first_trained + ids[first_trained:])

    system = [1, 2, 3, 4, 5]
    assert shared_prefix_length([example(system + [6, 7, 8], 6), example(system + [6, 9], 7)]) == 5
    # the prefix's last hidden state is shared, so the token after it may not be trained
    assert shared_prefix_length([example(system + [6, 7, 8], 6), example(system + [6, 9, 9], 5)]) == 4
    assert shared_prefix_length([example(system + [6, 7], 7), example(system, 4)]) == 3  # each keeps a token
    assert shared_prefix_length([example([9] + system, 6), example(system + [6], 5)]) == 0
    assert shared_prefix_length([example(system + [6, 7, 8], 6)]) == 0  # one example: nothing to share


def test_one_row_packing_computes_the_shared_prefix_once() -> None:
    examples = [
        EncodedExample(input_ids=[1, 2, 3, 4], labels=[-100, -100, -100, 4]),
        EncodedExample(input_ids=[1, 2, 5, 6, 7], labels=[-100, -100, -100, 6, 7]),
    ]
    batch = pack_examples(examples, pad_token_id=0, one_row=True, share_prefix=True)
    assert batch["input_ids"].tolist() == [[1, 2, 5, 6, 7, 3, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 6, 7, -100, 4]]
    assert batch["segment_ids"].tolist() == [[-2, -2, 1, 1, 1, 0, 0]]
    # every token sees the prefix and the earlier tokens of its own example
    want = [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1, 1]]  # fmt: skip
    assert batch["attention_mask"].int().tolist() == [[want]]
    unshared = pack_examples(examples, pad_token_id=0, one_row=True)
    assert "attention_mask" not in unshared and unshared["input_ids"].shape == (1, 9)


def test_sharing_the_prefix_gives_the_unshared_loss_and_gradients(make_trainer: Callable[..., Trainer]) -> None:
    rows = varied_chat_rows(12)
    for row in rows:
        row["messages"][0]["content"] = "You are a careful assistant who answers in one sentence, always."
    shared, unshared = make_trainer(rows), make_trainer(rows, share_prefix=False)
    assert shared.share_prefix and not unshared.share_prefix
    indices = list(range(4))
    examples = [shared.train[i] for i in indices]
    prefix = shared_prefix_length(examples)
    assert prefix > 15
    batch = pack_examples(examples, shared.pad_id, one_row=True, share_prefix=True)
    assert batch["input_ids"].shape[1] == sum(shared.lengths[i] for i in indices) - 3 * prefix
    shared_sums, unshared_sums = (
        shared.method.pass_sums(shared, examples),
        unshared.method.pass_sums(unshared, examples),
    )
    assert shared_sums.tokens == unshared_sums.tokens == sum(e.trained_tokens for e in examples)
    torch.testing.assert_close(shared_sums.loss_sum, unshared_sums.loss_sum, rtol=1e-5, atol=1e-4)
    assert_same_gradients(gradients(shared, indices), gradients(unshared, indices))
    assert shared.computed_tokens < unshared.computed_tokens == sum(unshared.lengths[i] for i in indices)


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


@pytest.fixture(params=[True, False], ids=["fused-forward", "matmul-forward"])
def forward_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both forwards of the matmul attention on any machine: SDPA's fused kernel (chosen where the
    CPU has AMX) and the batched matmuls (elsewhere); the backward is the same for both."""
    monkeypatch.setattr(attention, "cpu_has_amx", lambda: request.param)
    return bool(request.param)


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


def assert_one_row_attention_is_sdpa(mask: torch.Tensor) -> None:
    """`attention_forward` on a one-row pass with `mask` (6 query heads sharing 2 key/value heads,
    head size 8) gives SDPA's output and Q/K/V gradients."""
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
    got, _ = attention_forward(layer, q, k, v, mask)
    got_grads = torch.autograd.grad((got * upstream).sum(), [q, k, v])
    torch.testing.assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad)


def test_a_one_row_pass_gathers_its_examples_into_rows_for_attention(forward_path: bool) -> None:
    """Four examples end to end in one row: attention through rows as wide as the longest example
    (first-fit: 5 | 3+2 | 1, so two padding slots) gives SDPA's output and gradients."""
    mask = block_causal_mask([[0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3]])
    layout = packed_row_layout(mask, 11)
    assert layout is not None and layout.allowed.shape == (3, 1, 5, 5)
    assert_one_row_attention_is_sdpa(mask)


def test_a_shared_prefix_is_copied_into_every_examples_row_for_attention(forward_path: bool) -> None:
    """Three examples after a 2-token prefix: rows of prefix + example (2+5 | 2+2 + 2+1), the
    gradients of the prefix's keys and values summed over its copies; SDPA's output and gradients."""
    mask = shared_prefix_mask(2, [5, 2, 1])
    layout = packed_row_layout(mask, 10)
    assert layout is not None and layout.allowed.shape == (2, 1, 7, 7)
    assert layout.shared_tokens.tolist() == [0, 1, 0, 1]
    assert_one_row_attention_is_sdpa(mask)


@pytest.mark.parametrize("rows", ["packed", "long", "shared_prefix"])
def test_packed_attention_layer_gives_llamas_outputs_and_gradients(
    rows: str, monkeypatch: pytest.MonkeyPatch, forward_path: bool
) -> None:
    """A Llama attention layer on a one-row pass (rotary embedding, grouped heads, examples laid out
    in rows, the causal quadrant skipped in long rows, a prefix shared by the examples) against
    transformers' own forward over SDPA, in float64; a padded batch keeps the layer's own forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunehouse.train.speed import packed_attention

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
    results = []
    for m in (reference, model):
        m.zero_grad()
        hidden = m.model.embed_tokens(ids).detach().requires_grad_()
        out = m.model(inputs_embeds=hidden, position_ids=positions, attention_mask=mask, use_cache=False)
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


def test_only_block_diagonal_causal_masks_are_read_as_packed_examples() -> None:
    blocks = block_causal_mask([[0, 0, 1, 1, 1, 2]])
    assert packed_row_layout(blocks, 6) is not None
    assert packed_row_layout(block_causal_mask([[0, 0, 0, 0]]), 4) is None  # one example: nothing to gather
    window = torch.ones(6, 6, dtype=torch.bool).tril().triu(-1)[None, None]  # a sliding window of 2
    assert packed_row_layout(window, 6) is None
    padded = blocks.clone()
    padded[..., 4, 2] = False  # a query that skips one of its example's keys
    assert packed_row_layout(padded, 6) is None
    assert packed_row_layout(blocks.expand(2, 1, 6, 6), 6) is None  # several rows: attention's own batch
    prefix = shared_prefix_mask(2, [3, 2])
    assert packed_row_layout(prefix, 7) is not None
    assert packed_row_layout(shared_prefix_mask(2, [3]), 5) is None  # plain causal: one example
    skipped = prefix.clone()
    skipped[..., 6, 1] = False  # a query that skips one of the prefix's keys
    assert packed_row_layout(skipped, 7) is None
    peeking = prefix.clone()
    peeking[..., 1, 2] = True  # a prefix token that sees an example's token
    assert packed_row_layout(peeking, 7) is None


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
    mask = mask.clone()  # a new mask: the bias of the last one seen is kept
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
    assert matmul.matmul_attention and not sdpa.matmul_attention
    assert_same_gradients(gradients(matmul, list(range(8))), gradients(sdpa, list(range(8))))


def test_fused_forwards_give_the_models_own_gradients(make_trainer: Callable[..., Trainer]) -> None:
    """LoRA addmm, RMSNorm and SwiGLU Functions against PEFT's and transformers' own forwards."""
    trainer = make_trainer()
    with torch.no_grad():  # B starts at zero, which would hide a wrong scaling
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    layers = trainer.model.config.num_hidden_layers
    assert fuse_lora_forward(trainer.model) == 0  # the trainer fused every adapted layer already
    assert fuse_norms_and_mlps(trainer.model) == 0
    fresh = make_trainer()
    for module in fresh.model.modules():
        module.__dict__.pop("forward", None)
    assert fuse_lora_forward(fresh.model) == 7 * layers
    assert fuse_norms_and_mlps(fresh.model) == 3 * layers + 1  # two norms and an MLP per layer, final norm
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
                weights_changed()
                want = [p(x) for p in projections]
                assert all(torch.equal(a, b) for a, b in zip(fused, want, strict=True))
            else:
                for got, peft in zip(fused, [type(p).forward(p, x) for p in projections], strict=True):
                    torch.testing.assert_close(got, peft)
        trainer.train_step([0, 1, 2, 3])
        assert not torch.equal(before[0], projections[0].lora_A["default"].weight), "the step changed A"


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


def test_fused_rms_norm_gives_llamas_outputs_and_gradients() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(32, eps=1e-5)
    torch.nn.init.normal_(norm.weight, 1.0, 0.1)
    fused = copy.deepcopy(norm)
    assert fuse_norms_and_mlps(fused) == 1
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


def test_fused_swiglu_is_bitwise_llamas_in_bf16() -> None:
    from transformers.models.llama.modeling_llama import LlamaConfig, LlamaMLP

    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=96, hidden_act="silu")).to(torch.bfloat16)
    fused = copy.deepcopy(mlp)
    assert fuse_norms_and_mlps(fused) == 1
    x = torch.randn(7, 32, dtype=torch.bfloat16)
    results = []
    for module in (mlp, fused):
        inputs = x.clone().requires_grad_()
        module(inputs).square().sum().backward()
        results.append([inputs.grad] + [p.grad for p in module.parameters()])
    assert all(torch.equal(got, want) for got, want in zip(results[1], results[0], strict=True))


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


def test_chunked_cross_entropy_equals_plain_cross_entropy() -> None:
    """Over several chunks, and over passes that share their chunk buffers (a trainer's): each pass
    gets the plain numbers, whatever the pass before left in the buffers."""
    torch.manual_seed(0)
    buffers = ChunkBuffers()
    for length in (11, 3, 11):  # the second pass has fewer trained positions than one chunk
        hidden = torch.randn(3, length, 16, requires_grad=True)
        weight = torch.randn(50, 16, requires_grad=True)
        labels = torch.randint(0, 50, (3, length))
        labels[0, :4] = IGNORE_INDEX
        labels[2, 7:] = IGNORE_INDEX
        plain = masked_lm_loss_sum(hidden @ weight.t(), labels)
        plain_grads = torch.autograd.grad(plain.loss_sum, [hidden, weight])
        chunked = chunked_lm_loss_sum(hidden, labels, weight, chunk_size=5, buffers=buffers)  # several chunks
        chunked_grads = torch.autograd.grad(chunked.loss_sum, [hidden, weight])
        torch.testing.assert_close(chunked.loss_sum, plain.loss_sum)
        assert (chunked.correct, chunked.tokens) == (plain.correct, plain.tokens)
        for got, want in zip(chunked_grads, plain_grads, strict=True):
            torch.testing.assert_close(got, want)
    first = buffers.take(5, weight)[0].data_ptr()
    assert buffers.take(2, weight)[0].data_ptr() == first  # kept, not allocated again


def test_chunked_loss_in_the_trainer_matches_full_logits(make_trainer: Callable[..., Trainer]) -> None:
    chunked = make_trainer(chunked_loss=True)
    full = make_trainer(chunked_loss=False)
    assert chunked.decoder is not None and full.decoder is None
    assert_same_gradients(gradients(chunked, [0, 1, 2, 3]), gradients(full, [0, 1, 2, 3]))


def test_gradient_accumulation_one_by_eight_equals_batch_eight(make_trainer: Callable[..., Trainer]) -> None:
    whole = make_trainer(pass_tokens=100_000)
    one_at_a_time = make_trainer(pass_tokens=1)  # every example its own forward pass
    indices = list(range(8))
    assert len(token_budget_micro_batches(indices, one_at_a_time.lengths, 1)) == 8
    assert len(token_budget_micro_batches(indices, whole.lengths, 100_000)) == 1
    assert_same_gradients(gradients(whole, indices), gradients(one_at_a_time, indices))


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


def test_gradient_checkpointing_changes_no_gradient(make_trainer: Callable[..., Trainer]) -> None:
    plain = make_trainer(gradient_checkpointing=False)
    checkpointed = make_trainer(gradient_checkpointing=True)
    assert checkpointed.checkpointing and not plain.checkpointing
    assert_same_gradients(gradients(plain, [0, 1, 2]), gradients(checkpointed, [0, 1, 2]))


def test_weight_zero_turns_contribute_no_loss(make_trainer: Callable[..., Trainer]) -> None:
    messages = [
        {"role": "user", "content": "Say a colour."},
        {"role": "assistant", "content": "Purple, obviously, the best of all colours.", "weight": 0},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green."},
    ]
    trainer = make_trainer([{"messages": messages}] * 2)
    with_weight = [dict(m, weight=1) if m["role"] == "assistant" else m for m in messages]
    [both] = trainer.encode([{"messages": with_weight}])
    [second_only] = trainer.encode([{"messages": messages}])
    assert both.input_ids == second_only.input_ids
    assert 0 < second_only.trained_tokens < both.trained_tokens
    first_turn = [i for i, (a, b) in enumerate(zip(both.labels, second_only.labels, strict=True)) if a != b]
    assert all(second_only.labels[i] == IGNORE_INDEX for i in first_turn)
    # The loss is exactly the cross-entropy of the second turn's tokens: the first adds nothing.
    sums = trainer.method.pass_sums(trainer, [second_only])
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([second_only.input_ids], device=trainer.device)).logits[0, :-1]
    targets = torch.tensor(second_only.labels[1:], device=trainer.device)
    keep = targets != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    torch.testing.assert_close(sums.loss_sum.detach(), expected, rtol=1e-5, atol=1e-5)
    assert sums.tokens == second_only.trained_tokens


def test_same_seed_same_run_and_another_seed_another(make_trainer: Callable[..., Trainer]) -> None:
    def curve(seed: int) -> list[float]:
        trainer = make_trainer(seed=seed, n_epochs=2, batch_size=3)
        return [round(h["train_loss"], 12) for h in trainer.run().history]

    first = curve(5)
    assert first == curve(5)
    assert first != curve(6)


def test_memory_plan_turns_on_checkpointing_then_refuses(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer()
    model, device = trainer.model, torch.device("cpu")
    roomy = memory.plan_memory(model, device, bf16=False, longest_example=200)
    assert not roomy.gradient_checkpointing and 200 <= roomy.pass_tokens <= memory.CPU_PASS_TOKENS
    fixed = memory.model_state_bytes(model)
    per_token = memory.activation_bytes_per_token(model.config, bf16=False, checkpointing=False)
    monkeypatch.setattr(memory, "available_memory", lambda _: int((fixed + 100 * per_token) / 0.6))
    tight = memory.plan_memory(model, device, bf16=False, longest_example=200)
    assert tight.gradient_checkpointing and tight.pass_tokens >= 200
    monkeypatch.setattr(memory, "available_memory", lambda _: fixed)
    with pytest.raises(OutOfMemoryRisk, match="Lower training.max_length"):
        memory.plan_memory(model, device, bf16=False, longest_example=200)


def test_training_on_cuda_leaves_cudnn_attention_out() -> None:
    """cuDNN re-plans attention for every new sequence length; training runs flash or efficient."""
    with training_sdpa_backends(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    with training_sdpa_backends(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_cpu_training_bounds_onednn_kernel_caches_unless_the_user_set_them(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in memory.KERNEL_CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if make_trainer().device.type != "cpu":
        pytest.skip("oneDNN runs the CPU's matmuls only")
    for variable in memory.KERNEL_CACHE_VARIABLES:
        assert os.environ[variable] == str(memory.ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")
    make_trainer()
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"
