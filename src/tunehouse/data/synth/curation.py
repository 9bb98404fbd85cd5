"""The checks that decide which generated pairs and paraphrases are kept, each a named reason to drop.

- grounded: most of the answer's content words (stop words aside, compared by their first five
  letters, a crude stem) occur in the passage it was generated from, every number in it does, and
  the question shares at least one content word with it. A token-overlap test: cheap, explainable, and it catches the answers a small
  model invents; `--judge-model` adds a model's rating on top.
- near duplicates: MinHash estimates of the Jaccard similarity of the sets of adjacent word pairs
  (datasketch's LSH), so a run of thousands of pairs is checked without comparing every two, and
  two questions that differ in one name or number are not taken for each other.
- paraphrases: one identical to its original (or to an earlier rephrasing) after normalization
  teaches nothing new; a statement offered as the rephrasing of a question, or one that keeps too
  few of the original's content words, asks something else.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from datasketch import MinHash, MinHashLSH

from tunehouse.data.synth.replies import is_question

_WORD = re.compile(r"\w+")
STEM = 5
MINHASH_PERMUTATIONS = 64


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def words(text: str) -> list[str]:
    """Lower-cased words, accents composed."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def content_stems(text: str) -> set[str]:
    """The text's words less stop words, each cut to its first five letters.

    >>> sorted(content_stems("When was Marie Curie born in Warsaw?"))
    ['born', 'curie', 'marie', 'warsa']
    """
    stop = _stop_words()
    return {word[:STEM] for word in words(text) if word not in stop}


def support(answer: str, passage: str) -> float:
    """The share of the answer's content stems that occur in the passage (1.0 when it has none)."""
    stems = content_stems(answer)
    return len(stems & content_stems(passage)) / len(stems) if stems else 1.0


def grounding_problem(question: str, answer: str, passage: str, min_support: float) -> str | None:
    """Why a pair is not grounded in its passage, or None when it is."""
    if not content_stems(answer):
        return "answer says nothing"
    if {w for w in words(answer) if w.isdigit()} - set(words(passage)):
        return "answer has a number not in its passage"  # a wrong year or count is the commonest invention
    if support(answer, passage) < min_support:
        return "answer not grounded in its passage"
    if not content_stems(question) & content_stems(passage):
        return "question not about its passage"
    return None


def similarity(original: str, paraphrase: str) -> float:
    """The share of the original's content stems the paraphrase keeps (1.0 when the original has none).

    >>> similarity("When was Marie Curie born?", "In what year was Marie Curie born?")
    1.0
    >>> similarity("When was Marie Curie born?", "What is the capital of France?")
    0.0
    """
    stems = content_stems(original)
    return len(stems & content_stems(paraphrase)) / len(stems) if stems else 1.0


def normalized(text: str) -> str:
    return " ".join(words(text))


def paraphrase_problem(original: str, paraphrase: str, earlier: list[str], min_similarity: float) -> str | None:
    """Why a rephrasing is dropped, or None when it is kept."""
    if normalized(paraphrase) == normalized(original):
        return "paraphrase identical to the original"
    if any(normalized(paraphrase) == normalized(other) for other in earlier):
        return "paraphrase repeats another"
    if is_question(original) and not is_question(paraphrase):
        return "paraphrase is not a question"
    if similarity(original, paraphrase) < min_similarity:
        return "paraphrase too far from the original"
    return None


def shingles(text: str) -> set[str]:
    """Adjacent word pairs (the word itself for a one-word text).

    >>> sorted(shingles("The tower, the TOWER!"))
    ['the tower', 'tower the']
    """
    found = words(text)
    return {f"{a} {b}" for a, b in zip(found, found[1:], strict=False)} or set(found)


class NearDuplicates:
    """Remembers texts; says whether a new one nearly repeats one seen (estimated Jaccard of shingles ≥ threshold)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._index = MinHashLSH(threshold=threshold, num_perm=MINHASH_PERMUTATIONS)
        self._signatures: dict[str, MinHash] = {}

    def seen(self, key: str, text: str) -> bool:
        """True when `text` nearly repeats an earlier one; otherwise remember it under `key`."""
        signature = MinHash(num_perm=MINHASH_PERMUTATIONS, seed=1)
        signature.update_batch([shingle.encode() for shingle in shingles(text)])
        # LSH finds candidates; the signatures' own estimate decides, so the threshold means what it says.
        if any(signature.jaccard(self._signatures[other]) >= self.threshold for other in self._index.query(signature)):
            return True
        self._index.insert(key, signature)
        self._signatures[key] = signature
        return False
