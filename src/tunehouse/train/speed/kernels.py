"""Fused CPU kernels, compiled once per machine by AOTInductor (PyTorch's ahead-of-time compiler)
and loaded as shared libraries: the RMSNorm's and SwiGLU's element-wise passes, attention's
probabilities in backward, and a packed pass's gathers into attention's rows and back (with the
rotary embedding). Each replaces several eager operations, each a full pass over the tensor, with
one loop; compiling on the fly (`torch.compile`) would cost seconds per process, more than a short
job saves, where a library compiled ahead of time loads in a millisecond.

What is compiled is the arithmetic in `reference.py`; this module is only the build system. `make
install` builds the libraries (`python -m tunehouse.train.speed.kernels`, about two minutes; it
needs a C++ compiler) into `Settings.kernels_dir`, named by a hash of the PyTorch version,
`reference.py`'s source and the trace settings here, so rewording this module rebuilds nothing.
Where a library is missing or fails to load, `kernel` returns None and the layers run the eager
code, so training never depends on the build.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunehouse.config import settings
from tunehouse.train.speed import reference


@dataclass(frozen=True)
class TraceSettings:
    """How the kernels are traced. The sizes are traced as symbols, so any size runs, but the
    compiler splits the work between threads by the traced ones: too small, and a large input runs
    on one thread. The rotary kernels keep their head size static (with it a symbol, the compiler
    did not vectorize the swap of its halves); other head sizes run the eager code."""

    tokens: int = 64
    features: int = 32
    rows: int = 3
    heads: int = 9
    queries: int = 301
    keys: int = 557
    rope_head_sizes: tuple[int, ...] = (64, 128)
    emulate_precision_casts: bool = True
    """Keep the reference's intermediate roundings as written, so a kernel computes what its
    reference function does, up to the order of the reductions' sums."""


TRACE = TraceSettings()
ROPE_HEAD_SIZES = TRACE.rope_head_sizes

KERNELS: dict[str, Callable[..., Any]] = {
    "norm_forward": reference.norm_forward,
    "norm_output": reference.norm_output,
    "norm_input_grad": reference.norm_input_grad,
    "swiglu": reference.swiglu,
    "swiglu_grads": reference.swiglu_grads,
    "attention_probabilities": reference.attention_probabilities,
    "rows_of": reference.rows_of,
    "tokens_of": reference.tokens_of,
    **{f"rope_rows_{d}": reference.rope_rows for d in ROPE_HEAD_SIZES},
    **{f"rope_tokens_back_{d}": reference.rope_tokens_back for d in ROPE_HEAD_SIZES},
}
"""Every compiled reference function, by name; its inputs are 2D `[tokens, features]` tensors,
`[features]` weights, `[tokens, 1]` factors and 0-dim scalars, bf16 but for the fp32 factors and
scalars; but for `SHAPED`'s."""

SHAPED = frozenset(name for name in KERNELS if not name.startswith(("norm_", "swiglu")))
"""Kernels whose inputs keep their own shapes (4D, broadcast against each other; index tensors),
rather than being read as `[tokens, features]`."""


def _example_inputs(name: str) -> tuple[torch.Tensor, ...]:
    """Inputs to trace `name` with; the attention-row kernels' rows are `TRACE.queries` wide."""
    bf16 = torch.bfloat16
    x = torch.randn(TRACE.tokens, TRACE.features, dtype=bf16)
    weight, rstd = torch.ones(TRACE.features, dtype=bf16), torch.ones(TRACE.tokens, 1)
    if name.startswith("rope_"):
        dim = int(name.rsplit("_", 1)[1])
        tokens = torch.randn(TRACE.tokens, TRACE.heads, dim, dtype=bf16)
        rows = torch.randn(TRACE.rows, TRACE.heads, TRACE.queries, dim, dtype=bf16)
        if name.startswith("rope_rows"):
            table = torch.randn(TRACE.rows, TRACE.queries, dim, dtype=bf16)
            return tokens, _trace_index(), table, torch.randn_like(table)
        table = torch.randn(TRACE.tokens, dim, dtype=bf16)
        return (rows, *_trace_slots(), table, torch.randn_like(table))
    return {
        "norm_forward": (x, weight, torch.tensor(1e-5)),
        "norm_output": (x, weight, rstd),
        "norm_input_grad": (torch.randn_like(x), x, weight, rstd),  # distinct tensors: not traced as one
        "swiglu": (x, torch.randn_like(x)),
        "swiglu_grads": (x, torch.randn_like(x), torch.randn_like(x)),
        "attention_probabilities": (
            torch.randn(TRACE.rows, TRACE.heads, TRACE.queries, TRACE.keys, dtype=bf16),
            torch.zeros(TRACE.rows, 1, TRACE.queries, TRACE.keys, dtype=bf16),
            torch.ones(TRACE.rows, TRACE.heads, TRACE.queries, 1),
        ),
        "rows_of": (torch.randn(TRACE.tokens, TRACE.heads, TRACE.features, dtype=bf16), _trace_index()),
        "tokens_of": (
            torch.randn(TRACE.rows, TRACE.heads, TRACE.queries, TRACE.features, dtype=bf16),
            *_trace_slots(),
        ),
    }[name]


def _trace_index() -> torch.Tensor:
    return torch.randint(-1, TRACE.tokens, (TRACE.rows, TRACE.queries))


def _trace_slots() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, TRACE.rows, (TRACE.tokens,)), torch.randint(0, TRACE.queries, (TRACE.tokens,))


def _dynamic_shapes(name: str, inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any] | None, ...]:
    """Every token, feature, row, head, query and key dimension of `inputs` as a symbol (a pass
    may have a single row); a rotary kernel's head size (the last dimension of its values and
    tables, 64 or 128; not of its index tensors) stays as traced."""
    Dim = torch.export.Dim
    sizes = {TRACE.tokens: Dim("tokens", min=2), TRACE.features: Dim("features", min=2)}
    for size, symbol in (
        (TRACE.rows, "rows"),
        (TRACE.heads, "heads"),
        (TRACE.queries, "queries"),
        (TRACE.keys, "keys"),
    ):
        sizes[size] = Dim(symbol, min=1)
    static_head = name.startswith("rope_")

    def symbolic(t: torch.Tensor, i: int) -> bool:
        return t.shape[i] in sizes and not (static_head and t.is_floating_point() and i == t.dim() - 1)

    return tuple({i: sizes[n] for i, n in enumerate(t.shape) if symbolic(t, i)} or None for t in inputs)


@functools.cache
def _source_key() -> str:
    """Changes with PyTorch, the reference arithmetic and how it is traced, so a stale library is
    never loaded; nothing else in this module is hashed."""
    traced = [
        torch.__version__,
        inspect.getsource(reference),
        repr(TRACE),
        repr({name: function.__name__ for name, function in KERNELS.items()}),
        inspect.getsource(_example_inputs),
        inspect.getsource(_dynamic_shapes),
    ]
    return hashlib.sha256("\n".join(traced).encode()).hexdigest()[:16]


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
    libraries."""
    paths = []
    for name, function in KERNELS.items():
        target = library_path(name, directory)
        paths.append(target)
        if target.exists():  # named by the source's hash: never stale
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        inputs = _example_inputs(name)
        program = torch.export.export(_Module(function), inputs, dynamic_shapes=(_dynamic_shapes(name, inputs),))
        with (
            tempfile.TemporaryDirectory() as tmp,
            torch._inductor.config.patch(emulate_precision_casts=TRACE.emulate_precision_casts),
        ):
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
