"""The `adapter` format: a PEFT folder holding only the LoRA matrices, naming its base by hub id.

vLLM (and llama.cpp's LoRA loader) take `lora_A`/`lora_B` pairs only: a full `lm_head` or
`embed_tokens` in the adapter (PEFT's `modules_to_save`) is refused there. Such a copy is dropped
when it equals the base's weights (it was never trained); a trained one is refused with a pointer to
the formats that can hold it (`merged`, `gguf`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunehouse.errors import ExportRefused
from tunehouse.models.export.source import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ExportSource, load_weights

PEFT_PREFIX = "base_model.model."
LORA_MARKERS = (".lora_A.", ".lora_B.")


@dataclass(frozen=True)
class AdapterWeights:
    config: dict[str, Any]
    lora: dict[str, torch.Tensor]
    """`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, as PEFT saves them."""
    dropped: tuple[str, ...]
    """Tensors left out because they equal the base's (untrained `modules_to_save` copies)."""

    @property
    def rank(self) -> int:
        ranks = [t.shape[0] for name, t in self.lora.items() if ".lora_A." in name]
        return max(ranks, default=int(self.config.get("r", 0)))


def module_of(name: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` → `model.layers.0.self_attn.q_proj`."""
    name = name.removeprefix(PEFT_PREFIX)
    for marker in LORA_MARKERS:
        if marker in name:
            return name.split(marker)[0]
    return name.removesuffix(".weight")


def read_adapter(source: ExportSource, fmt: str) -> AdapterWeights:
    """The adapter's LoRA matrices; ExportRefused when it holds anything `fmt` cannot carry."""
    if source.adapter_dir is None:
        raise ExportRefused(
            f"'{source.name}' is not a LoRA fine-tune (it is a {source.model.kind} model with full weights): "
            "it has no adapter to export. Use --format merged, gguf or ollama.",
            param="format",
        )
    config = source.adapter_config()
    unsupported = [
        reason
        for reason, present in (
            (f"PEFT type {config.get('peft_type')}", config.get("peft_type", "LORA") != "LORA"),
            ("DoRA (use_dora)", bool(config.get("use_dora"))),
            (f"trained biases (bias={config.get('bias')})", config.get("bias", "none") != "none"),
        )
        if present
    ]
    if unsupported:
        raise ExportRefused(
            f"The adapter of '{source.name}' uses {', '.join(unsupported)}, which {fmt} cannot hold; "
            "export it with --format merged or gguf.",
            param="format",
        )
    tensors = load_file(str(source.adapter_dir / ADAPTER_WEIGHTS))
    lora = {name: t for name, t in tensors.items() if any(m in name for m in LORA_MARKERS)}
    extra = {name: t for name, t in tensors.items() if name not in lora}
    return AdapterWeights(config, lora, _untrained(source, extra, fmt))


def _untrained(source: ExportSource, extra: dict[str, torch.Tensor], fmt: str) -> tuple[str, ...]:
    """The names in `extra` (full-module copies), if each equals the base's weights; else refuse."""
    if not extra:
        return ()
    weights = load_weights(source).state_dict()
    trained = [
        name
        for name, tensor in extra.items()
        if (base := weights.get(name.removeprefix(PEFT_PREFIX))) is None
        or base.shape != tensor.shape
        or not torch.equal(base.float(), tensor.float())
    ]
    if trained:
        modules = sorted({module_of(name) for name in trained})
        raise ExportRefused(
            f"The adapter of '{source.name}' trains whole modules besides its LoRA matrices "
            f"({', '.join(modules)}: PEFT's modules_to_save or embedding LoRA), which {fmt} cannot hold "
            "(vLLM and llama.cpp take lora_A/lora_B pairs only). Export it with --format merged or gguf, "
            "which merge them into the weights.",
            param="format",
        )
    return tuple(sorted(extra))


def write_adapter(source: ExportSource, adapter: AdapterWeights, out_dir: Path) -> list[Path]:
    """`adapter_model.safetensors` (LoRA matrices only) and `adapter_config.json` naming the base."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        **adapter.config,
        "base_model_name_or_path": source.weights_id,
        "modules_to_save": None,
        "inference_mode": True,
    }
    weights = out_dir / ADAPTER_WEIGHTS
    save_file({k: v.contiguous() for k, v in adapter.lora.items()}, str(weights), metadata={"format": "pt"})
    config_path = out_dir / ADAPTER_CONFIG
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return [weights, config_path]
