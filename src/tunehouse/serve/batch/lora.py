"""A PEFT LoRA adapter's weights, read straight from its folder for the batched forward pass.

Each adapted projection holds `A` (r × in) and `B` (out × r) and a scale (`lora_alpha / r`, or over
√r with rsLoRA); a row that uses the adapter adds `x @ Aᵀ @ Bᵀ · scale` to the projection's output.
Adapters this reader does not handle (DoRA, per-module ranks, adapted embeddings or heads, extra
trained modules) raise `UnsupportedAdapter`, and the engine serves them on the Hugging Face path.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

PROJECTIONS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_KEY = re.compile(r"\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class UnsupportedAdapter(Exception):
    """An adapter the batched forward pass cannot apply."""


@dataclass(frozen=True)
class LoraWeights:
    """Per (layer, projection): A, B and the scale."""

    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]
    _stacked: dict[tuple[int, tuple[tuple[str, int, int], ...]], tuple[torch.Tensor, torch.Tensor] | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def nbytes(self) -> int:
        """The memory it holds, for the adapters' budget: its modules and the stacked forms built so far."""
        pairs = [(a, b) for a, b, _ in self.modules.values()] + [p for p in self._stacked.values() if p is not None]
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in pairs)

    def stacked(
        self, layer: int, columns: tuple[tuple[str, int, int], ...]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This adapter's update for projections that share an input and are computed as one matmul
        (`columns`: each one's name and output columns), as two matmuls: `x @ Aᵀ @ Bᵀ · scale`, with
        the projections' A stacked and their B set block-diagonally on their own columns. None where
        it adapts none of them. Built on first use, and kept."""
        key = (layer, columns)
        if key not in self._stacked:
            parts = [
                (self.modules[(layer, name)], first, last)
                for name, first, last in columns
                if (layer, name) in self.modules
            ]
            if not parts:
                self._stacked[key] = None
            else:
                a = torch.cat([module[0] for module, _, _ in parts])
                b = a.new_zeros((columns[-1][2], a.shape[0]))
                rank = 0
                for (part_a, part_b, _), first, last in parts:
                    b[first:last, rank : rank + part_a.shape[0]] = part_b
                    rank += part_a.shape[0]
                self._stacked[key] = (a, b)
        return self._stacked[key]

    @property
    def scale(self) -> float:
        """The adapter's scale, the same for every module."""
        return next(iter(self.modules.values()))[2] if self.modules else 0.0


def load_lora(folder: Path, dtype: torch.dtype, device: torch.device) -> LoraWeights:
    """The adapter in `folder` (adapter_config.json and adapter_model.safetensors)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise UnsupportedAdapter("only plain LoRA adapters are batched")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("modules_to_save"):
        raise UnsupportedAdapter("per-module ranks and extra trained modules are not batched")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None or match.group(2) not in PROJECTIONS:
            raise UnsupportedAdapter(f"the adapter trains {key}, which is not a Llama projection")
        halves.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = tensor
    modules = {}
    for where, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise UnsupportedAdapter(f"the adapter's layer {where[0]} {where[1]} lacks lora_A or lora_B")
        modules[where] = (pair["A"].to(device, dtype), pair["B"].to(device, dtype), scale)
    return LoraWeights(modules)
