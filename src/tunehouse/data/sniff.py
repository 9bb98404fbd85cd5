"""Looking at the start of a file before reading it all: is this JSONL at all, and in which format?

A JSON array, a spreadsheet, a gzip archive or a UTF-16 export should get one clear sentence, not
ten thousand per-line errors. The format is decided here, from the first line that shows one, so
that chunks scanned in parallel all check against the same format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tunehouse.data.formats import line_format
from tunehouse.data.reader import UTF8_BOM, iter_lines, strip_line
from tunehouse.data.report import Problem, make_problem

SNIFF_BYTES = 1 << 16
SNIFF_LINES = 1000

_MAGIC = (
    (b"\x1f\x8b", "a gzip archive: decompress it first (`gunzip FILE`)"),
    (b"PK\x03\x04", "a zip archive (or an .xlsx workbook): convert it with `tunehouse data convert`"),
    (b"PAR1", "a Parquet file: convert it with `tunehouse data convert FILE -o out.jsonl`"),
    (b"SQLite format 3", "an SQLite database"),
)


@dataclass
class Sniffed:
    format: str | None
    problems: list[Problem] = field(default_factory=list)
    fatal: bool = False  # True when per-line checking would only repeat the file-level problem


def _fatal(category: str, detail: str) -> Sniffed:
    return Sniffed(None, [make_problem(None, category, detail)], fatal=True)


def _looks_like_json_array(first_line: bytes) -> bool:
    if not first_line.startswith(b"["):
        return False
    try:
        value = orjson.loads(first_line)
    except orjson.JSONDecodeError:
        return True  # an array spread over several lines
    return isinstance(value, list) and any(isinstance(item, dict) for item in value)


def _detect_format(path: Path) -> str | None:
    for number, raw in iter_lines(path):
        if number > SNIFF_LINES:
            return None
        line = strip_line(raw or b"", number == 1)
        try:
            value = orjson.loads(line) if line else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict) and (found := line_format(value)):
            return found
    return None


def sniff_file(path: Path, forced_format: str | None = None) -> Sniffed:
    """File-level problems and the format every line will be checked against."""
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head.strip():
        return _fatal("empty_file", "the file is empty")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return _fatal("binary_file", f"the file is {what}, not JSONL")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _fatal("encoding", "the file is UTF-16, not UTF-8")
    if b"\x00" in head:
        return _fatal("binary_file", "the file contains NUL bytes: it is binary, not JSONL text")
    problems = []
    if head.startswith(UTF8_BOM):
        problems.append(make_problem(1, "byte_order_mark", "the file starts with a UTF-8 byte order mark"))
    first = strip_line(head.split(b"\n", 1)[0], True)
    if _looks_like_json_array(first):
        return _fatal("not_jsonl", "the file is one JSON array, not JSON Lines (one object per line)")
    if first in (b"{", b"{\r"):
        problems.append(
            make_problem(1, "invalid_json", "the file looks pretty-printed: each example must be on one line")
        )
        return Sniffed(None, problems, fatal=True)
    detected = forced_format or _detect_format(path)
    if detected is None:
        problems.append(make_problem(None, "unknown_format", "no line is in a format tunehouse trains on"))
    return Sniffed(detected, problems, fatal=detected is None)
