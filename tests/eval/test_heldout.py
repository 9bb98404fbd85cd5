"""Held-out examples as eval items, and the graders that compare answers with them."""

from __future__ import annotations

import pytest

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders import validate_grader
from tunehouse.eval.heldout import answer_tokens, comparison_criteria, heldout_item, heldout_items


def test_a_chat_example_asks_what_precedes_its_last_reply() -> None:
    example = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "Blue.", "weight": 1},
        ]
    }
    item = heldout_item(example)
    assert item == {
        "input": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Colour?"},
        ],
        "expected": "Blue.",
    }


def test_a_legacy_example_keeps_its_raw_prompt_and_exact_completion() -> None:
    assert heldout_item({"prompt": "Great film ->", "completion": " positive"}) == {
        "input": "Great film ->",
        "expected": " positive",
    }


def test_a_preference_example_expects_its_preferred_reply() -> None:
    example = {
        "input": {"messages": [{"role": "user", "content": "Pick"}]},
        "preferred_output": [{"role": "assistant", "content": "This one"}],
        "non_preferred_output": [{"role": "assistant", "content": "That one"}],
    }
    assert heldout_item(example) == {"input": [{"role": "user", "content": "Pick"}], "expected": "This one"}


def test_examples_without_an_answer_are_skipped_and_the_limit_counts_items() -> None:
    examples = [
        {"messages": [{"role": "user", "content": "no reply"}]},
        {"prompt": "a", "completion": "1"},
        {"messages": [{"role": "assistant", "content": "reply first"}]},
        {"prompt": "b", "completion": "2"},
        {"prompt": "c", "completion": "3"},
    ]
    assert [i["expected"] for i in heldout_items(examples, limit=2)] == ["1", "2"]
    assert len(heldout_items(examples)) == 3


def test_comparison_criteria_are_valid_graders_of_the_answer_against_expected() -> None:
    exact, bleu = comparison_criteria(["string_check", "bleu"], threshold=0.5)
    assert (exact["name"], exact["operation"], exact["reference"]) == ("Exact match", "eq", "{{item.expected}}")
    assert (bleu["evaluation_metric"], bleu["pass_threshold"]) == ("bleu", 0.5)
    validate_grader(exact)
    validate_grader({k: v for k, v in bleu.items() if k != "pass_threshold"})
    with pytest.raises(InvalidRequest, match="Unknown grader 'exactly'"):
        comparison_criteria(["exactly"])


def test_answer_tokens_fit_the_longest_answer_within_bounds() -> None:
    assert answer_tokens([{"expected": "yes"}]) == 17  # 3 // 2 + 16
    assert answer_tokens([{"expected": "x" * 100}, {"expected": ""}]) == 66
    assert answer_tokens([{"expected": "x" * 10_000}]) == 256
