"""What an export starts from: a catalog model resolved to its weights, adapter and tokenizer.

A LoRA fine-tune is an adapter over the weights it was trained on: the nearest ancestor that is not
itself an adapter (the base model, or a full fine-tune). Everything an exporter writes is derived
from here, and the reference it is checked against (`reference_model`) is the model as tunehouse
serves it: those weights in fp32 with the adapter on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunehouse.models.catalog import ModelInfo, get_model, tokenizer_dir, weights_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class ExportSource:
    model: ModelInfo
    weights_dir: Path
    """The full weights: the model's own, or those its adapter applies to."""
    weights_id: str
    """The catalog id of `weights_dir`'s model (a hub id for a base model registered under one)."""
    weights_are_base: bool
    """Whether `weights_dir` is a base model (which a hub may hold) rather than a full fine-tune."""
    adapter_dir: Path | None
    tokenizer_dir: Path

    @property
    def name(self) -> str:
        return self.model.id

    def config(self) -> dict[str, Any]:
        """The weights' `config.json`."""
        return dict(json.loads((self.weights_dir / "config.json").read_text()))

    def adapter_config(self) -> dict[str, Any]:
        if self.adapter_dir is None:
            return {}
        return dict(json.loads((self.adapter_dir / ADAPTER_CONFIG).read_text()))

    def weights_dtype(self) -> torch.dtype:
        """The dtype the weights are saved in (fp32 when the config does not say)."""
        config = self.config()
        name = config.get("dtype") or config.get("torch_dtype") or "float32"
        dtype = getattr(torch, str(name), None)
        return dtype if isinstance(dtype, torch.dtype) else torch.float32


def resolve_source(model_id: str) -> ExportSource:
    """The export source for `model_id` (an alias resolves); ModelNotFound (404) when there is none."""
    model = get_model(model_id)
    if not model.adapter:
        path = weights_dir(model) if model.kind == "base" else model.path
        return ExportSource(model, path, model.id, model.kind == "base", None, tokenizer_dir(model.id))
    under = get_model(model.base_model or "")
    while under.adapter:
        under = get_model(under.base_model or "")
    path = weights_dir(under) if under.kind == "base" else under.path
    return ExportSource(model, path, under.id, under.kind == "base", model.path, tokenizer_dir(model.id))


def load_tokenizer(source: ExportSource) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source.tokenizer_dir))


def load_weights(source: ExportSource, dtype: torch.dtype = torch.float32) -> Any:
    """The full weights as a transformers model in `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(source.weights_dir), dtype=dtype).eval()


def reference_model(source: ExportSource, adapter_dir: Path | None = None) -> Any:
    """The model as tunehouse serves it: fp32 weights with the adapter (or `adapter_dir`) applied."""
    model = load_weights(source)
    adapter = adapter_dir or source.adapter_dir
    if adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).eval()


def merged_model(source: ExportSource) -> Any:
    """The adapter merged into the weights, in the weights' own dtype.

    Merged in fp32 and cast once, so a bf16 base is rounded once rather than at every addition. An
    adapter that trained its own copy of `lm_head` or `embed_tokens` (PEFT's modules_to_save) leaves
    them different, so a model that tied them is untied: saving it tied would drop the trained copy.
    """
    model = reference_model(source)
    if source.adapter_dir is not None:
        model = model.merge_and_unload()
        output = model.get_output_embeddings()
        tied = getattr(model.config, "tie_word_embeddings", False)
        if tied and output is not None and output.weight is not model.get_input_embeddings().weight:
            model.config.tie_word_embeddings = False
    return model.to(source.weights_dtype()).eval()
