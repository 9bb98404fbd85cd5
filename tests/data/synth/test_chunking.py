"""Passages sized in the generator's tokens, overlapping, cut at sentence ends, with exact character spans."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.synth.conftest import ARTICLES
from tunehouse.data.synth.chunking import ApproximateTokens, ModelTokens, chunk_document, count_tokens, token_measure
from tunehouse.data.synth.documents import Document
from tunehouse.errors import InvalidValue

TEXT = "\n\n".join(ARTICLES.values())


def test_the_catalog_models_own_tokenizer_measures_passages(registered_tokenizer: str, tokenizer) -> None:
    measure = token_measure(registered_tokenizer, "http://127.0.0.1:8000/v1")
    assert isinstance(measure, ModelTokens) and measure.name == f"{registered_tokenizer}'s tokenizer"
    document = Document(Path("towns.txt"), "text", TEXT)
    chunks = chunk_document(document, measure, size=64, overlap=16)
    assert len(chunks) > 4
    for chunk in chunks:
        assert chunk.text == TEXT[chunk.start : chunk.end] and chunk.text == chunk.text.strip()
        assert len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) <= 64 + 1  # a cut may merge a space
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.start < after.start < before.end <= after.end  # overlapping, moving forward
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT.rstrip())
    ends = [TEXT[c.end - 1] for c in chunks[:-1]]
    assert sum(end in ".!?" for end in ends) >= len(ends) - 1  # cut where sentences end


def test_models_elsewhere_or_unknown_here_are_measured_by_the_approximation(
    registered_tokenizer: str, tokenizer
) -> None:
    assert isinstance(token_measure(registered_tokenizer, "https://api.example.com/v1"), ApproximateTokens)
    measure = token_measure("no-such-model", "http://localhost:8000/v1")
    assert isinstance(measure, ApproximateTokens)
    real = len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert real <= count_tokens(measure, TEXT) <= 1.3 * real  # a little over, never under, for English prose


def test_sizes_are_checked() -> None:
    document = Document(Path("a.txt"), "text", "One two three.")
    with pytest.raises(InvalidValue, match="overlap smaller than it"):
        chunk_document(document, ApproximateTokens(), size=4, overlap=4)
    assert [c.text for c in chunk_document(document, ApproximateTokens(), size=100, overlap=10)] == ["One two three."]
