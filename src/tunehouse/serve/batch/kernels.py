"""The batched step's compiled passes (`kernels.c`, through ctypes): attention, RMSNorm with the
residual add before it, RoPE, and SwiGLU's gate, each one call over every token of a step.

PyTorch's attention takes one sequence per call, so a step of 16 decoding rows made 16 calls per layer
(and a prompt, cut into aligned blocks so its result would not depend on how it was split, one per 16
positions); and each element-wise operation is a call and a pass of its own, where a decode step's
tensors are so small that the calls cost far more than their arithmetic. `kernels.c` computes each
token and each query alone, by the same code wherever it falls, so a row's result does not depend on
its companions or on how its prompt was split between steps.

The C file is compiled for this machine (`cc -O3 -march=native -fopenmp`, about a second) on first use
into `Settings.kernels_dir`, named by a hash of the source, the flags and the CPU's flags, and shared by
every process. Where no C compiler is found, `library()` is None and the batched pass runs the same
steps in PyTorch (`llama.py`), more slowly.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tunehouse.config import settings

log = logging.getLogger(__name__)

SOURCES = (Path(__file__).with_name("kernels.c"), Path(__file__).with_name("blocks.c"))
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
_POINTER = ctypes.c_void_p


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


def _library_path() -> Path:
    digest = hashlib.sha256(
        b"".join(source.read_bytes() for source in SOURCES) + " ".join(FLAGS).encode() + _cpu_flags().encode()
    ).hexdigest()
    return settings().kernels_dir / f"serve_kernels-{digest[:16]}.so"


def build(target: Path, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile the sources into the library `target` (`extra_flags` after FLAGS: a test builds the
    paths a CPU without some instructions takes)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *FLAGS, *extra_flags, "-o", str(built), *map(str, SOURCES)],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(built, target)  # whole or not at all, for a process that builds beside this one


_I, _I64, _F = ctypes.c_int, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "attention": [_I, _POINTER, _I, _I, _I, _I, _F, _I, _POINTER, _POINTER, _POINTER, _I64, _I64, _POINTER, _I],
    "rms_norm": [_I64, _I64, _POINTER, _I64, _POINTER, _POINTER, _F, _I, _POINTER, _I],
    "rope": [_I64, _I, _I, _POINTER, _I64, _POINTER, _POINTER, _I, _I],
    "silu_mul": [_I64, _I64, _POINTER, _I, _POINTER, _I],
    "block_matmul": [_I64, _I64, _I64, _POINTER, _I64, _POINTER, _I, _I, _POINTER, _POINTER, _POINTER, _I64, _I, _I],
    "block_matmul_available": [],
    "layers": [
        _I,
        _POINTER,
        _I,
        _POINTER,
        _I64,
        _I64,
        _I,
        _I,
        _I,
        _I64,
        _F,
        _F,
        _POINTER,
        _POINTER,
        _POINTER,
        _POINTER,
        _I,
    ],
}


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled library, built on first use; None where it cannot be built or loaded."""
    target = _library_path()
    try:
        if not target.exists():
            build(target)
        return load(target)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
        log.warning("Serving runs its batched steps in PyTorch: the serving kernels did not build: %s", detail)
        return None


def load(path: Path) -> ctypes.CDLL:
    """The built library at `path`, each function's signature declared."""
    loaded = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        function = getattr(loaded, name)
        function.restype, function.argtypes = ctypes.c_int, argtypes
    return loaded


def _check(status: int, what: str) -> None:
    if status == 1:
        raise MemoryError(f"{what}: the serving kernel could not allocate its work space")
    if status:
        raise ValueError(f"{what}: the serving kernel does not take these shapes")


def _bf16(t: torch.Tensor) -> int:
    return int(t.dtype == torch.bfloat16)


