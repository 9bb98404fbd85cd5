"""The one validator: `tunehouse data validate`, the library and the server's `validating_files` step.

`validate_file` sniffs the file (is it JSONL at all, which format), scans every line in one
streaming pass, then adds what only the whole file shows: duplicates, too few examples and, for
legacy prompt/completion files, the `prepare_data` checks in `legacy.py`.
"""

from __future__ import annotations

from array import array
from pathlib import Path

from tunehouse.data.formats import FORMATS
from tunehouse.data.reader import existing_file, iter_examples
from tunehouse.data.report import Problem, ProblemLog, ValidationReport, make_problem
from tunehouse.data.scan import Progress, ScanResult, scan_file
from tunehouse.data.sniff import sniff_file
from tunehouse.data.split import OverlapReport, overlap
from tunehouse.data.token_count import TokenCounter
from tunehouse.errors import InvalidRequest

__all__ = [
    "OverlapReport",
    "Problem",
    "ValidationReport",
    "iter_examples",
    "overlap",
    "validate_file",
    "validate_scan",
]


def check_format_name(format: str | None) -> str | None:
    if format is not None and format not in FORMATS:
        raise InvalidRequest(f"Unknown format {format!r}; use one of {', '.join(FORMATS)}.", param="format")
    return format


def _duplicates(hashes: array, lines: array, log: ProblemLog) -> None:
    first_seen: dict[int, int] = {}
    repeated = set(_repeated_hashes(hashes))
    if not repeated:
        return
    for digest, line in zip(hashes, lines, strict=True):
        if digest not in repeated:
            continue
        if digest in first_seen:
            log.add(make_problem(line, "duplicate_example", f"same example as line {first_seen[digest]}"))
        else:
            first_seen[digest] = line


def _repeated_hashes(hashes: array) -> list[int]:
    """Hashes that occur more than once, found by sorting (8 bytes per example, not a dict entry)."""
    import numpy as np

    values = np.frombuffer(hashes, dtype=np.uint64) if len(hashes) else np.zeros(0, dtype=np.uint64)
    ordered = np.sort(values)
    return ordered[1:][ordered[1:] == ordered[:-1]].tolist()


def validate_scan(
    path: str | Path,
    format: str | None = None,
    min_examples: int = 10,
    counter: TokenCounter | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
) -> tuple[ValidationReport, ScanResult | None]:
    """Validate, and with a `counter` also count tokens in the same pass (what `stats` uses)."""
    path = existing_file(path)
    sniffed = sniff_file(path, check_format_name(format))
    log = ProblemLog()
    for problem in sniffed.problems:
        log.add(problem)
    if sniffed.fatal:
        report = ValidationReport(str(path), sniffed.format, 0, log.problems(), 0, dict(log.counts))
        return report, None
    scanned = scan_file(path, sniffed.format, counter, jobs, progress)
    log.extend(scanned.log)
    if scanned.crlf:
        log.add(make_problem(None, "crlf_line_endings", f"{scanned.crlf} lines end with CRLF (\\r\\n)"))
    _duplicates(scanned.hashes, scanned.hash_lines, log)
    if sniffed.format == "completion":
        from tunehouse.data.legacy import legacy_problems

        for problem in legacy_problems(path):
            log.add(problem)
    if sniffed.format is not None and scanned.n_valid < min_examples:
        detail = f"{scanned.n_valid} valid examples; at least {min_examples} are needed"
        fix = f"Provide at least {min_examples} valid examples (50 to 100 is a good start)."
        log.add(make_problem(None, "too_few_examples", detail, fix=fix))
    report = ValidationReport(
        str(path), sniffed.format, scanned.n_examples, log.problems(), scanned.n_valid, dict(log.counts)
    )
    return report, scanned


def validate_file(path: str | Path, format: str | None = None, min_examples: int = 10) -> ValidationReport:
    """Every problem in a training or validation file, each with its line, category and fix."""
    report, _ = validate_scan(path, format, min_examples)
    return report
