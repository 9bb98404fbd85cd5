"""The serving engine's compiled passes (`serve/batch/kernels.c`), against PyTorch's own operations."""

from __future__ import annotations

import ctypes
import random

import pytest
import torch
import torch.nn.functional as F

from tunehouse.serve.batch import kernels
from tunehouse.serve.batch.kv import CacheShape, SequenceCache

LIBRARY = kernels.library()
pytestmark = pytest.mark.skipif(LIBRARY is None, reason="no C compiler: the batched pass runs in PyTorch")
HEADS, KV_HEADS, HEAD_DIM, LAYERS = 6, 2, 32, 2
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def lib() -> ctypes.CDLL:
    assert LIBRARY is not None
    return LIBRARY


class Rows:
    """Sequences of random keys and values fed to `kernels.attention` in chunks, as the engine's steps do."""

    def __init__(
        self, dtype: torch.dtype, lengths: list[int], seed: int = 0, library: ctypes.CDLL | None = None
    ) -> None:
        self.dtype = dtype
        self.library = library or lib()
        self.shape = CacheShape(LAYERS, KV_HEADS, HEAD_DIM, dtype, torch.device("cpu"), blocked_keys=True)
        self.caches = [SequenceCache(self.shape) for _ in lengths]
        # Every position's q, k and v, per layer: [layers, length, heads or kv heads, head_dim]; row i's
        # from seed + i, so two Rows with one seed share their first row.
        self.q, self.k, self.v = [], [], []
        for index, n in enumerate(lengths):
            generator = torch.Generator().manual_seed(seed + index)
            self.q.append(torch.randn(LAYERS, n, HEADS, HEAD_DIM, generator=generator).to(dtype))
            self.k.append(torch.randn(LAYERS, n, KV_HEADS, HEAD_DIM, generator=generator).to(dtype))
            self.v.append(torch.randn(LAYERS, n, KV_HEADS, HEAD_DIM, generator=generator).to(dtype))

    def step(self, spans: dict[int, tuple[int, int]]) -> dict[int, torch.Tensor]:
        """Attend positions `start … end` of each row named, every layer; each row's output `[layers,
        positions, heads, head_dim]`."""
        order = list(spans)
        meta, first = [], 0
        for index in order:
            start, end = spans[index]
            cache = self.caches[index]
            assert cache.length == start
            cache.reserve(end)
            meta.append([cache.kv.data_ptr(), cache.kv.shape[3], start, first, end - start])
            first += end - start
        table = torch.tensor(meta, dtype=torch.int64)
        outputs: dict[int, list[torch.Tensor]] = {index: [] for index in order}
        for layer in range(LAYERS):
            # q, k and v as views of one packed row per token, as the forward pass hands them over.
            packed = torch.cat(
                [
                    torch.cat(
                        [part[index][layer, slice(*spans[index])].flatten(1) for part in (self.q, self.k, self.v)], 1
                    )
                    for index in order
                ]
            )
            q_end, k_end = HEADS * HEAD_DIM, (HEADS + KV_HEADS) * HEAD_DIM
            q = packed[:, :q_end].view(-1, HEADS, HEAD_DIM)
            k = packed[:, q_end:k_end].view(-1, KV_HEADS, HEAD_DIM)
            v = packed[:, k_end:].view(-1, KV_HEADS, HEAD_DIM)
            out = kernels.attention(self.library, table, layer, q, k, v, HEAD_DIM**-0.5)
            for (index, (start, end)), offset in zip(spans.items(), table[:, 3].tolist(), strict=True):
                outputs[index].append(out[offset : offset + end - start])
        for index in order:
            self.caches[index].length = spans[index][1]
        return {index: torch.stack(parts) for index, parts in outputs.items()}

    def reference(self, index: int) -> torch.Tensor:
        """Causal attention over row `index`'s every position by PyTorch, in float64."""
        q, k, v = (part[index].double().transpose(1, 2) for part in (self.q, self.k, self.v))  # [layers, heads, n, d]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=HEAD_DIM**-0.5)
        return out.transpose(1, 2)


