"""Every chat problem category, reported with its line, field and fix."""

from __future__ import annotations

import pytest

from tests.data.samples import chat, chats
from tunehouse.data import validate_file


def problems_at(report, line: int) -> list[tuple[str, str | None]]:
    return [(p.category, p.field) for p in report.problems if p.line == line]


def test_a_clean_file_is_ok(write_jsonl) -> None:
    report = validate_file(write_jsonl(chats(12)))
    assert report.ok
    assert (report.format, report.n_examples, report.n_valid, report.problems) == ("chat", 12, 12, [])


@pytest.mark.parametrize(
    ("line", "category", "field"),
    [
        ('["not", "an", "object"]', "data_type", None),
        ('{"messages": ["hello"]}', "data_type", "messages[0]"),
        ('{"messages": []}', "missing_messages_list", "messages"),
        ('{"text": "hello"}', "missing_messages_list", "messages"),
        (
            '{"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}',
            "message_missing_key",
            "messages[0]",
        ),
        (
            '{"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]}',
            "message_missing_key",
            "messages[0]",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi", "mood": "ok"}, {"role": "assistant", "content": "yo"}]}',
            "message_unrecognized_key",
            "messages[0].mood",
        ),
        (
            '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
            "unrecognized_role",
            "messages[0].role",
        ),
        (
            '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]}',
            "missing_content",
            "messages[0].content",
        ),
        (
            '{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "yo"}]}',
            "missing_content",
            "messages[0].content",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "example_missing_assistant_message", "messages"),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}', "example_starts_with_assistant", "messages[0].role"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 2}]}',
            "invalid_weight",
            "messages[1].weight",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"id": "c1"}]}]}',
            "invalid_tool_calls",
            "messages[1].tool_calls[0]",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}, '
            '{"role": "assistant", "content": "yo"}]}',
            "invalid_tool_message",
            "messages[1].tool_call_id",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "tools": {}}',
            "invalid_tools",
            "tools",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]',
            "invalid_json",
            None,
        ),
        ('{"prompt": "hi", "completion": " yo"}', "format_mismatch", None),
    ],
)
def test_each_error_category_names_line_and_field(write_jsonl, line: str, category: str, field: str | None) -> None:
    path = write_jsonl([*chats(5), line, *chats(10)[5:]])
    report = validate_file(path)
    assert not report.ok
    assert (category, field) in problems_at(report, 6)
    problem = next(p for p in report.errors if p.category == category)
    assert problem.message.startswith("line 6")
    assert problem.fix
    assert report.n_valid == 10


def test_warnings_do_not_fail_the_file(write_jsonl) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    rows = [
        *chats(10),
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]},
                {"role": "assistant", "content": "a cat"},
            ]
        },
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}]},
        {**chat("hi", "there"), "id": 7},
        chats(1)[0],
    ]
    report = validate_file(write_jsonl(rows))
    assert report.ok
    assert problems_at(report, 11) == [("unsupported_content_part", "messages[0].content[1]")]
    assert problems_at(report, 12) == [("no_trained_tokens", "messages")]
    assert problems_at(report, 13) == [("unrecognized_key", "id")]
    assert problems_at(report, 14) == [("duplicate_example", None)]
    assert report.problems[-1].message == "line 14: same example as line 1"


def test_tool_calls_and_tool_answers_are_accepted(write_jsonl) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    example = {
        "messages": [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": "1+2?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
            {"role": "assistant", "content": "3", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
        "parallel_tool_calls": False,
    }
    report = validate_file(write_jsonl([example, *chats(10)]))
    assert report.ok and report.problems == []


def test_a_tool_answer_without_a_call_is_a_warning(write_jsonl) -> None:
    example = {
        "messages": [
            {"role": "user", "content": "1+2?"},
            {"role": "tool", "tool_call_id": "call_9", "content": "3"},
            {"role": "assistant", "content": "3"},
        ]
    }
    report = validate_file(write_jsonl([*chats(10), example]))
    assert report.ok
    assert problems_at(report, 11) == [("unmatched_tool_call_id", "messages[1].tool_call_id")]


def test_too_few_examples_is_an_error(write_jsonl) -> None:
    report = validate_file(write_jsonl(chats(3)))
    assert [p.category for p in report.errors] == ["too_few_examples"]
    assert report.errors[0].message == "3 valid examples; at least 10 are needed"
    assert validate_file(write_jsonl(chats(3)), min_examples=1).ok


def test_problems_are_capped_per_category_but_counted(write_jsonl) -> None:
    report = validate_file(write_jsonl(["not json"] * 500 + chats(10)))
    invalid = [p for p in report.problems if p.category == "invalid_json"]
    assert len(invalid) == 21  # 20 shown + one summary line
    assert invalid[-1].line is None and "480 more" in invalid[-1].message
    assert report.counts["invalid_json"] == 500
