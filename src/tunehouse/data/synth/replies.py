"""Lenient readers of generator replies: whatever a small model wraps its answer in, take the answer.

Each reader returns what it found, or raises Malformed saying what was missing; the generation
client then asks again (a bounded number of times, with another seed) before dropping the request.
"""

from __future__ import annotations

import re

_ITEM_MARK = re.compile(
    r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|\(?[a-zA-Z][.)]|(?:q(?:uestion)?|rewrite|paraphrase)\s*\d*\s*[:.)-])\s*",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(?:a|answer|response|rewrite|rewritten passage|passage)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"
_QUESTION_WORD = re.compile(
    r"(?:what|who|whom|whose|when|where|which|why|how|in what|in which|is|are|was|were|did|does|do|can)\s\w",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\b(10|[1-9])(?:\s*/\s*10)?\b")
_NO_ANSWER = re.compile(r"^\W*(none|n/a|unknown|not (?:stated|mentioned|in the passage))\W*$", re.IGNORECASE)


class Malformed(ValueError):
    """A reply that holds nothing of the expected shape; the message names what was expected."""


class NoAnswer(ValueError):
    """The generator said the passage does not answer the question (a reply, not a malformed one)."""


def _clean(line: str) -> str:
    return " ".join(line.strip().strip(_QUOTES).split())


def list_items(reply: str) -> list[str]:
    """The items of a numbered or bulleted list, or the reply's lines when it has no marks.

    >>> list_items('Sure! Here they are:\\n1) "Who built it?"\\n2. When?\\n\\n- Why?')
    ['Who built it?', 'When?', 'Why?']
    """
    lines = [line for line in reply.splitlines() if line.strip()]
    marked = [_clean(_ITEM_MARK.sub("", line, count=1)) for line in lines if _ITEM_MARK.match(line)]
    items = marked or [_clean(line) for line in lines]
    return [item for item in items if item]


def is_question(text: str) -> bool:
    """Ends with a question mark or starts with a question word ("what", "in which", "did"...)."""
    return text.rstrip().endswith("?") or bool(_QUESTION_WORD.match(text.strip()))


def read_questions(reply: str, n: int) -> list[str]:
    """Up to `n` distinct questions: list items that end with '?' or start with a question word.

    >>> read_questions("Here you go:\\n1. Who built it?\\n2. Name the architect\\n3. when was it built", 3)
    ['Who built it?', 'when was it built']
    """
    questions = [item for item in list_items(reply) if is_question(item)]
    unique = list(dict.fromkeys(questions))[:n]
    if not unique:
        raise Malformed("no numbered questions in the reply")
    return unique


def read_answer(reply: str) -> str:
    """The answer's first paragraph, without an `Answer:` label or quotes; NoAnswer for `NONE`."""
    paragraphs = [p for p in re.split(r"\n\s*\n", reply.strip()) if p.strip()]
    if not paragraphs:
        raise Malformed("an empty reply")
    answer = _clean(_LABEL.sub("", paragraphs[0].strip(), count=1))
    if _NO_ANSWER.match(answer):
        raise NoAnswer(answer)
    if not re.search(r"\w", answer):
        raise Malformed("no answer text in the reply")
    return answer


def read_paraphrases(reply: str, n: int) -> list[str]:
    """Up to `n` distinct rephrasings, one per list item."""
    items = list(dict.fromkeys(_LABEL.sub("", item) for item in list_items(reply)))
    found = [item for item in items if len(item.split()) >= 2][:n]
    if not found:
        raise Malformed("no rephrasings in the reply")
    return found


def read_rewrite(reply: str, original: str) -> str:
    """The rewritten passage: the reply without a label, between a third and three times the original's length."""
    text = _LABEL.sub("", reply.strip(), count=1).strip().strip(_QUOTES).strip()
    if not len(original) / 3 <= len(text) <= 3 * len(original):
        raise Malformed(f"a rewrite of {len(text)} characters for a passage of {len(original)}")
    return text


def read_rating(reply: str) -> int:
    """The first rating from 1 to 10 in the reply ("8", "Rating: 8/10").

    >>> read_rating("Rating: 8/10 because it is right")
    8
    """
    match = _NUMBER.search(reply)
    if not match:
        raise Malformed("no rating from 1 to 10 in the reply")
    return int(match.group(1))
