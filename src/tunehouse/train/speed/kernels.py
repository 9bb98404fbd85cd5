"""The RMSNorm's and SwiGLU's element-wise passes, attention's probabilities in backward, and a
packed pass's gathers into attention's rows and back (with the rotary embedding), as fused CPU
kernels, compiled once per machine by AOTInductor (PyTorch's ahead-of-time compiler) and loaded
as shared libraries.

Written as tensor code, the bf16 RMSNorm of a training pass runs about eight kernels forward and
twelve back (widening copies, multiplies, a reduction, narrowing copies), each a pass over
`tokens × hidden` values: on the 2-core AMX machine, 1.46 ms forward and 2.94 ms backward for
1,000 tokens of 576, against 0.14 and 0.22 ms for the same arithmetic compiled into one loop each.
SwiGLU's `silu(gate) · up` and its backward (four operations over `tokens × intermediate`) likewise.
In-process A/B on the training bench (the same passes in two processes, taking turns): passes take
0.95 of the time. Attention's backward recomputes its probabilities from the forward's log-sum-exp
in one pass (`attention_probabilities`): 0.85-0.94 of that backward's time, 2 rows of 558 tokens to
one of 1,000. A packed pass's queries and keys gathered into rows and rotated (`rope_rows`), and
their gradients gathered back and rotated back (`rope_tokens_back`), take one pass each where the
eager code takes four (2 rows of 558 tokens, 9 heads: 0.56 → 0.16 ms forward, 0.9 → 0.13 back);
the plain gathers of the outputs and their gradients, 0.44 → 0.05 and 0.48 → 0.05 ms. Whole
epochs of the training bench, in turn in one process: 0.954 of the time. Compiling on the fly
(`torch.compile`) costs ~7 s per process even from a warm cache, longer than it saves on a short
job; a library compiled ahead of time loads in a millisecond.

`make install` builds the libraries (`python -m tunehouse.train.cpu_kernels`, about two minutes;
it needs a C++ compiler) into `Settings.kernels_dir`, named by a hash of the PyTorch version and the
module's source. Where a library is missing or fails to load, `kernel` returns None and the
layers run their eager code, so training never depends on the build. The functions here are what
is compiled, and the reference the tests hold the libraries to.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.config import settings


def norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LlamaRMSNorm on `[tokens, hidden]`: `weight · (x · rstd).to(x.dtype)`, and `rstd` (fp32)."""
    x32 = x.float()
    rstd = torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    return (x32 * rstd).to(x.dtype) * weight, rstd


