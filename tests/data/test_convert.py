"""Conversions to and from chat JSONL, with a report of every dropped row."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from tunehouse.data import validate_file
from tunehouse.data.convert import Mapping, convert_file
from tunehouse.errors import InvalidRequest


def read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def write_table(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


QA = [{"question": f"What is {i}+{i}?", "answer": f"{2 * i}", "topic": "sums"} for i in range(12)]


@pytest.mark.parametrize(("name", "delimiter"), [("qa.csv", ","), ("qa.tsv", "\t")])
def test_csv_and_tsv_by_column_mapping(tmp_path: Path, name: str, delimiter: str) -> None:
    rows = [*QA, {"question": "", "answer": "x", "topic": "t"}]
    source = write_table(tmp_path / name, rows, delimiter)
    out = tmp_path / "chat.jsonl"
    report = convert_file(source, out, Mapping(user="question", assistant="answer", system="Add numbers."))
    assert (report.n_read, report.n_written) == (13, 12)
    assert report.dropped == {"empty 'question'": 1}
    assert report.dropped_rows == [(14, "empty 'question'")]  # the CSV's line, header being line 1
    assert read(out)[1] == {
        "messages": [
            {"role": "system", "content": "Add numbers."},
            {"role": "user", "content": "What is 1+1?"},
            {"role": "assistant", "content": "2"},
        ]
    }
    assert validate_file(out).ok


def test_json_array_and_missing_columns(tmp_path: Path) -> None:
    source = tmp_path / "qa.json"
    source.write_bytes(orjson.dumps([*QA, {"question": "q"}, "junk"]))
    out = tmp_path / "chat.jsonl"
    report = convert_file(source, out, Mapping(user="question", assistant="answer", system_column="topic"))
    assert report.n_written == 12
    assert report.dropped == {"no column 'answer'": 1, "not a JSON object": 1}
    assert read(out)[0]["messages"][0] == {"role": "system", "content": "sums"}


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    source = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(QA), source)
    out = tmp_path / "chat.jsonl"
    assert convert_file(source, out, Mapping(user="question", assistant="answer")).n_written == 12
    assert read(out)[3]["messages"][1]["content"] == "6"


def test_legacy_to_chat_and_back_round_trips(tmp_path: Path) -> None:
    legacy = [{"prompt": f"Capital of country {i}\n\n###\n\n", "completion": f" City {i} END"} for i in range(12)]
    source = tmp_path / "legacy.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in legacy))
    chat_path, back = tmp_path / "chat.jsonl", tmp_path / "back.jsonl"
    report = convert_file(source, chat_path, Mapping(to="chat"))
    assert report.notes == ["removed the separator '\\n\\n###\\n\\n' and the stop sequence ' END'"]
    assert read(chat_path)[0] == {
        "messages": [{"role": "user", "content": "Capital of country 0"}, {"role": "assistant", "content": "City 0"}]
    }
    convert_file(chat_path, back, Mapping(to="completion", separator="\n\n###\n\n", stop=" END"))
    assert read(back) == legacy


def test_chat_to_legacy_and_back_round_trips(tmp_path: Path) -> None:
    chats = [
        {"messages": [{"role": "user", "content": f"Hello {i}"}, {"role": "assistant", "content": f"Hi {i}!"}]}
        for i in range(12)
    ]
    source = tmp_path / "chat.jsonl"
    source.write_bytes(b"".join(orjson.dumps(c) + b"\n" for c in chats))
    legacy, back = tmp_path / "legacy.jsonl", tmp_path / "back.jsonl"
    convert_file(source, legacy, Mapping(to="completion"))
    assert read(legacy)[0] == {"prompt": "Hello 0\n\n###\n\n", "completion": " Hi 0! END"}
    assert validate_file(legacy).problems == []
    convert_file(legacy, back, Mapping(to="chat"))
    assert read(back) == chats


def test_chat_to_legacy_reports_what_it_cannot_express(tmp_path: Path) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    rows = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}]},
        {"messages": [{"role": "assistant", "content": "hi"}]},
    ]
    source = tmp_path / "chat.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    report = convert_file(source, tmp_path / "out.jsonl", Mapping(to="completion"))
    assert report.n_written == 0
    assert report.dropped_rows == [
        (1, "no assistant message"),
        (2, "assistant reply is a tool call"),
        (3, "no user message before the assistant"),
    ]


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    source = write_table(tmp_path / "qa.csv", QA)
    with pytest.raises(InvalidRequest, match="both --user and --assistant"):
        convert_file(source, tmp_path / "o.jsonl", Mapping(user="question"))
    (tmp_path / "qa.xlsx").write_bytes(b"PK")
    with pytest.raises(InvalidRequest, match="use a .csv"):
        convert_file(tmp_path / "qa.xlsx", tmp_path / "o.jsonl", Mapping(user="q", assistant="a"))
