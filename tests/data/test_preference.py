"""Preference (DPO) files: a prompt conversation, one preferred and one non-preferred reply."""

from __future__ import annotations

from typing import Any

import pytest

from tunehouse.data import validate_file


def pair(i: int) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Name a colour ({i})."}]},
        "preferred_output": [{"role": "assistant", "content": f"Blue {i}."}],
        "non_preferred_output": [{"role": "assistant", "content": f"I cannot {i}."}],
    }


def test_a_clean_preference_file(write_jsonl) -> None:
    report = validate_file(write_jsonl([pair(i) for i in range(10)]))
    assert (report.format, report.ok, report.problems) == ("preference", True, [])


@pytest.mark.parametrize(
    ("change", "category", "field"),
    [
        (lambda e: e.pop("non_preferred_output"), "preference_missing_key", "non_preferred_output"),
        (lambda e: e.update(input="hi"), "preference_missing_key", "input"),
        (lambda e: e["input"].update(messages=[]), "missing_messages_list", "input.messages"),
        (lambda e: e["input"]["messages"][0].update(role="bot"), "unrecognized_role", "input.messages[0].role"),
        (lambda e: e.update(preferred_output=[]), "invalid_preference_output", "preferred_output"),
        (
            lambda e: e["preferred_output"][0].update(role="user"),
            "invalid_preference_output",
            "preferred_output[0].role",
        ),
        (
            lambda e: e["non_preferred_output"][0].update(content=""),
            "invalid_preference_output",
            "non_preferred_output[0].content",
        ),
    ],
)
def test_preference_errors(write_jsonl, change, category: str, field: str) -> None:
    rows = [pair(i) for i in range(11)]
    change(rows[3])
    report = validate_file(write_jsonl(rows))
    assert [(p.line, p.category, p.field) for p in report.errors] == [(4, category, field)]


def test_identical_outputs_are_a_warning(write_jsonl) -> None:
    rows = [pair(i) for i in range(10)]
    rows[0]["non_preferred_output"] = rows[0]["preferred_output"]
    report = validate_file(write_jsonl(rows))
    assert report.ok
    assert [(p.line, p.category) for p in report.problems] == [(1, "identical_preference_outputs")]
