"""One streaming pass over a file: every per-line check, duplicate hashes and (optionally) token counts.

The file is cut into newline-aligned chunks (`reader.plan_chunks`). Each chunk is scanned on its
own — in this process, or in a pool of worker processes that read their byte range themselves —
and returns a small `ChunkResult` with line numbers counted from its own start; `scan_file`
merges the results in order, shifting line numbers, so memory stays constant whatever the size.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from array import array
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tunehouse.data.formats import CHECKS, line_format
from tunehouse.data.reader import MAX_LINE_BYTES, UTF8_BOM, plan_chunks
from tunehouse.data.reader import iter_lines as read_lines
from tunehouse.data.report import ProblemLog, make_problem
from tunehouse.data.token_count import TemplateMismatch, TokenCounter, TokenTally

COUNT_BATCH = 512  # examples per token-counting batch
Progress = Callable[[int], None]  # called with the number of bytes scanned so far


@dataclass
class ChunkResult:
    n_lines: int = 0
    n_examples: int = 0
    n_valid: int = 0
    crlf: int = 0
    log: ProblemLog = field(default_factory=ProblemLog)
    hashes: array = field(default_factory=lambda: array("Q"))  # content hash per valid example
    hash_lines: array = field(default_factory=lambda: array("Q"))
    tally: TokenTally | None = None


def content_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _duplicate_key(format: str, example: dict[str, Any], line: bytes) -> bytes:
    if format == "completion":
        return f"{example.get('prompt')}\x00{example.get('completion')}".encode(errors="replace")
    return line


def _decode_problem(number: int, line: bytes, exc: orjson.JSONDecodeError) -> Any:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        byte = line[bad.start]
        return make_problem(number, "encoding", f"not valid UTF-8 (byte 0x{byte:02x} at column {bad.start + 1})")
    return make_problem(number, "invalid_json", f"not valid JSON ({str(exc).split(':')[0]})")


class _Counting:
    """Buffers valid examples and counts their tokens a batch at a time."""

    def __init__(self, counter: TokenCounter, result: ChunkResult) -> None:
        self.counter = counter
        self.result = result
        self.result.tally = TokenTally(counter.max_length)
        self.pending: list[tuple[int, dict[str, Any]]] = []

    def add(self, number: int, example: dict[str, Any]) -> None:
        self.pending.append((number, example))
        if len(self.pending) >= COUNT_BATCH:
            self.flush()

    def flush(self) -> None:
        tally, log = self.result.tally, self.result.log
        assert tally is not None
        counted = self.counter.count([example for _, example in self.pending])
        limit = self.counter.max_length
        for (number, _), tokens in zip(self.pending, counted, strict=True):
            if isinstance(tokens, TemplateMismatch):
                log.add(make_problem(number, "template_error", str(tokens), field="messages"))
                continue
            tally.add(tokens)
            if limit is not None and tokens.tokens > limit:
                detail = f"{tokens.tokens} tokens, over the context length {limit}"
                log.add(make_problem(number, "over_context_length", detail))
        self.pending = []


def scan_chunk(
    path: Path, start: int, end: int, format: str | None, counter: TokenCounter | None = None
) -> ChunkResult:
    """Check every line of [start, end); line numbers count from 1 at `start`."""
    result = ChunkResult()
    log = result.log
    counting = _Counting(counter, result) if counter is not None else None
    checks = CHECKS.get(format or "")
    for number, raw in read_lines(path, start, end):
        result.n_lines = number
        if raw is None:
            result.n_examples += 1
            log.add(make_problem(number, "line_too_long", f"longer than {MAX_LINE_BYTES // 2**20} MiB"))
            continue
        if start == 0 and number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        result.crlf += raw.endswith(b"\r")
        line = raw.strip()
        if not line:
            log.add(make_problem(number, "blank_line", "blank line"))
            continue
        result.n_examples += 1
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            log.add(_decode_problem(number, line, exc))
            continue
        if not isinstance(example, dict):
            kind = "array" if isinstance(example, list) else type(example).__name__
            log.add(make_problem(number, "data_type", f"the line is a JSON {kind}, not an object"))
            continue
        found = line_format(example)
        if checks is None or (found is not None and found != format):
            if checks is not None:
                log.add(make_problem(number, "format_mismatch", f"a {found} example in a {format} file"))
            continue
        has_error = False
        for category, where, detail in checks(example):
            problem = make_problem(number, category, detail, field=where)
            has_error = has_error or problem.severity == "error"
            log.add(problem)
        if has_error:
            continue
        result.n_valid += 1
        result.hashes.append(content_hash(_duplicate_key(format or "", example, line)))
        result.hash_lines.append(number)
        if counting is not None:
            counting.add(number, example)
    if counting is not None and counting.pending:
        counting.flush()
    return result


@dataclass
class ScanResult:
    n_lines: int = 0
    n_examples: int = 0
    n_valid: int = 0
    crlf: int = 0
    log: ProblemLog = field(default_factory=ProblemLog)
    hashes: array = field(default_factory=lambda: array("Q"))
    hash_lines: array = field(default_factory=lambda: array("Q"))
    tally: TokenTally | None = None

    def absorb(self, chunk: ChunkResult) -> None:
        offset = self.n_lines
        self.log.extend(chunk.log, offset)
        self.n_examples += chunk.n_examples
        self.n_valid += chunk.n_valid
        self.crlf += chunk.crlf
        self.hashes.extend(chunk.hashes)
        self.hash_lines.extend(line + offset for line in chunk.hash_lines)
        if chunk.tally is not None:
            if self.tally is None:
                self.tally = TokenTally(chunk.tally.max_length)
            self.tally.merge(chunk.tally)
        self.n_lines += chunk.n_lines


_WORKER: dict[str, Any] = {}  # set before the pool forks, so workers inherit the tokenizer unpickled


def _scan_job(bounds: tuple[int, int]) -> ChunkResult:
    return scan_chunk(_WORKER["path"], bounds[0], bounds[1], _WORKER["format"], _WORKER["counter"])


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def scan_file(
    path: Path,
    format: str | None,
    counter: TokenCounter | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
) -> ScanResult:
    """Scan a whole file, over `jobs` processes when it has several chunks and fork is available."""
    chunks = plan_chunks(path)
    total = ScanResult()
    parallel = jobs > 1 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods()
    if not parallel:
        for start, end in chunks:
            total.absorb(scan_chunk(path, start, end, format, counter))
            if progress:
                progress(end)
        return total
    # Rust tokenizer threads do not survive fork; the processes are the parallelism here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER.update(path=path, format=format, counter=counter)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            for (_, end), chunk in zip(chunks, pool.map(_scan_job, chunks), strict=True):
                total.absorb(chunk)
                if progress:
                    progress(end)
    finally:
        _WORKER.clear()
    return total
