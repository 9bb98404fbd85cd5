"""Replies read leniently: numbering, bullets, labels and quotes around what was asked for are all accepted."""

from __future__ import annotations

import pytest

from tunehouse.data.synth.replies import (
    Malformed,
    NoAnswer,
    read_answer,
    read_paraphrases,
    read_questions,
    read_rating,
    read_rewrite,
)


@pytest.mark.parametrize(
    "reply",
    [
        "1. Who built the tower?\n2. When was it lit?",
        "Here are two questions:\n\n1) Who built the tower?\n2) When was it lit?\n\nHope this helps!",
        "- Who built the tower?\n- When was it lit?",
        "Question 1: Who built the tower?\nQuestion 2: When was it lit?",
        '"Who built the tower?"\n"When was it lit?"',
        "Q1. who built the tower\nQ2. When was it lit?",
    ],
)
def test_questions_in_any_common_shape(reply: str) -> None:
    assert [q.lower().rstrip("?") for q in read_questions(reply, 3)] == ["who built the tower", "when was it lit"]


def test_questions_are_capped_deduplicated_and_required() -> None:
    assert read_questions("1. A b?\n2. A b?\n3. C d?\n4. E f?", 2) == ["A b?", "C d?"]
    with pytest.raises(Malformed, match="no numbered questions"):
        read_questions("Sure! Happy to help with that.", 3)


def test_answers_lose_labels_and_quotes_and_none_means_no_answer() -> None:
    assert read_answer('Answer: "The tower was lit in 1874."\n\nLet me know!') == "The tower was lit in 1874."
    with pytest.raises(NoAnswer):
        read_answer("NONE.")
    with pytest.raises(Malformed):
        read_answer("  \n ")


def test_paraphrases_rewrites_and_ratings() -> None:
    assert read_paraphrases("1. In what year was it lit?\n2. When did the light first shine?\n3. Ok", 3) == [
        "In what year was it lit?",
        "When did the light first shine?",
    ]
    original = "The tower was lit in 1874 by Thomas Avery, the first keeper."
    assert read_rewrite("Rewritten passage: Thomas Avery, its first keeper, lit the tower in 1874.", original)
    with pytest.raises(Malformed, match="a rewrite of 3 characters"):
        read_rewrite("Ok.", original)
    assert read_rating("9") == 9 and read_rating("I'd say 7/10.") == 7
    with pytest.raises(Malformed):
        read_rating("Excellent!")
