"""Documents cut into overlapping passages sized in the generator's tokens, with their character spans.

When the generator runs on this machine and is a model in tunehouse's catalog (by default the local
server's shipped base model), passages are measured with that model's own tokenizer. For any other
model (a hosted API, a model tunehouse does not hold) the tokenizer is unknown, so tokens are approximated as runs of at most four word characters or single
punctuation marks: about what BPE tokenizers give for English prose, slightly more, so a passage
never grows past what was asked. Cuts prefer the end of a sentence or paragraph in the second half
of a window; the next passage starts `overlap` tokens before the cut.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from tunehouse.data.synth.documents import Document
from tunehouse.errors import InvalidValue, TunehouseError

_APPROXIMATE_TOKEN = re.compile(r"\w{1,4}|[^\w\s]")
_SENTENCE_END = re.compile(r"[.!?:;)\]\"'”’]\s|\n")

Span = tuple[int, int]


class TokenMeasure(Protocol):
    name: str

    def offsets(self, text: str) -> list[Span]:
        """The character span [start, end) of each token of `text`."""
        ...


class ApproximateTokens:
    """Tokens approximated from the text alone, for generators whose tokenizer we do not have."""

    name = "approximate (4 word characters or 1 punctuation mark per token)"

    def offsets(self, text: str) -> list[Span]:
        return [match.span() for match in _APPROXIMATE_TOKEN.finditer(text)]


class ModelTokens:
    """A catalog model's own (fast) tokenizer."""

    def __init__(self, model_id: str, tokenizer: Any) -> None:
        self.name = f"{model_id}'s tokenizer"
        self.tokenizer = tokenizer

    def offsets(self, text: str) -> list[Span]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]


def _on_this_machine(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_measure(model_id: str, base_url: str) -> TokenMeasure:
    """The model's own tokenizer when the generator runs here and tunehouse's catalog holds the model.

    A hosted endpoint's `gpt-4o-mini` is not the local alias of that name, so any endpoint on another
    machine, and any model the catalog does not know, is measured by the approximation.
    """
    from tunehouse.models.catalog import load_tokenizer

    if not _on_this_machine(base_url):
        return ApproximateTokens()
    try:
        tokenizer = load_tokenizer(model_id)
    except (TunehouseError, OSError, ValueError):
        return ApproximateTokens()
    return ModelTokens(model_id, tokenizer) if getattr(tokenizer, "is_fast", False) else ApproximateTokens()


def count_tokens(measure: TokenMeasure, text: str) -> int:
    return len(measure.offsets(text))


@dataclass(frozen=True)
class Chunk:
    document: Document
    index: int  # the passage's place in its document, from 0
    start: int  # character span [start, end) in document.text
    end: int

    @property
    def text(self) -> str:
        return self.document.text[self.start : self.end]


def _cut(text: str, offsets: list[Span], first: int, last: int) -> int:
    """The token index to end a window [first, last) at: after the last sentence end in its second half."""
    for index in range(last, first + (last - first) // 2, -1):
        if _SENTENCE_END.search(text, offsets[index - 1][1] - 1, offsets[index][0] + 1):
            return index
    return last


def chunk_spans(text: str, offsets: list[Span], size: int, overlap: int) -> list[Span]:
    """Character spans of passages of at most `size` tokens, each sharing `overlap` tokens with the next.

    >>> text = "One two. Three four. Five six."
    >>> [text[a:b] for a, b in chunk_spans(text, ApproximateTokens().offsets(text), size=7, overlap=2)]
    ['One two. Three four.', 'four. Five six.']
    """
    if size < 1 or not 0 <= overlap < size:
        raise InvalidValue("The chunk size must be at least 1 and the overlap smaller than it.", param="chunk_tokens")
    spans: list[Span] = []
    first = 0
    while first < len(offsets):
        last = min(first + size, len(offsets))
        if last < len(offsets):
            last = _cut(text, offsets, first, last)
        spans.append((offsets[first][0], offsets[last - 1][1]))
        if last == len(offsets):
            break
        first = max(last - overlap, first + 1)
    return spans


def chunk_document(document: Document, measure: TokenMeasure, size: int, overlap: int) -> list[Chunk]:
    """The document's passages, with leading and trailing whitespace left out of each span."""
    chunks: list[Chunk] = []
    for start, end in chunk_spans(document.text, measure.offsets(document.text), size, overlap):
        passage = document.text[start:end]
        start += len(passage) - len(passage.lstrip())
        end -= len(passage) - len(passage.rstrip())
        if end > start:
            chunks.append(Chunk(document, len(chunks), start, end))
    return chunks
