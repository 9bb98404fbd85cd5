"""The serving kernels build wherever they can: the kernel tests skip without them, so a C file that no
longer compiles must fail here rather than pass everything by skipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tunehouse.serve.batch import kernels


def test_the_kernels_build_wherever_there_is_a_c_compiler() -> None:
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on PATH: the batched pass runs in PyTorch")
    library = kernels.library()
    assert library is not None, "kernels.c or blocks.c did not compile (see the warning logged)"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "avx512_bf16" in cpuinfo.read_text():
        assert library.block_matmul_available()  # the CPU has AVX-512 BF16: the blocks are multiplied
