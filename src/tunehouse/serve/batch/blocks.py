"""Weights that are block-quantized values, kept as their blocks: 4 bits (GGUF's Q4_1, `d * q + m`) or
8 bits (Q8_0, `d * q`) per weight and a float16 scale (and minimum) per 32, multiplied by `blocks.c`.
4-bit blocks can multiply inputs rounded to 8 bits per 16 values (`int8_inputs`), twice as fast as bf16
inputs, at a precision cost that `llama.py` takes only where the output is least sensitive to it.

The shipped model comes as a GGUF of such blocks, dequantized once into float32 safetensors. A decode
step reads every weight once, so its time is mostly the bytes it reads: bf16 copies of those weights are
four times the 4-bit blocks' bytes and, rounded to 8 bits of mantissa, not even the model's own values.
`quantized` finds the blocks again in a float32 weight and keeps them only where they give back every
value exactly, so no model is served less precisely than it was stored; any other weight (a full
fine-tune's, a random test model's) stays bf16.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

BLOCK = 32  # weights per block along a row (the input features)
PANEL = 32  # output columns per panel of the packed layout (`blocks.c`)
_CHUNK_ROWS = 4096  # rows checked at a time, so a vocabulary-sized matrix needs no float64 copy whole


@dataclass
class BlockWeight:
    """A `[out_features, in_features]` weight as blocks, packed as `blocks.c` reads them."""

    q: torch.Tensor  # uint8, 4 bits (two columns' nibbles a byte): [panels, in/2, 32], or [panels, in/4, 64]
    # for int8 inputs; 8 bits: [panels, in/2, 2, 32]
    scales: torch.Tensor  # float16 [panels, in/32, 32]
    mins: torch.Tensor | None  # float16 like scales (4 bits); None for 8 bits
    bits: int
    out_features: int
    in_features: int
    int8_inputs: bool  # inputs rounded to 8 bits (`blocks.c`); else multiplied in bf16

    def matmul(self, lib: ctypes.CDLL, x: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """`x @ w.T` for bf16 `x` `[rows, in_features]` (rows may be strided), in bf16 or float32."""
        assert x.dtype == torch.bfloat16 and x.stride(1) == 1 and x.shape[1] == self.in_features
        out = torch.empty((x.shape[0], self.out_features), dtype=dtype)
        status = lib.block_matmul(
            x.shape[0],
            self.in_features,
            self.out_features,
            x.data_ptr(),
            x.stride(0),
            self.q.data_ptr(),
            self.bits,
            int(self.int8_inputs),
            self.scales.data_ptr(),
            None if self.mins is None else self.mins.data_ptr(),
            out.data_ptr(),
            out.stride(0),
            int(dtype == torch.float32),
            torch.get_num_threads(),
        )
        if status:
            raise MemoryError("block matmul: out of memory") if status == 1 else ValueError("block matmul: shapes")
        return out

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The weight's rows `index` `[count]` in float32, exactly: an embedding lookup."""
        panel, column = index // PANEL, index % PANEL
        half, lane = column // 16, column % 16
        if self.bits == 4:
            per_lane = 4 if self.int8_inputs else 2  # inputs a lane holds
            nibbles = self.q.view(-1, self.in_features // per_lane, 16, per_lane).permute(0, 2, 1, 3)[panel, lane]
            q = (nibbles >> (4 * half)[:, None, None]) & 15
        else:
            pairs = self.in_features // 2
            q = self.q.view(-1, pairs, 2, 16, 2).permute(0, 2, 3, 1, 4)[panel, half, lane].view(torch.int8)
        q = q.reshape(len(index), -1, BLOCK).float()
        scales = self.scales.permute(0, 2, 1)[panel, column].float()[:, :, None]  # [count, in/32, 1]
        values = q * scales
        if self.mins is not None:
            values = values + self.mins.permute(0, 2, 1)[panel, column].float()[:, :, None]
        return values.reshape(len(index), self.in_features)


def quantized(weight: torch.Tensor, int8_inputs: bool = False) -> BlockWeight | None:
    """`weight` (float32 `[out, in]`) as 4-bit blocks, else as 8-bit blocks, if either gives back every
    value exactly; else None. `int8_inputs`: 4-bit blocks multiply inputs rounded to 8 bits."""
    out_features, in_features = weight.shape
    if weight.dtype != torch.float32 or out_features % PANEL or in_features % BLOCK:
        return None
    for bits in (4, 8):
        if _blocks(weight[:PANEL], bits) is None:  # most weights that are not block values fail at once
            continue
        parts = [_blocks(weight[i : i + _CHUNK_ROWS], bits) for i in range(0, out_features, _CHUNK_ROWS)]
        found = [part for part in parts if part is not None]
        if len(found) == len(parts):
            q, scales = torch.cat([part[0] for part in found]), torch.cat([part[1] for part in found])
            mins = torch.cat([part[2] for part in found if part[2] is not None]) if bits == 4 else None
            return _packed(q, scales, mins, bits, int8_inputs and bits == 4)
    return None


def _blocks(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(q `[rows, in]`, scales and mins `[rows, in/32]` float16) that give back `weight` exactly as
    `scale * q + min` in float32 (the dequantizer's arithmetic), or None."""
    blocks = weight.reshape(weight.shape[0], -1, BLOCK)
    if bits == 4:
        low = blocks.amin(-1)
        scales, mins = ((blocks.amax(-1) - low) / 15).half(), low.half()
        if not torch.equal(mins.float(), low):
            return None
        q = ((blocks - low[..., None]) / scales.float().clamp_min(1e-30)[..., None]).round_().clamp_(0, 15)
        rebuilt = q * scales.float()[..., None] + low[..., None]
    else:
        scales, mins = (blocks.abs().amax(-1) / 127).half(), None
        q = (blocks / scales.float().clamp_min(1e-30)[..., None]).round_().clamp_(-127, 127)
        rebuilt = q * scales.float()[..., None]
    if not torch.isfinite(scales).all() or not torch.equal(rebuilt, blocks):
        return None
    return q.to(torch.int16).reshape(weight.shape), scales, mins


def _packed(
    q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, bits: int, int8_inputs: bool
) -> BlockWeight:
    """The layout `blocks.c` reads, per panel of 32 columns: for int8 inputs in `vpdpbusd` order (per
    group of 4 inputs, 16 lanes of 4 bytes), else in `vdpbf16ps` order (per pair of inputs, the two
    16-column vectors' words); 4 bits hold the low 16 columns in the low nibbles, the high 16 in the high."""
    out_features, in_features = q.shape
    panels, per_lane = out_features // PANEL, 4 if int8_inputs else 2
    lanes = q.view(panels, 2, 16, in_features // per_lane, per_lane).permute(
        0, 3, 1, 2, 4
    )  # [panel, -, half, lane, input]
    if bits == 4:
        packed = (lanes[:, :, 0] | (lanes[:, :, 1] << 4)).to(torch.uint8).reshape(panels, -1, 16 * per_lane)
    else:
        packed = lanes.to(torch.int8).view(torch.uint8).reshape(panels, -1, 2, 32)

    def by_panel(t: torch.Tensor) -> torch.Tensor:  # [out, in/32] -> [panels, in/32, 32]
        return t.view(panels, PANEL, -1).transpose(1, 2).contiguous()

    return BlockWeight(
        packed.contiguous(),
        by_panel(scales),
        None if mins is None else by_panel(mins),
        bits,
        out_features,
        in_features,
        int8_inputs,
    )


class Checkpoint:
    """A model folder's safetensors, read a tensor at a time in the dtype they were saved in."""

    def __init__(self, folder: str) -> None:
        root = Path(folder)
        index = root / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {name: root / file for name, file in weight_map.items()}
        elif (root / "model.safetensors").exists():
            with safe_open(str(root / "model.safetensors"), framework="pt") as handle:
                self._files = dict.fromkeys(handle.keys(), root / "model.safetensors")
        else:
            self._files = {}

    def get(self, name: str) -> torch.Tensor | None:
        """The tensor `name`, or None where the folder has no such tensor."""
        file = self._files.get(name)
        if file is None:
            return None
        with safe_open(str(file), framework="pt") as handle:
            return handle.get_tensor(name)
