"""Exact token counts for byte-level BPE tokenizers, from a cache of per-word counts.

A GPT-2-style byte-level tokenizer first cuts text into pre-tokens with a regex, then runs BPE on
each pre-token on its own. No pre-token contains a non-space character followed by a space, so a
space that follows a non-whitespace character always starts a new pre-token, and cutting the text
there cannot change the result: the token count of a text is the sum of the counts of its
space-separated pieces. Text is mostly a few thousand distinct pieces repeated, so after a warm-up
almost every piece is a dict hit and counting runs at `str.split` speed instead of the BPE's.

Only tokenizers whose pipeline keeps that property qualify (`piece_counting_applies`); the others
are counted exactly by the tokenizer itself, in batches. `tests/data/test_tokens.py` checks the
counts against `tokenizer(text)` on adversarial text.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A space preceded by a non-whitespace character: a pre-token boundary (Python's \s covers every
# character the tokenizer's Unicode-aware \s does, so \S here is never whitespace there).
_BOUNDARY = re.compile(r"(?<=\S) ")
_UNSAFE_SPACE = re.compile(r"\s ")  # when absent, every space is a boundary and str.split suffices
CACHE_LIMIT = 400_000  # pieces kept per cache (~40 MB); cleared when full, so memory stays bounded


def _safe_pre_tokenizer(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return False
    if spec.get("type") == "Sequence":
        return all(_safe_pre_tokenizer(part) for part in spec.get("pretokenizers", []))
    if spec.get("type") == "ByteLevel":
        return spec.get("use_regex", True) and not spec.get("add_prefix_space", False)
    return spec.get("type") == "Digits"


def piece_counting_applies(backend: Any) -> bool:
    """True for tokenizers (a `tokenizers.Tokenizer`) where counting by space-separated pieces is exact."""
    spec = json.loads(backend.to_str())
    normalizer = spec.get("normalizer")
    model = spec.get("model") or {}
    has_byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    added_ok = all(
        " " not in token["content"] and not (token["lstrip"] or token["rstrip"] or token["single_word"])
        for token in spec.get("added_tokens", [])
    )
    return (
        (normalizer is None or normalizer.get("type") == "NFC")
        and _safe_pre_tokenizer(spec.get("pre_tokenizer"))
        and has_byte_level
        and model.get("type") == "BPE"
        and not model.get("dropout")
        and added_ok
    )


class _PieceCounts(dict):
    """piece -> token count of `prefix + piece`; a missing piece is counted by the tokenizer on lookup.

    Counting on lookup (`__missing__`) keeps the hot path a single `sum(map(...))` in C: no
    exception, no second pass, and the tokenizer only ever sees pieces it has not seen before.
    """

    def __init__(self, backend: Any, prefix: str) -> None:
        super().__init__()
        self.backend = backend
        self.prefix = prefix

    def __missing__(self, piece: str) -> int:
        if len(self) >= CACHE_LIMIT:
            self.clear()
        count = len(self.backend.encode(self.prefix + piece, add_special_tokens=False).ids)
        self[piece] = count
        return count


class PieceCounter:
    """Token counts of texts, as `len(tokenizer(text, add_special_tokens=False).input_ids)`."""

    def __init__(self, backend: Any, use_pieces: bool | None = None) -> None:
        self.backend = backend
        self.use_pieces = piece_counting_applies(backend) if use_pieces is None else use_pieces
        self._first = _PieceCounts(backend, "")  # a piece at the start of a text
        self._spaced = _PieceCounts(backend, " ")  # a piece after a boundary space

    def _encode_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def count_many(self, texts: list[str]) -> list[int]:
        """Token counts of each text, in order."""
        if not self.use_pieces:
            return self._encode_counts(texts)
        first, spaced = self._first.__getitem__, self._spaced.__getitem__
        counts = []
        for text in texts:
            if not text:
                counts.append(0)
                continue
            pieces = _BOUNDARY.split(text) if _UNSAFE_SPACE.search(text) else text.split(" ")
            counts.append(first(pieces[0]) + sum(map(spaced, pieces[1:])))
        return counts
