"""Checks before anything is written: refuse an export that would break, saying why and what works.

Format-specific limits live beside their writers (`adapter.read_adapter`, `gguf_llama.check_llama`,
`gguf_vocab.pre_tokenizer_name`, `ollama.message_shape`); this module runs the ones a format needs,
plus the checks every format shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunehouse.errors import ExportRefused, InvalidRequest, InvalidValue
from tunehouse.models.export.gguf_llama import QUANTIZATIONS, check_llama
from tunehouse.models.export.gguf_vocab import pre_tokenizer_name
from tunehouse.models.export.ollama import message_shape
from tunehouse.models.export.source import ExportSource

FORMATS = ("adapter", "merged", "gguf", "ollama", "vllm")
ADAPTER_FORMATS = ("adapter", "vllm")
GGUF_FORMATS = ("gguf", "ollama")
TEMPLATE_FORMATS = ("merged", "gguf", "ollama")
DEFAULT_QUANTIZATION = "f16"


def check_request(fmt: str, quantization: str | None, out_dir: Path) -> str:
    """The format, quantization and output folder are usable; returns the quantization to use."""
    if fmt not in FORMATS:
        raise InvalidValue(f"Unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}.", param="format")
    if quantization is not None and fmt not in GGUF_FORMATS:
        raise InvalidValue(f"--quantization applies to the gguf and ollama formats, not {fmt}.", param="quantization")
    chosen = quantization or DEFAULT_QUANTIZATION
    if chosen not in QUANTIZATIONS:
        raise InvalidValue(
            f"Unknown quantization '{chosen}'; choose one of {', '.join(QUANTIZATIONS)}.", param="quantization"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidRequest(f"{out_dir} already exists and is not an empty folder.", param="output")
    return chosen


def check_vocabulary(config: dict[str, Any], tokenizer: Any) -> None:
    """Every token id the tokenizer can produce has a row in the model's embeddings."""
    vocab_size = int(config.get("vocab_size") or 0)
    ids = [*tokenizer.get_vocab().values(), *(i for i in tokenizer.all_special_ids if i is not None)]
    largest = max(ids, default=-1)
    if largest >= vocab_size:
        raise ExportRefused(
            f"The tokenizer and the model disagree: the tokenizer has ids up to {largest} ({len(tokenizer)} "
            f"tokens) but config.json's vocab_size is {vocab_size}, so those ids have no embedding. "
            "Fix the model folder's tokenizer or resize its embeddings before exporting.",
            param="model",
        )


def preflight(source: ExportSource, fmt: str, tokenizer: Any) -> None:
    """Refuse `fmt` for `source` when the export would break (ExportRefused, 422)."""
    config = source.config()
    check_vocabulary(config, tokenizer)
    if fmt in TEMPLATE_FORMATS and not getattr(tokenizer, "chat_template", None):
        raise ExportRefused(
            f"'{source.name}' has no chat template, so a {fmt} export would chat in no known format. "
            "Add chat_template.jinja to the base model's folder.",
            param="model",
        )
    if fmt in ADAPTER_FORMATS and source.adapter_dir is not None and not source.weights_are_base:
        raise ExportRefused(
            f"The adapter of '{source.name}' applies to the full fine-tune '{source.weights_id}', which no "
            f"model hub holds; export '{source.name}' with --format merged or gguf instead.",
            param="format",
        )
    if fmt in GGUF_FORMATS:
        check_llama(config)
        pre_tokenizer_name(tokenizer)
    if fmt == "ollama":
        message_shape(tokenizer)
