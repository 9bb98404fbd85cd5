"""A Hugging Face byte-level BPE tokenizer as GGUF metadata, the way llama.cpp reads it.

llama.cpp re-implements tokenization from `tokenizer.ggml.*`: the token list and types, the merges,
the special ids, whether BOS/EOS are added, and `tokenizer.ggml.pre`, which picks the regex that
splits text before BPE. The pre-tokenizer is named from the tokenizer's own declaration (not
guessed): an unknown one is refused, since a wrong split tokenizes digits or spaces differently and
the model answers other text. The chat template goes in as `tokenizer.chat_template`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from tunehouse.errors import ExportRefused

# Hugging Face's Split regex for Llama 3's tokenizer (llama.cpp: "llama-bpe").
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _byte_level(step: dict[str, Any], *, use_regex: bool) -> bool:
    return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == use_regex


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer; ExportRefused for one it has no match for."""
    if not getattr(tokenizer, "is_fast", False):
        raise ExportRefused("GGUF export needs a fast (tokenizer.json) tokenizer.", param="format")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if (spec.get("model") or {}).get("type") != "BPE":
        raise ExportRefused(
            f"GGUF export handles byte-level BPE tokenizers; this one is {spec.get('model', {}).get('type')}.",
            param="format",
        )
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and _byte_level(steps[0], use_regex=True):
        return "gpt-2"  # GPT-2's regex, then bytes
    if (
        len(steps) == 2
        and steps[0].get("type") == "Digits"
        and steps[0].get("individual_digits")
        and _byte_level(steps[1], use_regex=True)
    ):
        return "smollm"  # one token per digit, then GPT-2's regex
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT
        and _byte_level(steps[1], use_regex=False)
    ):
        return "llama-bpe"
    raise ExportRefused(
        f"GGUF export does not know this tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}), so llama.cpp "
        "would split text differently; GPT-2, SmolLM and Llama 3 pre-tokenizers are supported.",
        param="format",
    )


def token_list(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id below `vocab_size` with its text and type; ids the tokenizer lacks are UNUSED pads."""
    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            # llama.cpp matches added tokens on the raw text, so store them as the tokenizer prints them
            token = added[i].content
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding text adds BOS and EOS, observed rather than read from one of several configs."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and full[:1] == [tokenizer.bos_token_id] != plain[:1]
    add_eos = tokenizer.eos_token_id is not None and full[-1:] == [tokenizer.eos_token_id] != plain[-1:]
    return add_bos, add_eos


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer and chat template into `writer` (`tokenizer.ggml.*`, `tokenizer.chat_template`)."""
    tokens, types = token_list(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    add_bos, add_eos = adds_special(tokenizer)
    special.add_special_token = {"bos": add_bos, "eos": add_eos}
    special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