def norm_output(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """`norm_forward`'s output again, from what the norm keeps for backward."""
    return (x.float() * rstd).to(x.dtype) * weight


def norm_input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """The gradient of `norm_forward` with respect to `x` (the weight's is not asked for: frozen).

    d/dx of x·rstd(x) is `s − x·rstd²·mean(s·x)` with `s = rstd·d`; `d = grad · weight` is rounded
    to `x`'s dtype first, as autograd rounds the gradient of the narrowing copy."""
    d = (grad * weight).float()
    x32 = x.float()
    scaled = d * rstd
    coefficient = (scaled * x32).mean(-1, keepdim=True) * rstd.square()
    return (scaled - x32 * coefficient).to(x.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) · up`, the input of a SwiGLU MLP's down projection."""
    return F.silu(gate) * up


def swiglu_grads(d_h: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """From `swiglu`'s output gradient: the gradients of `gate` and `up`, and `swiglu`'s output
    again (a LoRA down projection's A gradient needs it)."""
    # silu and its derivative in fp32 from one exponential, as PyTorch's own kernels compute them
    # for bf16 (`x / (1 + e^-x)`, and `σ · (1 + x · (1 − σ))` with `σ = 1 / (1 + e^-x)`); the
    # decomposition the compiler would use instead rounds each step to bf16 and takes e^-x twice
    x = gate.float()
    denominator = 1 + torch.exp(-x)
    silu_gate = (x / denominator).to(gate.dtype)
    sigmoid = 1 / denominator
    d_gate = ((d_h * up).float() * sigmoid * (1 + x * (1 - sigmoid))).to(gate.dtype)
    return d_gate, d_h * silu_gate, silu_gate * up


def attention_probabilities(scores: torch.Tensor, bias: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """`softmax(scores + bias)` again in attention's backward, from the log-sum-exp `lse` the fused
    forward returns: one pass, `exp(scores + bias − lse)`, where softmax takes three (maximum, sum,
    quotient) after the bias's own. `scores [rows, heads, queries, keys]`, `bias [rows, 1, queries,
    keys]`, `lse [rows, heads, queries, 1]`; computed in fp32 (float64 for float64 scores)."""
    wide = torch.float64 if scores.dtype == torch.float64 else torch.float32
    return torch.exp(scores.to(wide) + bias.to(wide) - lse.to(wide)).to(scores.dtype)


def rows_of(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A packed pass's tokens `x [tokens, heads, d]` gathered into attention's rows, `[rows, heads,
    width, d]`: slot `(r, w)` holds token `index[r, w]`, or zeros where that is negative."""
    slots = torch.where((index >= 0)[:, :, None, None], x[index.clamp(min=0)], 0)
    return slots.permute(0, 2, 1, 3).contiguous()


def tokens_of(rows: torch.Tensor, row: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """`rows_of`'s inverse: token `t` of `[rows, heads, width, d]` from slot `(row[t], column[t])`,
    `[tokens, heads, d]`."""
    return rows.permute(0, 2, 1, 3)[row, column]


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)


def rope_rows(x: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rows_of(x, index)` with the rotary embedding applied: `x · cos + [x2, x1] · sin` per slot,
    `cos` and `sin [rows, width, d]`, `sin` signed as `[−sin1, sin2]` (transformers' `x · cos +
    rotate_half(x) · sin`), in fp32 and rounded once."""
    slots = x[index].float()
    out = slots * cos[:, :, None].float() + _swap_halves(slots) * sin[:, :, None].float()
    return out.to(x.dtype).permute(0, 2, 1, 3).contiguous()


def rope_tokens_back(
    rows: torch.Tensor, row: torch.Tensor, column: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """The gradient of `rope_rows` back to the tokens: `tokens_of(rows, row, column)` rotated back,
    `g · cos + [g2, g1] · sin` with `cos` and `sin [tokens, d]`, `sin` signed as `[sin2, −sin1]`."""
    slots = tokens_of(rows, row, column).float()
    return (slots * cos[:, None].float() + _swap_halves(slots) * sin[:, None].float()).to(rows.dtype)


ROPE_HEAD_SIZES = (64, 128)
"""Head sizes the rotary kernels are compiled for: with the head size a symbol, the compiler did
not vectorize the swap of its halves (1.8 against 0.16 ms for 2 rows of 558 tokens, 9 heads of
64); other head sizes run the eager code."""

KERNELS: dict[str, Callable[..., Any]] = {
    "norm_forward": norm_forward,
    "norm_output": norm_output,
    "norm_input_grad": norm_input_grad,
    "swiglu": swiglu,
    "swiglu_grads": swiglu_grads,
    "attention_probabilities": attention_probabilities,
    "rows_of": rows_of,
    "tokens_of": tokens_of,
    **{f"rope_rows_{d}": rope_rows for d in ROPE_HEAD_SIZES},
    **{f"rope_tokens_back_{d}": rope_tokens_back for d in ROPE_HEAD_SIZES},
}
"""Every compiled function, by name; its inputs are 2D `[tokens, features]` tensors, `[features]`
weights, `[tokens, 1]` factors and 0-dim scalars, bf16 but for the fp32 factors and scalars; but
for `SHAPED`'s."""

SHAPED = frozenset(name for name in KERNELS if not name.startswith(("norm_", "swiglu")))
"""Kernels whose inputs keep their own shapes (4D, broadcast against each other; index tensors),
rather than being read as `[tokens, features]`."""

_TRACE_TOKENS, _TRACE_FEATURES = 64, 32
_TRACE_ROWS, _TRACE_HEADS, _TRACE_QUERIES, _TRACE_KEYS = 3, 9, 301, 557
"""The sizes the kernels are traced at; traced as symbols, so any size runs. The compiler splits
the work between threads by the traced sizes: traced at 3 × 5 × 7 × 11, the attention kernel ran
one row of 9 × 500 × 1,000 on one thread (6.98 ms, 2.80 traced at these sizes)."""


def _example_inputs(name: str) -> tuple[torch.Tensor, ...]:
    """Inputs to trace `name` with; the attention-row kernels' rows are `_TRACE_QUERIES` wide."""
    bf16 = torch.bfloat16
    x = torch.randn(_TRACE_TOKENS, _TRACE_FEATURES, dtype=bf16)
    weight, rstd = torch.ones(_TRACE_FEATURES, dtype=bf16), torch.ones(_TRACE_TOKENS, 1)
    if name.startswith("rope_"):
        dim = int(name.rsplit("_", 1)[1])
        tokens = torch.randn(_TRACE_TOKENS, _TRACE_HEADS, dim, dtype=bf16)
        rows = torch.randn(_TRACE_ROWS, _TRACE_HEADS, _TRACE_QUERIES, dim, dtype=bf16)
        if name.startswith("rope_rows"):
            table = torch.randn(_TRACE_ROWS, _TRACE_QUERIES, dim, dtype=bf16)
            return tokens, _trace_index(), table, torch.randn_like(table)
        table = torch.randn(_TRACE_TOKENS, dim, dtype=bf16)
        return (rows, *_trace_slots(), table, torch.randn_like(table))
    return {
        "norm_forward": (x, weight, torch.tensor(1e-5)),
        "norm_output": (x, weight, rstd),
        "norm_input_grad": (torch.randn_like(x), x, weight, rstd),  # distinct tensors: not traced as one
        "swiglu": (x, torch.randn_like(x)),
        "swiglu_grads": (x, torch.randn_like(x), torch.randn_like(x)),
        "attention_probabilities": (
            torch.randn(_TRACE_ROWS, _TRACE_HEADS, _TRACE_QUERIES, _TRACE_KEYS, dtype=bf16),
            torch.zeros(_TRACE_ROWS, 1, _TRACE_QUERIES, _TRACE_KEYS, dtype=bf16),
            torch.ones(_TRACE_ROWS, _TRACE_HEADS, _TRACE_QUERIES, 1),
        ),
        "rows_of": (torch.randn(_TRACE_TOKENS, _TRACE_HEADS, _TRACE_FEATURES, dtype=bf16), _trace_index()),
        "tokens_of": (
            torch.randn(_TRACE_ROWS, _TRACE_HEADS, _TRACE_QUERIES, _TRACE_FEATURES, dtype=bf16),
            *_trace_slots(),
        ),
    }[name]


def _trace_index() -> torch.Tensor:
    return torch.randint(-1, _TRACE_TOKENS, (_TRACE_ROWS, _TRACE_QUERIES))


def _trace_slots() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, _TRACE_ROWS, (_TRACE_TOKENS,)), torch.randint(0, _TRACE_QUERIES, (_TRACE_TOKENS,))


def _dynamic_shapes(name: str, inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any] | None, ...]:
    """Every token, feature, row, head, query and key dimension of `inputs` as a symbol (a pass
    may have a single row); a rotary kernel's head size (the last dimension of its values and
    tables, 64 or 128; not of its index tensors) stays as traced."""
    Dim = torch.export.Dim
    sizes = {_TRACE_TOKENS: Dim("tokens", min=2), _TRACE_FEATURES: Dim("features", min=2)}
    for size, symbol in (
        (_TRACE_ROWS, "rows"),
        (_TRACE_HEADS, "heads"),
        (_TRACE_QUERIES, "queries"),
        (_TRACE_KEYS, "keys"),
    ):
        sizes[size] = Dim(symbol, min=1)
    static_head = name.startswith("rope_")

    def symbolic(t: torch.Tensor, i: int) -> bool:
        return t.shape[i] in sizes and not (static_head and t.is_floating_point() and i == t.dim() - 1)

    return tuple({i: sizes[n] for i, n in enumerate(t.shape) if symbolic(t, i)} or None for t in inputs)


@functools.cache
def _source_key() -> str:
    """Changes with PyTorch and with the functions: a stale library is never loaded."""
    text = torch.__version__ + inspect.getsource(sys.modules[__name__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def library_path(name: str, directory: Path | None = None) -> Path:
    return (directory or settings().kernels_dir) / f"{name}-{_source_key()}.so"


class _Module(torch.nn.Module):
    def __init__(self, function: Callable[..., Any]) -> None:
        super().__init__()
        self.function = function

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.function(*inputs)


def build(directory: Path | None = None) -> list[Path]:
    """Compile every kernel missing from `directory` (default `Settings.kernels_dir`); returns the
    libraries.

    Intermediate roundings are kept as written (`emulate_precision_casts`), so a compiled kernel
    computes what its eager function does, up to the order of the reductions' sums."""
    paths = []
    for name, function in KERNELS.items():
        target = library_path(name, directory)
        paths.append(target)
        if target.exists():  # named by the source's hash: never stale
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        inputs = _example_inputs(name)
        program = torch.export.export(_Module(function), inputs, dynamic_shapes=(_dynamic_shapes(name, inputs),))
        with tempfile.TemporaryDirectory() as tmp, torch._inductor.config.patch(emulate_precision_casts=True):
            package = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(tmp) / f"{name}.pt2"))
            with zipfile.ZipFile(package) as archive:
                (member,) = [m for m in archive.namelist() if m.endswith(".wrapper.so")]
                partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
                partial.write_bytes(archive.read(member))
                partial.replace(target)  # a reader never sees half a library
    return paths


@functools.cache
def kernel(name: str) -> Callable[..., Any] | None:
    """The compiled `name` if its library is built and loads, else None (the caller runs its
    eager code)."""
    path = library_path(name)
    if not path.exists():
        return None
    try:
        runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(path), 1)
    except RuntimeError:
        return None

    def run(*inputs: torch.Tensor) -> Any:
        """Inputs of two or more dimensions are read as `[tokens, ·]` (every leading dimension a
        token's); outputs get the first input's leading dimensions back. `SHAPED` kernels take
        and give their tensors as they are."""
        if name in SHAPED:
            outputs = runner.run([t.contiguous() for t in inputs])
            return outputs[0] if len(outputs) == 1 else tuple(outputs)
        leading = inputs[0].shape[:-1]
        rows = [(t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t).contiguous() for t in inputs]  # traced so
        outputs = [t.view(*leading, t.shape[-1]) for t in runner.run(rows)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    run.__doc__ = f"{name}, compiled ({path})"
    return run


def kernel_for(name: str, *tensors: torch.Tensor) -> Callable[..., Any] | None:
    """`kernel(name)` where it takes these tensors (the kernels are compiled for bf16 on a CPU),
    else None: what every call site asks before choosing between the kernel and its eager code."""
    if all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in tensors):
        return kernel(name)
    return None


def main() -> int:
    try:
        paths = build()
    except Exception as error:  # no compiler, an unsupported platform: training runs the eager code
        print(f"CPU kernels not built ({type(error).__name__}: {error}); training uses eager PyTorch for them.")
        return 0
    print(f"CPU kernels built: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
