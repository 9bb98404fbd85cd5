"""The `merged` format: one Hugging Face folder, the adapter merged in, ready for any HF tool.

Weights are safetensors in the base model's dtype; the tokenizer files and the chat template
(`chat_template.jinja`) come along, so the folder chats the same way without tunehouse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_merged(model: Any, tokenizer: Any, out_dir: Path, name: str) -> list[Path]:
    """Save `model` (already merged, in its export dtype) and `tokenizer` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.name_or_path = name
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return sorted(p for p in out_dir.iterdir() if p.is_file())
