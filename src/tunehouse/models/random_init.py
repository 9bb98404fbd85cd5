"""Randomly initialised Llama models of a named shape, with a real model's tokenizer.

Used where the weights' values do not matter but the shape does: fast tests (`tiny`, trains in
seconds) and benchmarks of a model size we do not ship (`llama-1b`, TinyLlama-1.1B's shape). Nothing
is downloaded: the tokenizer and chat template come from a local model folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class LlamaShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    dtype: torch.dtype
    """The dtype the weights are saved in (bf16 halves a large model's folder and load time)."""


SHAPES: dict[str, LlamaShape] = {
    "tiny": LlamaShape(64, 128, 2, 4, 2, 1024, True, torch.float32),
    # heads 64 wide: vLLM's CPU attention (the vLLM backend's test) takes none narrower than 32
    "tiny-h64": LlamaShape(128, 256, 2, 2, 1, 1024, True, torch.float32),
    "llama-1b": LlamaShape(2048, 5632, 22, 32, 4, 2048, False, torch.bfloat16),
}


def build_random_llama(shape_name: str, tokenizer_dir: Path, target: Path, seed: int = 0) -> Path:
    """Save a random-init Llama of `shape_name` with `tokenizer_dir`'s tokenizer into `target`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if shape_name not in SHAPES:
        raise ValueError(f"Unknown model shape {shape_name!r}; choose one of {', '.join(SHAPES)}.")
    shape = SHAPES[shape_name]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)  # transformers' `.to` is typed for a model, not a dtype
    model.to(shape.dtype).save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target
