"""Files that are not clean JSONL get one clear message each, never a traceback."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from tests.data.samples import chats
from tunehouse.data import iter_examples, validate_file
from tunehouse.data.reader import MAX_LINE_BYTES, plan_chunks
from tunehouse.data.scan import scan_file
from tunehouse.errors import InvalidRequest


def lines_of(examples: list[dict]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in examples)


def categories(report) -> list[str]:
    return [p.category for p in report.problems]


def test_a_json_array_is_not_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(orjson.dumps(chats(12), option=orjson.OPT_INDENT_2))
    report = validate_file(path)
    assert categories(report) == ["not_jsonl"]
    assert report.problems[0].message == "the file is one JSON array, not JSON Lines (one object per line)"


def test_a_pretty_printed_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e, option=orjson.OPT_INDENT_2) + b"\n" for e in chats(12)))
    report = validate_file(path)
    assert categories(report) == ["invalid_json"]
    assert "pretty-printed" in report.problems[0].message


@pytest.mark.parametrize(
    ("content", "category", "words"),
    [
        (gzip.compress(lines_of(chats(12))), "binary_file", "gzip"),
        (b"PK\x03\x04" + b"\x00" * 100, "binary_file", "zip"),
        (b"PAR1" + b"\x00" * 100, "binary_file", "Parquet"),
        (b"\x00\x01\x02\x03" * 100, "binary_file", "NUL"),
        ("\n".join('{"messages": []}' for _ in range(3)).encode("utf-16"), "encoding", "UTF-16"),
        (b"", "empty_file", "empty"),
        (b"\n\n  \n", "empty_file", "empty"),
    ],
)
def test_binary_and_empty_files(tmp_path: Path, content: bytes, category: str, words: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    report = validate_file(path)
    assert categories(report) == [category]
    assert words in report.problems[0].message
    assert not report.ok


def test_non_utf8_line_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    bad = '{"messages": [{"role": "user", "content": "café"}, {"role": "assistant", "content": "oui"}]}'
    path.write_bytes(lines_of(chats(10)) + bad.encode("latin-1") + b"\n")
    report = validate_file(path)
    assert categories(report) == ["encoding"]
    column = bad.index("é") + 1
    assert report.problems[0].message == f"line 11: not valid UTF-8 (byte 0xe9 at column {column})"


def test_bom_crlf_and_blank_lines_are_warnings_and_still_read(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    body = lines_of(chats(10)).replace(b"\n", b"\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + body + b"\r\n")
    report = validate_file(path)
    assert report.ok and report.n_valid == 10
    assert categories(report) == ["crlf_line_endings", "byte_order_mark", "blank_line"]
    assert [p.line for p in report.problems] == [None, 1, 11]
    assert [n for n, _ in iter_examples(path)] == list(range(1, 11))


def test_a_50_mb_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (50 << 20) + b'"}]}\n'
    path.write_bytes(lines_of(chats(5)) + huge + lines_of(chats(10)[5:]))
    report = validate_file(path)
    assert categories(report) == ["line_too_long"]
    assert report.problems[0].message == f"line 6: longer than {MAX_LINE_BYTES >> 20} MiB"
    assert report.n_valid == 10


def test_unknown_format_and_missing_file(write_jsonl) -> None:
    report = validate_file(write_jsonl([{"question": "q", "answer": "a"}] * 12))
    assert categories(report) == ["unknown_format"]
    with pytest.raises(InvalidRequest, match="No such file"):
        validate_file("/nonexistent/train.jsonl")
    with pytest.raises(InvalidRequest, match="Unknown format"):
        validate_file(write_jsonl(chats(12)), format="sharegpt")


def test_forcing_a_format_checks_every_line_against_it(write_jsonl) -> None:
    rows = [{"prompt": f"q{i} ->", "completion": f" a{i}\n"} for i in range(12)]
    report = validate_file(write_jsonl(rows), format="chat")
    assert report.counts == {"format_mismatch": 12, "too_few_examples": 1}


def test_chunked_parallel_scan_matches_a_serial_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data.jsonl"
    rows = [lines_of([e]) for e in chats(400)]
    rows[123] = b"not json\n"
    rows[350] = b'{"messages": [{"role": "robot", "content": "x"}]}\n'
    path.write_bytes(b"".join(rows))
    chunks = plan_chunks(path, chunk_bytes=2000)
    assert len(chunks) > 5 and chunks[0][0] == 0 and chunks[-1][1] == path.stat().st_size
    monkeypatch.setattr("tunehouse.data.scan.plan_chunks", lambda p: plan_chunks(p, chunk_bytes=2000))
    serial, parallel = scan_file(path, "chat"), scan_file(path, "chat", jobs=2)
    for result in (serial, parallel):
        assert (result.n_lines, result.n_valid) == (400, 398)
        assert [(p.line, p.category) for p in result.log.problems()] == [
            (124, "invalid_json"),
            (351, "unrecognized_role"),
            (351, "example_missing_assistant_message"),
        ]
