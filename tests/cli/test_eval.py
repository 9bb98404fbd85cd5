"""`tunehouse eval MODEL [MODEL...] --file valid.jsonl` against a real server, run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI

from tests.cli.test_client_commands import assert_clean_error, tunehouse
from tests.conftest import SHIPPED_ID, TINY_ID, Server
from tests.support import chat_rows, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("eval-cli") / "valid.jsonl", chat_rows(3, topic="eval colour"))


def test_two_models_side_by_side_as_json(server: Server, client: OpenAI, valid: Path) -> None:
    result = tunehouse(
        server, "eval", TINY_ID, SHIPPED_ID, "--file", str(valid), "--limit", "2", "--max-tokens", "6", "--json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["eval_id"].startswith("eval_") and "Eval eval_" in result.stderr
    rows = chat_rows(3, topic="eval colour")[:2]
    for run, model in zip(summary["runs"], (TINY_ID, SHIPPED_ID), strict=True):
        assert (run["model"], run["status"]) == (model, "completed")
        assert run["result_counts"]["total"] == 2 and run["report_url"].endswith(f"/runs/{run['id']}")
        expected = []
        for row, answer in zip(rows, run["answers"], strict=True):
            chat = client.chat.completions.create(
                model=model, messages=row["messages"][:-1], temperature=0, max_tokens=6, seed=42
            )
            assert answer == chat.choices[0].message.content  # the model's own answer to the prompt
            expected.append(row["messages"][-1]["content"])
        exact = sum(a == e for a, e in zip(run["answers"], expected, strict=True)) / 2
        assert run["scores"]["Exact match"]["pass_rate"] == exact
        assert set(run["scores"]) == {"Exact match", "Similarity (fuzzy_match)"}


def test_the_table_shows_prompt_expected_answers_and_scores(server: Server, valid: Path) -> None:
    result = tunehouse(server, "eval", TINY_ID, "--file", str(valid), "--grader", "string_check", "--max-tokens", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for header in ("prompt", "expected", TINY_ID, "pass", "grader"):
        assert header in out
    for index, row in enumerate(chat_rows(3, topic="eval colour")):
        assert row["messages"][1]["content"] in out and row["messages"][2]["content"] in out
        assert f"│ {index + 1} " in out
    assert "Exact match" in out and "passed (" in out and "Similarity" not in out
    assert f"{TINY_ID}: completed · http://127.0.0.1:{server.port}/#/evals/eval_" in out


def test_mistakes_are_one_line_errors(server: Server, valid: Path, tmp_path: Path) -> None:
    assert_clean_error(
        tunehouse(server, "eval", TINY_ID, "--file", str(valid), "--grader", "nope"),
        "Unknown grader 'nope'. Expected one of string_check, cosine, fuzzy_match, bleu, gleu, meteor, "
        "rouge_1, rouge_2, rouge_3, rouge_4, rouge_5, rouge_l.",
    )
    assert_clean_error(
        tunehouse(server, "eval", TINY_ID, "--file", str(tmp_path / "none.jsonl")),
        f"No such file: {tmp_path / 'none.jsonl'}",
    )
    unknown = tunehouse(server, "eval", "no-such-model", "--file", str(valid))
    assert unknown.returncode == 1 and "no-such-model" in unknown.stderr and "Traceback" not in unknown.stderr
    no_answers = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert_clean_error(
        tunehouse(server, "eval", TINY_ID, "--file", str(no_answers)),
        f"{no_answers} has no example with an answer to compare against (a chat reply, or a completion).",
    )
