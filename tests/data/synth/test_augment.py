"""`tunehouse data augment`: rephrasings that keep the answer, grouped so that no split or overlap check misses them."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import orjson
from typer.testing import CliRunner, Result

from tests.data.samples import chat
from tests.data.synth.canned import CannedGenerator
from tunehouse.cli.main import app

runner = CliRunner()
FACTS = [
    ("When was the Harbour Light first lit?", "The Harbour Light was first lit in 1874."),
    ("Who lit the Harbour Light?", "The keeper Thomas Avery lit it."),
    ("What did the lamp burn until 1902?", "The lamp burned whale oil until 1902."),
    ("Where did the granite for the tower come from?", "The granite came from the Dunmore quarry."),
    ("How many kinds of apple grow in the Westfield orchard?", "Forty kinds of apple grow there."),
    ("Who planted the oldest Westfield tree?", "Ada Westfield planted it in 1820."),
    ("When does cider pressing start at Westfield?", "In the second week of October."),
    ("How wide is the Kestrel Hill telescope lens?", "The lens is sixty centimetres wide."),
    ("Who discovered the comet Marsh-Ito?", "Lena Marsh discovered it in 1968."),
    ("How long is the Millbrook canal?", "The canal is twenty-two miles long."),
    ("How many locks does the Millbrook canal have?", "It has seventeen locks."),
    ("When was the Hayle aqueduct restored?", "The canal trust restored it in 2004."),
]


def augment(canned: CannedGenerator, *args: str) -> Result:
    return runner.invoke(app, ["data", "augment", "--base-url", canned.base_url, "--model", "canned", *args])


def read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_each_example_gains_rephrasings_with_its_answer_and_group(
    canned: CannedGenerator, write_jsonl, tmp_path: Path, home: Path
) -> None:
    source = write_jsonl([chat(q, a, system="You know the town.") for q, a in FACTS], "facts.jsonl")
    out = tmp_path / "augmented.jsonl"
    result = augment(canned, str(source), "-o", str(out), "--paraphrases", "3")
    assert result.exit_code == 0, result.output
    assert "wrote 48 examples" in result.output and "12 originals and 36 rephrasings" in result.output
    rows = read(out)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    assert len(groups) == 12 and all(len(members) == 4 for members in groups.values())
    for (question, answer), members in zip(FACTS, groups.values(), strict=True):
        original, *rephrasings = members
        assert original["messages"] == chat(question, answer, system="You know the town.")["messages"]
        for row in rephrasings:
            system, user, assistant = row["messages"]
            assert system == original["messages"][0] and assistant == original["messages"][2]
            assert user["content"] != question and question.rstrip("?") in user["content"]
    validated = runner.invoke(app, ["data", "validate", str(out), "--json"])
    assert validated.exit_code == 0 and json.loads(validated.stdout)["counts"] == {}  # `group` is a known key
    assert len(canned.requests) == 12  # one request per example for all three rephrasings


def test_split_keeps_a_group_together_and_overlap_flags_a_rephrasing_that_leaks(
    canned: CannedGenerator, write_jsonl, tmp_path: Path, home: Path
) -> None:
    source = write_jsonl([chat(q, a) for q, a in FACTS], "facts.jsonl")
    out = tmp_path / "augmented.jsonl"
    assert augment(canned, str(source), "-o", str(out), "--paraphrases", "2").exit_code == 0
    split = runner.invoke(app, ["data", "split", str(out), "--valid", "0.25", "--seed", "4"])
    assert split.exit_code == 0, split.output
    train, valid = read(tmp_path / "augmented_train.jsonl"), read(tmp_path / "augmented_valid.jsonl")
    assert valid and train and len(valid) % 3 == 0
    assert not {r["group"] for r in train} & {r["group"] for r in valid}
    clean = runner.invoke(
        app, ["data", "overlap", str(tmp_path / "augmented_train.jsonl"), str(tmp_path / "augmented_valid.jsonl")]
    )
    assert clean.exit_code == 0, clean.output

    leaked_group = valid[0]["group"]
    rephrasing = next(r for r in valid if r["group"] == leaked_group and r != valid[0])
    leaky_train = write_jsonl([*train, rephrasing], "leaky_train.jsonl")
    held_out = write_jsonl([r for r in valid if r != rephrasing], "held_out.jsonl")
    leak = runner.invoke(app, ["data", "overlap", str(leaky_train), str(held_out), "--json"])
    assert leak.exit_code == 1
    report = json.loads(leak.stdout)
    assert report["n_overlapping"] == report["n_same_group"] == 2  # the group's original and other rephrasing


def test_legacy_files_keep_their_separator_and_completion(
    canned: CannedGenerator, write_jsonl, tmp_path: Path, home: Path
) -> None:
    rows = [{"prompt": q + "\n\n###\n\n", "completion": " " + a + " END"} for q, a in FACTS]
    out = tmp_path / "augmented.jsonl"
    result = augment(canned, str(write_jsonl(rows, "legacy.jsonl")), "-o", str(out), "--paraphrases", "1")
    assert result.exit_code == 0, result.output
    augmented = read(out)
    assert len(augmented) == 24
    for original, rephrased in zip(augmented[::2], augmented[1::2], strict=True):
        assert rephrased["prompt"].endswith("?\n\n###\n\n") and rephrased["prompt"] != original["prompt"]
        assert rephrased["completion"] == original["completion"] and rephrased["group"] == original["group"]
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0


def test_rewrite_context_rewrites_the_passage_before_the_question(
    canned: CannedGenerator, write_jsonl, tmp_path: Path, home: Path
) -> None:
    passage = "The Harbour Light stands on Gull Point. It was lit in 1874 by Thomas Avery. Its lamp burned whale oil."
    rows = [chat(f"{passage}\n\n{q}", a) for q, a in FACTS[:3]] + [chat("No context here, just a question?", "Yes.")]
    out = tmp_path / "augmented.jsonl"
    result = augment(
        canned, str(write_jsonl(rows)), "-o", str(out), "--paraphrases", "2", "--rewrite-context", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rewrites = next(s for s in report["stages"] if s["stage"] == "context rewrites")
    assert rewrites["kept"] == 6 and rewrites["dropped"] == {"no context passage to rewrite": 1}
    rephrased = [r for r in read(out)[:12] if r["messages"][0]["content"] != rows[0]["messages"][0]["content"]]
    for row in rephrased[:2]:
        context, question = row["messages"][0]["content"].split("\n\n")
        assert (
            context
            == "Its lamp burned whale oil. It was lit in 1874 by Thomas Avery. The Harbour Light stands on Gull Point."
        )
        assert FACTS[0][0].rstrip("?") in question


def test_unreadable_lines_are_counted_and_a_file_without_examples_is_an_error(
    canned: CannedGenerator, write_jsonl, tmp_path: Path, home: Path
) -> None:
    source = write_jsonl([chat(*FACTS[0]), "not json", {"messages": [{"role": "user", "content": "alone"}]}])
    result = augment(canned, str(source), "-o", str(tmp_path / "out.jsonl"), "--json")
    assert result.exit_code == 0, result.output
    read_stage = json.loads(result.stdout)["stages"][0]
    assert read_stage["dropped"] == {"not a JSON object": 1, "no user turn answered by an assistant turn": 1}
    assert read_stage["samples"] == {
        "not a JSON object": ["line 2"],
        "no user turn answered by an assistant turn": ["line 3"],
    }
    empty = augment(canned, str(write_jsonl(["[1]"], "junk.jsonl")), "-o", str(tmp_path / "none.jsonl"))
    assert empty.exit_code == 1 and "holds no chat or prompt/completion example to augment" in empty.output
    assert "Traceback" not in empty.output and not (tmp_path / "none.jsonl").exists()
