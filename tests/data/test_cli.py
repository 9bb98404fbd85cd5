"""`tunehouse data …` as a user runs it: exit codes, one-line errors, `--json`."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from typer.testing import CliRunner, Result

from tests.data.samples import chat, chats
from tunehouse.cli.main import app

runner = CliRunner()


def run(*args: str) -> Result:
    return runner.invoke(app, ["data", *args])


def test_validate_ok_and_failing_files(write_jsonl) -> None:
    good = run("validate", str(write_jsonl(chats(12), "good.jsonl")))
    assert good.exit_code == 0, good.output
    assert "chat format, 12 examples (12 valid)" in good.output
    bad = run("validate", str(write_jsonl([*chats(12), '{"messages": [{"role": "robot"}]}'], "bad.jsonl")))
    assert bad.exit_code == 1
    assert "unrecognized_role" in bad.output


def test_validate_json_output(write_jsonl) -> None:
    result = run("validate", "--json", str(write_jsonl([*chats(12), "[1, 2]"])))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["ok"], report["n_examples"], report["counts"]) == (False, 13, {"data_type": 1})
    assert report["problems"][0]["line"] == 13
    assert report["problems"][0]["fix"]


def test_a_missing_file_is_one_line_without_traceback() -> None:
    result = run("validate", "/nonexistent/train.jsonl")
    assert result.exit_code == 1
    assert "No such file: /nonexistent/train.jsonl" in result.output
    assert "Traceback" not in result.output


def test_validate_fix_writes_a_corrected_legacy_file(write_jsonl, tmp_path: Path) -> None:
    rows = [{"prompt": f"Translate {w}", "completion": f"{w} {w}"} for w in "abcdefghijkl"]
    out = tmp_path / "fixed.jsonl"
    result = run("validate", str(write_jsonl(rows)), "--fix", str(out))
    assert "fixed: wrote 12 examples" in result.output
    assert run("validate", str(out)).exit_code == 0
    assert orjson.loads(out.read_bytes().splitlines()[0]) == {"prompt": "Translate a ->", "completion": " a a\n"}


def test_stats_json(write_jsonl, registered_tokenizer: str) -> None:
    path = write_jsonl([chat(f"q{i}", f"answer number {i}") for i in range(20)])
    result = run("stats", str(path), "--model", registered_tokenizer, "--throughput", "500", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["n_examples"] == 20 and stats["n_epochs"] == 5
    assert stats["estimated_seconds"] == stats["trained_tokens"] / 500
    table = run("stats", str(path), "--model", registered_tokenizer, "--no-measure")
    assert "auto n_epochs: 5" in table.output


def test_convert_split_and_overlap(tmp_path: Path) -> None:
    source = tmp_path / "qa.csv"
    source.write_text("q,a\n" + "".join(f"question {i},answer {i}\n" for i in range(50)))
    chat_path = tmp_path / "chat.jsonl"
    converted = run("convert", str(source), "-o", str(chat_path), "--user", "q", "--assistant", "a")
    assert "wrote 50 of 50 rows" in converted.output
    split = run("split", str(chat_path), "--valid", "0.2", "--seed", "3")
    assert "valid: 10 examples" in split.output
    clean = run("overlap", str(tmp_path / "chat_train.jsonl"), str(tmp_path / "chat_valid.jsonl"))
    assert clean.exit_code == 0 and "no overlap" in clean.output
    leaky = run("overlap", str(chat_path), str(tmp_path / "chat_valid.jsonl"), "--json")
    assert leaky.exit_code == 1
    assert json.loads(leaky.stdout)["n_overlapping"] == 10