def attention(
    lib: ctypes.CDLL,
    meta: torch.Tensor,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Write every row's keys and values into its cache, and return every query's attention over its
    row's cache up to its own position, `[tokens, heads, head_dim]`.

    `meta` is `[rows, 5]` int64: cache address, capacity, positions cached, first token, tokens (see
    `kernels.c`); q `[tokens, heads, head_dim]`, k and v `[tokens, kv_heads, head_dim]`, each with its
    heads contiguous (views of one qkv row will do), of the caches' dtype."""
    assert q.stride()[1:] == (q.shape[2], 1) and k.stride() == v.stride() and k.stride()[1:] == (k.shape[2], 1)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    status = lib.attention(
        meta.shape[0],
        meta.data_ptr(),
        layer,
        q.shape[1],
        k.shape[1],
        q.shape[2],
        scale,
        _bf16(q),
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        q.stride(0),
        k.stride(0),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    _check(status, "attention")
    return out


def rms_norm(
    lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, eps: float, delta: torch.Tensor | None = None
) -> torch.Tensor:
    """Llama's RMSNorm of each row of `x` `[rows, dim]` (rows may be strided); with `delta`
    (contiguous, like x), `x += delta` in place first — the residual add."""
    assert x.stride(1) == 1 and weight.is_contiguous() and (delta is None or delta.is_contiguous())
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    status = lib.rms_norm(
        x.shape[0],
        x.shape[1],
        x.data_ptr(),
        x.stride(0),
        None if delta is None else delta.data_ptr(),
        weight.data_ptr(),
        eps,
        _bf16(x),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    _check(status, "RMSNorm")
    return out


def rope_(lib: ctypes.CDLL, x: torch.Tensor, heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """RoPE in place on the first `heads` heads of each row of `x` `[tokens, …]` (rows may be strided),
    with each token's `cos` and `sin` `[tokens, head_dim]`."""
    assert x.stride(1) == 1 and cos.is_contiguous() and sin.is_contiguous() and cos.dtype == x.dtype
    status = lib.rope(
        x.shape[0],
        heads,
        head_dim,
        x.data_ptr(),
        x.stride(0),
        cos.data_ptr(),
        sin.data_ptr(),
        _bf16(x),
        torch.get_num_threads(),
    )
    _check(status, "RoPE")


def silu_mul(lib: ctypes.CDLL, gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gate: `silu(gate) * up` for `gate_up` `[rows, 2 × width]` (contiguous) as `[gate, up]`."""
    assert gate_up.is_contiguous()
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
    status = lib.silu_mul(rows, width, gate_up.data_ptr(), _bf16(gate_up), out.data_ptr(), torch.get_num_threads())
    _check(status, "SwiGLU")
    return out


def layers(
    lib: ctypes.CDLL,
    table: torch.Tensor,
    meta: torch.Tensor,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    shape: tuple[int, int, int, int],
    eps: float,
    scale: float,
) -> torch.Tensor:
    """Every decoder layer of a step in one call, as `llama.py` calls the passes one by one: `x`
    `[tokens, hidden]` (bf16, contiguous) is updated in place, and the last layer's MLP output, not yet
    added to it, is returned. `table` is `[layers, 22]` int64, each layer's weights as `kernels.c`'s
    `layers` reads them; `meta` as for `attention`; `shape` is (heads, kv_heads, head_dim, MLP width)."""
    assert x.dtype == torch.bfloat16 and x.is_contiguous() and cos.dtype == x.dtype and cos.is_contiguous()
    heads, kv_heads, head_dim, inner = shape
    delta = torch.empty_like(x)
    status = lib.layers(
        table.shape[0],
        table.data_ptr(),
        meta.shape[0],
        meta.data_ptr(),
        x.shape[0],
        x.shape[1],
        heads,
        kv_heads,
        head_dim,
        inner,
        eps,
        scale,
        x.data_ptr(),
        cos.data_ptr(),
        sin.data_ptr(),
        delta.data_ptr(),
        torch.get_num_threads(),
    )
    _check(status, "decoder layers")
    return delta
