"""Decode attention for the batched step, one compiled call per layer (`attention.c`, through ctypes).

PyTorch's attention takes one sequence per call, and a step of 16 decoding rows made 16 calls per
layer, each costing far more than its arithmetic. `attention.c` writes every decoding row's new key
and value into its cache and attends all their queries in one call, each query alone in a fixed
order, so a row's result does not depend on its companions. Prompt chunks stay on PyTorch's attention
(`llama.py`), which computes many queries at once faster.

The C file is compiled for this machine (`cc -O3 -march=native -fopenmp`, under a second) on first
use into `Settings.kernels_dir`, named by a hash of the source, the flags and the CPU's flags, and
shared by every process; where no compiler is found, `kernel()` is None and decoding rows take
PyTorch's attention too.
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

SOURCE = Path(__file__).with_name("attention.c")
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
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_flags().encode()).hexdigest()
    return settings().kernels_dir / f"serve_attention-{digest[:16]}.so"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], check=True, capture_output=True, text=True)
        os.replace(built, target)  # whole or not at all, for a process that builds beside this one


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled library, built on first use; None where it cannot be built or loaded."""
    target = _library_path()
    try:
        if not target.exists():
            _build(target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
        log.warning("Serving attends one sequence at a time: the attention kernel did not build: %s", detail)
        return None
    function = library.decode_attention
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_int, _POINTER, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    function.argtypes += [ctypes.c_float, ctypes.c_int, _POINTER, _POINTER, _POINTER, _POINTER, ctypes.c_int]
    return library


def decode(
    library: ctypes.CDLL,
    meta: torch.Tensor,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float,
) -> None:
    """Write the decoding rows' keys and values into their caches and their attention into `out`.

    `meta` is `[rows, 4]` int64: cache address, capacity, positions cached, the row's token (see
    `attention.c`); q and out `[tokens, heads, head_dim]`, k and v `[tokens, kv_heads, head_dim]`, of
    the caches' dtype (bf16 or float32); out is contiguous, and only the decoding rows' tokens of it
    are written."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    failed = library.decode_attention(
        meta.shape[0],
        meta.data_ptr(),
        layer,
        q.shape[1],
        k.shape[1],
        q.shape[2],
        scale,
        int(q.dtype == torch.bfloat16),
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    if failed == 1:
        raise MemoryError("the attention kernel could not allocate its work space")
    if failed:
        raise ValueError(f"the attention kernel does not take heads {q.shape[1]}/{k.shape[1]} of size {q.shape[2]}")
