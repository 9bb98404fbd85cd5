"""Legacy prompt/completion files: the prepare_data checks, each with what `--fix` does about it."""

from __future__ import annotations

from pathlib import Path

import orjson

from tunehouse.data import validate_file
from tunehouse.data.legacy import fix_legacy_file


def pairs(n: int, separator: str = " ->", stop: str = "\n") -> list[dict[str, str]]:
    return [{"prompt": f"Translate word {i}{separator}", "completion": f" mot {i}{stop}"} for i in range(n)]


def read(path: Path) -> list[dict[str, str]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def found(report) -> list[tuple[int | None, str]]:
    return [(p.line, p.category) for p in report.problems]


def test_a_well_prepared_file_has_no_problems(write_jsonl) -> None:
    report = validate_file(write_jsonl(pairs(12)))
    assert report.format == "completion"
    assert report.problems == []


def test_line_level_completion_errors(write_jsonl) -> None:
    rows = [
        *pairs(10),
        {"prompt": "a ->"},
        {"Prompt": "b ->", "completion": " x\n"},
        {"prompt": "c ->", "completion": "  "},
    ]
    report = validate_file(write_jsonl(rows))
    assert [(p.line, p.category, p.field) for p in report.errors] == [
        (11, "missing_completion", "completion"),
        (12, "missing_prompt", "prompt"),
        (13, "missing_completion", "completion"),
    ]
    assert "found 'Prompt'" in report.errors[1].message


def test_missing_separator_everywhere_is_fixed_by_adding_one(write_jsonl, tmp_path: Path) -> None:
    rows = [{"prompt": f"Translate {word}", "completion": f" {word}!\n"} for word in "abcdefghijkl"]
    path = write_jsonl(rows)
    report = validate_file(path)
    assert found(report) == [(None, "missing_separator")]
    assert "' ->'" in report.problems[0].fix
    changes = fix_legacy_file(path, tmp_path / "fixed.jsonl")
    assert "ended prompts with the separator ' ->': 12" in changes
    assert read(tmp_path / "fixed.jsonl")[0] == {"prompt": "Translate a ->", "completion": " a!\n"}
    assert validate_file(tmp_path / "fixed.jsonl").problems == []


def test_a_prompt_missing_the_common_separator_is_named_and_fixed(write_jsonl, tmp_path: Path) -> None:
    rows = pairs(12)
    rows[4] = {"prompt": "Translate word 4", "completion": " mot 4\n"}
    path = write_jsonl(rows)
    assert found(validate_file(path)) == [(5, "missing_separator")]
    fix_legacy_file(path, tmp_path / "fixed.jsonl")
    assert read(tmp_path / "fixed.jsonl")[4]["prompt"] == "Translate word 4 ->"


def test_a_separator_inside_a_prompt_is_replaced_by_an_unused_one(write_jsonl, tmp_path: Path) -> None:
    rows = pairs(12)
    rows[2] = {"prompt": "a -> b ->", "completion": " c\n"}
    path = write_jsonl(rows)
    report = validate_file(path)
    assert found(report) == [(3, "separator_in_prompt")]
    assert "'\\n\\n###\\n\\n'" in report.problems[0].fix
    fix_legacy_file(path, tmp_path / "fixed.jsonl")
    fixed = read(tmp_path / "fixed.jsonl")
    assert fixed[2]["prompt"] == "a -> b\n\n###\n\n"
    assert fixed[0]["prompt"] == "Translate word 0\n\n###\n\n"
    assert validate_file(tmp_path / "fixed.jsonl").problems == []


def test_completions_without_leading_whitespace_get_a_space(write_jsonl, tmp_path: Path) -> None:
    rows = pairs(12)
    rows[7] = {"prompt": "Translate word 7 ->", "completion": "mot 7\n"}
    path = write_jsonl(rows)
    assert found(validate_file(path)) == [(8, "completion_missing_leading_whitespace")]
    changes = fix_legacy_file(path, tmp_path / "fixed.jsonl")
    assert "added a leading space to completions: 1" in changes
    assert read(tmp_path / "fixed.jsonl")[7]["completion"] == " mot 7\n"


def test_missing_stop_sequence_is_added(write_jsonl, tmp_path: Path) -> None:
    rows = [{"prompt": f"Say {w} ->", "completion": f" {w} {w}"} for w in "abcdefghijkl"]
    path = write_jsonl(rows)
    report = validate_file(path)
    assert found(report) == [(None, "missing_stop_sequence")]
    fix_legacy_file(path, tmp_path / "fixed.jsonl")
    assert read(tmp_path / "fixed.jsonl")[0]["completion"] == " a a\n"
    assert validate_file(tmp_path / "fixed.jsonl").problems == []


def test_one_completion_missing_the_common_stop_is_named(write_jsonl) -> None:
    rows = pairs(12, stop=" END")
    rows[9]["completion"] = " mot 9"
    assert found(validate_file(write_jsonl(rows))) == [(10, "missing_stop_sequence")]


def test_duplicates_are_reported_and_dropped(write_jsonl, tmp_path: Path) -> None:
    rows = [*pairs(12), pairs(12)[3]]
    path = write_jsonl(rows)
    report = validate_file(path)
    assert found(report) == [(13, "duplicate_example")]
    assert report.problems[0].message == "line 13: same example as line 4"
    changes = fix_legacy_file(path, tmp_path / "fixed.jsonl")
    assert "dropped duplicate examples: 1" in changes
    assert len(read(tmp_path / "fixed.jsonl")) == 12


def test_long_examples_are_reported_and_dropped(write_jsonl, tmp_path: Path) -> None:
    rows = pairs(12)
    rows[5]["prompt"] = "word " * 2500 + " ->"
    path = write_jsonl(rows)
    assert found(validate_file(path)) == [(6, "long_example")]
    changes = fix_legacy_file(path, tmp_path / "fixed.jsonl")
    assert "dropped examples over 10000 characters: 1" in changes
    assert len(read(tmp_path / "fixed.jsonl")) == 11


def test_classification_is_detected_and_needs_no_stop_sequence(write_jsonl, tmp_path: Path) -> None:
    rows = [
        {"prompt": f"Review {i}: great stuff ->", "completion": " positive" if i % 2 else " negative"}
        for i in range(30)
    ]
    path = write_jsonl(rows)
    report = validate_file(path)
    assert found(report) == [(None, "looks_like_classification")]
    assert report.problems[0].message == "30 examples but only 2 distinct completions: this looks like classification"
    fix_legacy_file(path, tmp_path / "fixed.jsonl")
    assert read(tmp_path / "fixed.jsonl") == rows


def test_identical_prompts_or_completions_are_errors(write_jsonl) -> None:
    same_prompt = [{"prompt": "Q ->", "completion": f" {i}\n"} for i in range(12)]
    assert [p.category for p in validate_file(write_jsonl(same_prompt)).errors] == ["all_prompts_identical"]
    same_completion = [{"prompt": f"{i} ->", "completion": " same\n"} for i in range(12)]
    errors = validate_file(write_jsonl(same_completion, "b.jsonl")).errors
    assert [p.category for p in errors] == ["all_completions_identical"]
