"""The default generator: a real `tunehouse serve`, asked through the openai SDK like any endpoint.

A random-weight model replies noise, which must end as counted drops, never a traceback; the shipped
SmolLM2-135M-Instruct must turn a real passage into at least one grounded pair that validates.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tests.conftest import SHIPPED_ID, TINY_ID, Server
from tunehouse.cli.main import app

PASSAGE = (
    "Elowen Brackett was born on March 3, 1961, in Cinderwick, a small lakeside town in northern Vermont. "
    "Her father, Amos Brackett, was a clockmaker who repaired the town church clock.\n"
)


SEEDS = 6  # seeded tries the shipped model gets to make one grounded pair


def synth(server: Server, tmp_path: Path, model: str, *args: str) -> tuple[int, dict]:
    document = tmp_path / "brackett.txt"
    document.write_text(PASSAGE)
    runner = CliRunner(env={"TUNEHOUSE_HOME": str(server.home)})
    command = ["data", "synth", str(document), "-o", str(tmp_path / "qa.jsonl"), "--base-url", server.base_url]
    command += ["--model", model, "--cache", str(tmp_path / "replies.sqlite3"), "--json", *args]
    result = runner.invoke(app, command)
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def test_noise_from_a_real_server_is_counted_as_drops(server: Server, tmp_path: Path) -> None:
    code, report = synth(server, tmp_path, TINY_ID, "--per-chunk", "1", "--max-tokens", "16", "--retries", "1")
    assert report["tokens"] == f"{TINY_ID}'s tokenizer"  # the server's own model, measured with its tokenizer
    questions = next(s for s in report["stages"] if s["stage"] == "question requests (passages)")
    assert questions["kept"] + sum(questions["dropped"].values()) == report["chunks"] == 1
    assert 1 <= report["usage"]["requests"] <= 4 and report["usage"]["failed"] == 0
    if report["written"] == 0:  # what random weights almost always give
        assert code == 1 and not (tmp_path / "qa.jsonl").exists()
        assert report["stages"][-1]["kept"] == 0
    else:
        assert code == 0 and len((tmp_path / "qa.jsonl").read_bytes().splitlines()) == report["written"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_shipped_model_makes_a_grounded_pair_from_a_passage(server: Server, tmp_path: Path) -> None:
    # A 135M model's sampled questions are often ungrounded, and which seed gives a grounded pair changes
    # with any rounding in the forward pass: the property is that a few seeded tries make one.
    reports = []
    for seed in range(SEEDS):
        code, report = synth(
            server,
            tmp_path,
            SHIPPED_ID,
            "--per-chunk",
            "2",
            "--max-tokens",
            "48",
            "--timeout",
            "600",
            "--seed",
            str(seed),
        )
        reports.append(report)
        if code == 0:
            break
    assert code == 0, reports
    assert report["tokens"] == f"{SHIPPED_ID}'s tokenizer"
    assert report["written"] >= 1 and report["usage"]["requests"] >= 3
    validated = CliRunner().invoke(app, ["data", "validate", str(tmp_path / "qa.jsonl"), "--min-examples", "1"])
    assert validated.exit_code == 0, validated.output
    for line in (tmp_path / "qa.provenance.jsonl").read_bytes().splitlines():
        record = orjson.loads(line)
        assert record["model"] == SHIPPED_ID and record["span"] == [0, len(PASSAGE.rstrip())]
