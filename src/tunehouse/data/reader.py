"""Streaming a JSONL file line by line in constant memory, in chunks that processes can share.

A file is cut into byte ranges that end on a newline (`plan_chunks`); each range is read in blocks
(`iter_lines`), so a 1 GB file never sits in memory and two processes can scan two ranges at once.
A line longer than `MAX_LINE_BYTES` is skipped without being held, and reported by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tunehouse.errors import DataValidationError, InvalidRequest

BLOCK_BYTES = 1 << 22  # 4 MiB reads
CHUNK_BYTES = 1 << 23  # 8 MiB per unit of (parallel) work
MAX_LINE_BYTES = 1 << 24  # 16 MiB: far past any context window, yet still cheap to skip
UTF8_BOM = b"\xef\xbb\xbf"


def existing_file(path: str | Path) -> Path:
    """The path as a Path, or InvalidRequest naming it when it is missing or not a file."""
    path = Path(path)
    if not path.exists():
        raise InvalidRequest(f"No such file: {path}", param="file")
    if not path.is_file():
        raise InvalidRequest(f"Not a file: {path}", param="file")
    return path


def plan_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covering the file, each ending just after a newline (or at EOF)."""
    size = path.stat().st_size
    bounds = [0]
    with path.open("rb") as fh:
        while bounds[-1] + chunk_bytes < size:
            fh.seek(bounds[-1] + chunk_bytes)
            while True:
                block = fh.read(1 << 16)
                if not block:
                    bounds.append(size)
                    break
                newline = block.find(b"\n")
                if newline >= 0:
                    bounds.append(fh.tell() - len(block) + newline + 1)
                    break
            if bounds[-1] >= size:
                break
    if bounds[-1] != size:
        bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def iter_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(line number counted from 1 at `start`, line bytes without the newline) for [start, end).

    A line over MAX_LINE_BYTES comes back as None: its bytes are skipped, never accumulated.
    """
    end = os.path.getsize(path) if end is None else end
    number = 0
    carry = b""
    skipping = False
    with path.open("rb") as fh:
        fh.seek(start)
        remaining = end - start
        while remaining > 0:
            block = fh.read(min(BLOCK_BYTES, remaining))
            if not block:
                break
            remaining -= len(block)
            lines = block.split(b"\n")
            for index, piece in enumerate(lines[:-1]):
                number += 1
                if skipping:
                    skipping = False
                    yield number, None
                    continue
                line = carry + piece if index == 0 else piece
                yield number, (line if len(line) <= MAX_LINE_BYTES else None)
                if index == 0:
                    carry = b""
            tail = lines[-1]
            if len(lines) == 1 and (skipping or len(carry) + len(tail) > MAX_LINE_BYTES):
                skipping, carry = True, b""
            elif len(lines) == 1:
                carry += tail
            elif len(tail) > MAX_LINE_BYTES:
                skipping, carry = True, b""
            else:
                carry = tail
    if skipping:
        yield number + 1, None
    elif carry:
        yield number + 1, carry


def strip_line(raw: bytes, first: bool) -> bytes:
    """The line without a UTF-8 BOM (first line only) and surrounding whitespace (including CR)."""
    if first and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    return raw.strip()


def iter_examples(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, parsed object) for every non-blank line of a file that validated.

    Meant for files `validate_file` accepted; a line that still fails raises DataValidationError
    naming it rather than a JSON traceback.
    """
    path = existing_file(path)
    for number, raw in iter_lines(path):
        if raw is None:
            raise DataValidationError(f"line {number}: longer than {MAX_LINE_BYTES} bytes", param="file")
        line = strip_line(raw, number == 1)
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DataValidationError(f"line {number}: not valid JSON ({exc})", param="file") from exc
        if not isinstance(value, dict):
            raise DataValidationError(f"line {number}: not a JSON object", param="file")
        yield number, value