@pytest.fixture(scope="module")
def without_bf16_dot(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The kernels as a CPU without AVX-512 BF16 runs them: bf16 keys converted to float32 first."""
    target = tmp_path_factory.mktemp("kernels") / "portable.so"
    kernels.build(target, ("-mno-avx512bf16",))
    return kernels.load(target)


@pytest.mark.parametrize(
    ("dtype", "portable"), [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)]
)
def test_attention_over_chunks_and_decode_steps_matches_pytorch(
    dtype: torch.dtype, portable: bool, request: pytest.FixtureRequest
) -> None:
    rows = Rows(dtype, [70, 41, 5], library=request.getfixturevalue("without_bf16_dot") if portable else None)
    got = {index: [] for index in range(3)}
    for spans in ({0: (0, 40), 1: (0, 33)}, {0: (40, 69), 1: (33, 40), 2: (0, 5)}, {0: (69, 70), 1: (40, 41)}):
        for index, out in rows.step(spans).items():
            got[index].append(out)
    for index in range(3):
        whole = torch.cat(got[index], dim=1).double()
        assert (whole - rows.reference(index)).abs().max() < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_s_attention_is_the_same_bits_however_it_is_split_and_whatever_shares_its_step(
    dtype: torch.dtype,
) -> None:
    length = 90
    alone = Rows(dtype, [length])
    solo = alone.step({0: (0, length)})[0]
    chances = random.Random(7)
    for trial in range(4):
        crowded = Rows(dtype, [length, 37, 64])  # row 0 is the same sequence as `alone`'s
        cuts = sorted(chances.sample(range(1, length), trial + 1))
        pieces = []
        for start, end in zip([0, *cuts], [*cuts, length], strict=True):
            companions = {1: (0, 37)} if start == 0 else {2: (0, 64)} if trial and end == length else {}
            pieces.append(crowded.step({**companions, 0: (start, end)})[0])
        assert torch.equal(torch.cat(pieces, dim=1), solo), f"cut at {cuts}"


def test_blocked_keys_survive_growing_and_forking_the_cache() -> None:
    rows = Rows(torch.bfloat16, [150])
    rows.step({0: (0, 70)})  # fills past the first capacity's last whole block
    twin = rows.caches[0].fork()
    rows.caches[0].reserve(150)  # grows, copying the partly filled block too
    grown = rows.step({0: (70, 150)})[0]
    rows.caches[0] = twin
    forked = rows.step({0: (70, 150)})[0]
    assert torch.equal(grown, forked)
    assert (grown.double() - rows.reference(0)[:, 70:]).abs().max() < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_its_residual_add_matches_llama_s(dtype: torch.dtype) -> None:
    x = torch.randn(9, 96).to(dtype)
    delta = torch.randn(9, 96).to(dtype)
    weight = torch.rand(96).to(dtype)
    summed = x + delta
    x32 = summed.float()
    want = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype) * weight
    got = kernels.rms_norm(lib(), x, weight, 1e-5, delta)
    assert torch.equal(x, summed)  # the residual add happened in place
    assert (got.float() - want.float()).abs().max() <= TOLERANCE[dtype] * want.float().abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_and_swiglu_match_pytorch(dtype: torch.dtype) -> None:
    qkv = torch.randn(5, (HEADS + 2 * KV_HEADS) * HEAD_DIM).to(dtype)
    angles = torch.rand(5, HEAD_DIM // 2).repeat(1, 2) * 6
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    heads = qkv[:, : (HEADS + KV_HEADS) * HEAD_DIM].float().view(5, -1, HEAD_DIM)
    half = HEAD_DIM // 2
    rotated = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    want = heads * cos.float()[:, None] + rotated * sin.float()[:, None]
    values = qkv[:, (HEADS + KV_HEADS) * HEAD_DIM :].clone()
    kernels.rope_(lib(), qkv, HEADS + KV_HEADS, HEAD_DIM, cos, sin)
    got = qkv[:, : (HEADS + KV_HEADS) * HEAD_DIM].float().view(5, -1, HEAD_DIM)
    assert (got - want).abs().max() < TOLERANCE[dtype] * 4
    assert torch.equal(qkv[:, (HEADS + KV_HEADS) * HEAD_DIM :], values)  # v untouched

    gate_up = (torch.randn(7, 2 * 50) * 4).to(dtype)
    gate, up = gate_up.float().chunk(2, dim=-1)
    expected = F.silu(gate) * up
    assert (kernels.silu_mul(lib(), gate_up).float() - expected).abs().max() < TOLERANCE[dtype] * expected.abs().max()


def test_element_wise_passes_give_a_row_the_same_bits_alone_or_split_between_threads() -> None:
    """Past a few rows the passes split rows between threads: each row's result stays its own."""
    many = 20
    x, delta = torch.randn(many, 96).bfloat16(), torch.randn(many, 96).bfloat16()
    weight = torch.rand(96).bfloat16()
    together = kernels.rms_norm(lib(), x.clone(), weight, 1e-5, delta)
    alone = [kernels.rms_norm(lib(), x[i : i + 1].clone(), weight, 1e-5, delta[i : i + 1]) for i in range(many)]
    assert torch.equal(together, torch.cat(alone))

    gate_up = (torch.randn(many, 2 * 50) * 4).bfloat16()
    assert torch.equal(
        kernels.silu_mul(lib(), gate_up), torch.cat([kernels.silu_mul(lib(), gate_up[i : i + 1]) for i in range(many)])
    )
    qkv = torch.randn(many, (HEADS + 2 * KV_HEADS) * HEAD_DIM).bfloat16()
    angles = torch.rand(many, HEAD_DIM // 2).repeat(1, 2) * 6
    cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
    split = [qkv[i : i + 1].clone() for i in range(many)]
    kernels.rope_(lib(), qkv, HEADS + KV_HEADS, HEAD_DIM, cos, sin)
    for i, row in enumerate(split):
        kernels.rope_(lib(), row, HEADS + KV_HEADS, HEAD_DIM, cos[i : i + 1], sin[i : i + 1])
    assert torch.equal(qkv, torch.cat(split))
