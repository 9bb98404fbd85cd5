"""Deterministic, leak-free splits, and leakage detection between two files."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.data.samples import chat, chats
from tunehouse.data import overlap, split_file
from tunehouse.data.split import normalized_text


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_near_duplicates_normalize_to_the_same_text() -> None:
    a = chat("What's the capital of France?", "Paris.")
    b = chat("what is the capital of  france", "PARIS!")
    assert normalized_text(a) != normalized_text(b)  # "What's" vs "what is" differ in words
    c = chat("  WHAT'S the capital, of France?? ", "paris")
    assert normalized_text(a) == normalized_text(c) == "what s the capital of france paris"


def test_split_is_deterministic_and_keeps_duplicates_together(write_jsonl, tmp_path: Path) -> None:
    rows = chats(200)
    near = [chat(r["messages"][0]["content"].upper() + "!!", r["messages"][1]["content"]) for r in rows[:40]]
    path = write_jsonl([*rows, *near, "not json"])
    outputs = []
    for attempt in range(2):
        train, valid = tmp_path / f"train{attempt}.jsonl", tmp_path / f"valid{attempt}.jsonl"
        report = split_file(path, train, valid, valid_fraction=0.1, seed=42)
        outputs.append((read_lines(train), read_lines(valid)))
    assert outputs[0] == outputs[1]
    assert (report.n_train + report.n_valid, report.n_dropped, report.dropped_lines) == (240, 1, [241])
    assert 22 <= report.n_valid <= 26 and report.n_grouped_duplicates == 80
    train_texts = {normalized_text(orjson.loads(line)) for line in outputs[0][0]}
    valid_texts = {normalized_text(orjson.loads(line)) for line in outputs[0][1]}
    assert not train_texts & valid_texts
    assert overlap(tmp_path / "train0.jsonl", tmp_path / "valid0.jsonl").n_overlapping == 0


def test_the_seed_changes_the_split_but_not_line_order_dependence(write_jsonl, tmp_path: Path) -> None:
    rows = chats(100)
    forward, backward = write_jsonl(rows, "f.jsonl"), write_jsonl(rows[::-1], "b.jsonl")

    def valid_set(path: Path, seed: int) -> set[bytes]:
        split_file(path, tmp_path / "t.jsonl", tmp_path / "v.jsonl", 0.2, seed)
        return set(read_lines(tmp_path / "v.jsonl"))

    assert valid_set(forward, 1) == valid_set(backward, 1)
    assert valid_set(forward, 1) != valid_set(forward, 2)
    assert len(valid_set(forward, 3)) == 20


def test_overlap_reports_leaked_examples_with_lines(write_jsonl) -> None:
    train = write_jsonl(chats(50), "train.jsonl")
    leaked = chat("WHAT IS 7 PLUS 7", "7 plus 7 is 14")
    valid = write_jsonl([chat("new question", "new answer"), leaked, chats(50)[30]], "valid.jsonl")
    report = overlap(train, valid)
    assert (report.n_valid, report.n_overlapping) == (3, 2)
    assert report.samples == [(2, 8), (3, 31)]


def test_examples_of_one_group_stay_together_and_a_leaked_member_is_found(write_jsonl, tmp_path: Path) -> None:
    rows = []
    for i in range(60):  # an original and two rephrasings per group, and an ungrouped copy of one original
        rows += [
            chat(q, f"{i} plus {i} is {2 * i}.") | {"group": f"g{i}"}
            for q in (f"What is {i}+{i}?", f"Add {i} to {i}.", f"Sum {i} and {i}?")
        ]
    rows.append(chat("What is 5+5?", "5 plus 5 is 10."))
    path = write_jsonl(rows)
    report = split_file(path, tmp_path / "t.jsonl", tmp_path / "v.jsonl", valid_fraction=0.2, seed=7)
    assert report.n_grouped_duplicates == 181
    train, valid = (list(map(orjson.loads, read_lines(tmp_path / n))) for n in ("t.jsonl", "v.jsonl"))
    # the ungrouped copy shares its text with g5's original, so it joins g5 and all four stay on one side
    assert not {r.get("group", "g5") for r in train} & {r.get("group", "g5") for r in valid}
    assert overlap(tmp_path / "t.jsonl", tmp_path / "v.jsonl").n_overlapping == 0

    member = next(r for r in valid if r["group"] != "g5")
    leak = overlap(
        write_jsonl([*train, member], "leaky.jsonl"), write_jsonl([r for r in valid if r != member], "rest.jsonl")
    )
    assert (leak.n_overlapping, leak.n_same_group) == (2, 2)
