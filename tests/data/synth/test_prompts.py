"""Prompt templates: few-shot messages, and a prompt file that replaces parts of them, checked at the door."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunehouse.data.synth.prompts import DEFAULT_PROMPTS, load_prompts, prompts_toml
from tunehouse.errors import InvalidRequest


def test_default_prompts_are_few_shot_chats_ending_with_the_real_input() -> None:
    messages = DEFAULT_PROMPTS.questions.messages(passage="The canal has seventeen locks.", n=2)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert (
        messages[-1]["content"] == "Passage:\nThe canal has seventeen locks.\n\nWrite 2 questions about this passage."
    )
    assert messages[2]["content"].startswith("1. ")


def test_the_printed_prompts_load_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text(prompts_toml())
    assert load_prompts(path) == DEFAULT_PROMPTS


def test_a_prompt_file_replaces_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text(
        "[answer]\nsystem = 'Answer in French.'\n\n[[answer.examples]]\npassage = 'Paris est grande.'\n"
        "question = 'Paris est-elle grande ?'\nreply = 'Oui.'\n"
    )
    prompts = load_prompts(path)
    assert prompts.answer.system == "Answer in French." and len(prompts.answer.examples) == 1
    assert prompts.answer.user == DEFAULT_PROMPTS.answer.user and prompts.questions == DEFAULT_PROMPTS.questions


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[summary]\nuser = '$passage'\n", r"unknown prompt \[summary\]; the tasks are questions, answer"),
        ("[answer]\ntemplate = '$passage'\n", r"\[answer\] has unknown keys \['template'\]"),
        ("[answer]\nuser = 'Question: $question'\n", r"\[answer\].user must use \$passage"),
        ("[judge]\nuser = '$question $answer costs $5'\n", r"not a valid template \(write a literal \$ as \$\$\)"),
        (
            "[rewrite]\n[[rewrite.examples]]\nreply = 'x'\n",
            r"\[rewrite\].examples\[0\] needs string values for passage, reply",
        ),
        ("[answer\n", "is not a TOML file"),
    ],
)
def test_prompt_files_are_checked_with_a_message_naming_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text(content)
    with pytest.raises(InvalidRequest, match=message):
        load_prompts(path)
