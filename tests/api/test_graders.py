"""`/v1/fine_tuning/alpha/graders/run` and `/validate` through the official SDK, as OpenAI's
reinforcement fine-tuning guide calls them: `client.fine_tuning.alpha.graders.run(...)`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server, make_home, running_server

TIMEOUT_S = 3


@pytest.fixture(scope="module")
def grading_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    """A server whose python graders get 3 s and 256 MiB."""
    env = {"TUNEHOUSE_PYTHON_GRADER_TIMEOUT_S": str(TIMEOUT_S), "TUNEHOUSE_PYTHON_GRADER_MEMORY_MB": "256"}
    home = make_home(tmp_path_factory.mktemp("graders-home"), shipped_model_dir)
    with running_server(home, tiny_model_dir, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def graders_client(grading_server: Server) -> OpenAI:
    return grading_server.client()


def no_errors(errors: Any) -> bool:
    return not any(value for key, value in errors.model_dump().items() if key != "message")


def test_run_string_check(graders_client: OpenAI) -> None:
    result = graders_client.fine_tuning.alpha.graders.run(
        grader={
            "type": "string_check",
            "name": "Example string check grader",
            "input": "{{sample.output_text}}",
            "reference": "{{item.label}}",
            "operation": "eq",
        },
        model_sample="positive",
        item={"label": "positive"},
    )
    assert result.reward == 1.0
    assert (result.metadata.name, result.metadata.type) == ("Example string check grader", "string_check")
    assert no_errors(result.metadata.errors) and result.metadata.execution_time >= 0
    assert result.sub_rewards == {} and result.api_model_grader_token_usage_per_model == {}


def test_run_multi_reports_its_sub_rewards(graders_client: OpenAI) -> None:
    result = graders_client.fine_tuning.alpha.graders.run(
        grader={
            "type": "multi",
            "name": "combined",
            "graders": {
                "exact": {
                    "type": "string_check",
                    "name": "exact",
                    "input": "{{sample.output_json.answer}}",
                    "reference": "{{item.answer}}",
                    "operation": "ilike",
                },
                "close": {
                    "type": "text_similarity",
                    "name": "close",
                    "input": "{{sample.output_json.answer}}",
                    "reference": "{{item.answer}}",
                    "evaluation_metric": "fuzzy_match",
                },
            },  # type: ignore[typeddict-item]  # OpenAI's guide names the graders; its schema types one
            "calculate_output": "(exact + close) / 2",
        },
        model_sample='{"answer": "Paris"}',
        item={"answer": "paris"},
    )
    # ilike matches; fuzzy_match of Paris/paris: 4 of 5 letters in common, 2 * 4 / 10
    assert result.sub_rewards == {"exact": 1.0, "close": pytest.approx(0.8)}
    assert result.reward == pytest.approx(0.9)
    assert result.metadata.scores == result.sub_rewards


def test_validate_returns_the_grader(graders_client: OpenAI) -> None:
    grader = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": "rouge_l",
    }
    response = graders_client.fine_tuning.alpha.graders.validate(grader=grader)  # type: ignore[arg-type]
    assert response.grader is not None and response.grader.model_dump(exclude_none=True) == grader


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        ({"type": "string_check", "name": "s", "input": "a", "reference": "b", "operation": "has"}, "grader.operation"),
        (
            {"type": "string_check", "name": "s", "input": "{{x.y}}", "reference": "b", "operation": "eq"},
            "grader.input",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": {"type": "python", "name": "p"}}, "calculate_output": "a"},
            "grader.graders.a.source",
        ),
        ({"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "cosine"}, None),
    ],
)
def test_validate_refuses_naming_the_field(graders_client: OpenAI, grader: dict[str, Any], param: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        graders_client.fine_tuning.alpha.graders.validate(grader=grader)  # type: ignore[arg-type]
    assert caught.value.param == (param or "grader.evaluation_metric")
    if param is None:
        assert "embedding model" in caught.value.message


def test_a_run_with_a_bad_grader_is_refused_too(graders_client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        graders_client.fine_tuning.alpha.graders.run(
            grader={"type": "string_check", "name": "s", "input": "a", "reference": "b"},  # type: ignore[arg-type]  # missing its operation, on purpose
            model_sample="a",
        )
    assert caught.value.param == "grader.operation"


SCORE_GRADER = {
    "type": "score_model",
    "name": "judge",
    "model": TINY_ID,
    "input": [
        {
            "role": "user",
            "content": [
                {
                    "type": "input_text",
                    "text": "Score 0 to 1 how close the answer is.\nReference: {{item.reference}}\n"
                    "Answer: {{sample.output_text}}\nReturn only the score.",
                }
            ],
        }
    ],
    "sampling_params": {"temperature": 0, "max_completions_tokens": 8, "seed": 1},
}


def test_score_model_asks_a_model_this_server_serves(graders_client: OpenAI) -> None:
    """The tiny random model answers garbage: the reply is read, and a reply with no score in range is
    a parse error, not a failed request. Its token usage is counted either way."""
    result = graders_client.fine_tuning.alpha.graders.run(
        grader=SCORE_GRADER,  # type: ignore[arg-type]
        model_sample="a bear",
        item={"reference": "fuzzy wuzzy was a bear"},
    )
    errors = result.metadata.errors
    assert errors.api_model_grader_parse_error or (no_errors(errors) and 0 <= result.reward <= 1)
    if errors.api_model_grader_parse_error:
        assert result.reward == 0 and "reply" in (errors.model_extra or {}).get("message", "")
    assert result.metadata.sampled_model_name == TINY_ID
    usage = result.api_model_grader_token_usage_per_model[TINY_ID]
    assert usage["prompt_tokens"] > 20 and 1 <= usage["completion_tokens"] <= 8  # type: ignore[index]
    assert result.metadata.token_usage == usage["total_tokens"]  # type: ignore[index]


def test_label_model_asks_a_model_this_server_serves(graders_client: OpenAI) -> None:
    result = graders_client.fine_tuning.alpha.graders.run(
        grader={  # type: ignore[arg-type]  # the SDK's run() types omit label_model; OpenAI's server took it
            "type": "label_model",
            "name": "sentiment",
            "model": TINY_ID,
            "input": [{"role": "user", "content": "Positive or negative? {{sample.output_text}}"}],
            "labels": ["positive", "negative"],
            "passing_labels": ["positive"],
            "sampling_params": {"max_completions_tokens": 8},
        },
        model_sample="What a lovely day",
    )
    errors = result.metadata.errors
    assert errors.api_model_grader_parse_error or (no_errors(errors) and result.reward in (0.0, 1.0))
    assert TINY_ID in result.api_model_grader_token_usage_per_model


def test_a_model_the_server_does_not_serve_is_a_server_error_of_the_item(graders_client: OpenAI) -> None:
    result = graders_client.fine_tuning.alpha.graders.run(
        grader={**SCORE_GRADER, "model": "no-such-model"},  # type: ignore[arg-type]
        model_sample="a",
        item={"reference": "b"},
    )
    errors = result.metadata.errors
    assert errors.api_model_grader_server_error and result.reward == 0
    assert "no-such-model" in (errors.api_model_grader_server_error_details or "")


def python_run(client: OpenAI, source: str, sample: str = "cat", item: dict[str, Any] | None = None) -> Any:
    return client.fine_tuning.alpha.graders.run(
        grader={"type": "python", "name": "py", "source": source},
        model_sample=sample,
        item=item or {"label": "cat"},
    )


def test_python_grader_scores(graders_client: OpenAI) -> None:
    source = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['label'] else 0.0\n"
    result = python_run(graders_client, source)
    assert result.reward == 1.0 and no_errors(result.metadata.errors)


def test_python_grader_exception_is_reported(graders_client: OpenAI) -> None:
    result = python_run(graders_client, "def grade(sample, item):\n    raise ValueError('no label here')\n")
    errors = result.metadata.errors
    assert errors.python_grader_runtime_error and result.reward == 0
    assert "ValueError: no label here" in (errors.python_grader_runtime_error_details or "")


def test_python_grader_that_loops_forever_is_stopped_and_the_server_keeps_serving(
    graders_client: OpenAI,
) -> None:
    answered: list[float] = []

    def meanwhile() -> None:
        time.sleep(0.5)
        started = time.monotonic()
        graders_client.models.list()
        answered.append(time.monotonic() - started)

    other = threading.Thread(target=meanwhile)
    other.start()
    started = time.monotonic()
    result = python_run(graders_client, "def grade(sample, item):\n    while True:\n        pass\n")
    elapsed = time.monotonic() - started
    other.join()
    assert result.metadata.errors.unresponsive_reward_error and result.reward == 0
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 3
    assert answered and answered[0] < 2  # answered while the grader looped
    assert python_run(graders_client, "def grade(sample, item):\n    return 0.5\n").reward == 0.5


def test_python_grader_out_of_cpu_time_is_unresponsive_like_one_out_of_time(graders_client: OpenAI) -> None:
    # The CPU-time limit backs up the clock's and can fire first on an idle machine: the same verdict.
    source = "import os, signal\ndef grade(sample, item):\n    os.kill(os.getpid(), signal.SIGXCPU)\n"
    result = python_run(graders_client, source)
    errors = result.metadata.errors
    assert errors.unresponsive_reward_error and not errors.python_grader_runtime_error
    assert result.reward == 0 and "time limit" in (errors.message or "")


def test_python_grader_memory_bomb_is_stopped(graders_client: OpenAI) -> None:
    source = "def grade(sample, item):\n    blocks = []\n    while True:\n        blocks.append(bytearray(10**7))\n"
    errors = python_run(graders_client, source).metadata.errors
    assert errors.python_grader_runtime_error
    assert "256 MiB memory limit" in (errors.python_grader_runtime_error_details or "")


def test_python_grader_network_attempt_is_refused(graders_client: OpenAI, grading_server: Server) -> None:
    source = (
        "import urllib.request\n"
        "def grade(sample, item):\n"
        f"    urllib.request.urlopen('http://127.0.0.1:{grading_server.port}/health', timeout=2)\n"
        "    return 1.0\n"
    )
    errors = python_run(graders_client, source).metadata.errors
    assert errors.python_grader_runtime_error
    assert "network access is disabled" in (errors.python_grader_runtime_error_details or "")
