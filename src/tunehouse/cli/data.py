"""`tunehouse data …`: validate, count, convert, split and check training files before uploading them.

Thin: each command calls `tunehouse.data` and prints the result (a rich table, or `--json` for
machines). Every failure is a TunehouseError printed on one line; exit codes: 0 clean, 1 problems
found (errors, leakage) or the command failed.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from tunehouse.cli.synth import augment_command, synth_command
from tunehouse.config import DEFAULT_BASE_MODEL
from tunehouse.errors import InvalidRequest, TunehouseError
from tunehouse.train.options import OPTIONS_BY_NAME

data_app = typer.Typer(help="Validate, count, convert and split training files.", no_args_is_help=True)
data_app.command("synth")(synth_command)
data_app.command("augment")(augment_command)
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
PROGRESS_MIN_BYTES = 16 << 20


def _fail(exc: TunehouseError) -> None:
    err_console.print(f"[red]Error:[/red] {exc.message}", markup=True)
    raise typer.Exit(1)


@contextmanager
def _errors_as_messages() -> Iterator[None]:
    try:
        yield
    except TunehouseError as exc:
        _fail(exc)


@contextmanager
def _progress(path: Path, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for large files in a terminal; None (no bar) otherwise."""
    size = path.stat().st_size if path.is_file() else 0
    if size < PROGRESS_MIN_BYTES or not err_console.is_terminal:
        yield None
        return
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=size)
        yield lambda done: bar.update(task, completed=done)


def _unescape(value: str | None) -> str | None:
    r"""Let users type separators as `'\n\n###\n\n'` on a shell line."""
    return None if value is None else codecs.decode(value, "unicode_escape")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _print_report(report: Any) -> None:
    if report.problems:
        table = Table("line", "severity", "category", "problem", "fix", show_lines=False)
        for p in report.problems:
            color = "red" if p.severity == "error" else "yellow"
            table.add_row(str(p.line or ""), f"[{color}]{p.severity}[/{color}]", p.category, p.message, p.fix)
        console.print(table)
    verdict = "[green]OK[/green]" if report.ok else f"[red]{sum(_counts(report, 'error').values())} errors[/red]"
    warnings = sum(_counts(report, "warning").values())
    console.print(
        f"{report.path}: {report.format or 'unknown'} format, {report.n_examples} examples "
        f"({report.n_valid} valid), {verdict}, {warnings} warnings"
    )


def _counts(report: Any, severity: str) -> dict[str, int]:
    from tunehouse.data.categories import CATEGORIES

    return {c: n for c, n in report.counts.items() if CATEGORIES[c][0] == severity}


@data_app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="The JSONL file to check."),
    format: str | None = typer.Option(None, "--format", help="chat, completion or preference (default: detect)."),
    min_examples: int = typer.Option(10, help="Fewer valid examples than this is an error."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    fix: Path | None = typer.Option(None, "--fix", help="Legacy files: write a corrected copy here."),
    jobs: int = typer.Option(0, help="Processes to use (0: one per core)."),
) -> None:
    """Check every line of a training file; exit 1 when there are errors."""
    from tunehouse.data.scan import default_jobs
    from tunehouse.data.validate import validate_scan

    with _errors_as_messages(), _progress(file, "validating") as progress:
        report, _ = validate_scan(file, format, min_examples, None, jobs or default_jobs(), progress)
    if as_json:
        _print_json(report.to_dict())
    else:
        _print_report(report)
    if fix is not None:
        if report.format != "completion":
            _fail(InvalidRequest("--fix corrects legacy prompt/completion files only.", param="fix"))
        from tunehouse.data.legacy import fix_legacy_file

        with _errors_as_messages():
            changes = fix_legacy_file(file, fix)
        for change in changes:
            err_console.print(f"fixed: {change}")
    raise typer.Exit(0 if report.ok else 1)


@data_app.command("stats")
def stats(
    file: Path = typer.Argument(..., help="The JSONL file to count."),
    model: str = typer.Option(DEFAULT_BASE_MODEL, "--model", "-m", help="Base model whose tokenizer to use."),
    max_length: int = typer.Option(
        OPTIONS_BY_NAME["max_length"].default, help="Training max length in tokens (`training.max_length`)."
    ),
    format: str | None = typer.Option(None, "--format", help="chat, completion or preference (default: detect)."),
    throughput: float | None = typer.Option(None, help="Training tokens/s to assume instead of measuring."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure training throughput here."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    jobs: int = typer.Option(0, help="Processes to use (0: one per core)."),
) -> None:
    """Token counts with the model's own tokenizer and chat template, auto epochs and a time estimate."""
    from tunehouse.bench.throughput import measure_throughput
    from tunehouse.data.stats import compute_stats
    from tunehouse.train.hyperparams import auto_n_epochs

    with _errors_as_messages(), _progress(file, "counting") as progress:
        result = compute_stats(
            file,
            model,
            max_length=max_length,
            epochs_for=auto_n_epochs,
            format=format,
            jobs=jobs or None,
            throughput=throughput,
            measure_throughput=measure_throughput if measure else None,
            progress=progress,
        )
    if as_json:
        _print_json(result.to_dict())
        raise typer.Exit(0 if result.validation.ok else 1)
    if not result.validation.ok:
        _print_report(result.validation)
    table = Table("tokens per example", "examples", title=f"{result.path} with {result.model}'s tokenizer")
    for low, high, n in result.histogram:
        table.add_row(f"{low}–{high}", str(n))
    console.print(table)
    mb_per_s = result.bytes / 1e6 / result.seconds if result.seconds else 0.0
    lines = [
        f"examples: {result.n_examples}   tokens per example: min {result.min}, median {result.median}, "
        f"p95 {result.p95}, max {result.max}",
        f"over the training max length {result.max_length}: {result.n_truncated} (truncated)"
        + (
            f"; {result.n_without_trained_tokens} left with nothing to train" if result.n_without_trained_tokens else ""
        ),
        f"tokens per epoch: {result.epoch_tokens:,} (of which trained assistant tokens: {result.assistant_tokens:,})",
        f"auto n_epochs: {result.n_epochs} -> trained_tokens {result.trained_tokens:,}",
    ]
    if result.estimated_seconds is not None and result.tokens_per_second:
        lines.append(
            f"estimated training time here: {result.estimated_seconds / 60:,.1f} min "
            f"(at {result.tokens_per_second:,.0f} tokens/s)"
        )
    lines.append(f"counted in {result.seconds:.1f} s ({mb_per_s:.1f} MB/s, {result.counting} counting)")
    for line in lines:
        console.print(line)
    raise typer.Exit(0 if result.validation.ok else 1)


@data_app.command("convert")
def convert(
    source: Path = typer.Argument(..., help="A .csv, .tsv, .json, .jsonl or .parquet file."),
    out: Path = typer.Option(..., "--out", "-o", help="The JSONL file to write."),
    to: str = typer.Option("chat", help="chat or completion (legacy prompt/completion)."),
    user: str | None = typer.Option(None, help="Column holding the user message."),
    assistant: str | None = typer.Option(None, help="Column holding the assistant reply."),
    system: str | None = typer.Option(None, help="System message text for every example."),
    system_column: str | None = typer.Option(None, help="Column holding a per-row system message."),
    separator: str | None = typer.Option(None, help=r"Legacy prompt separator (e.g. '\n\n###\n\n')."),
    stop: str | None = typer.Option(None, help="Legacy stop sequence (e.g. ' END')."),
) -> None:
    """Convert tables (by column mapping) or legacy prompt/completion files to chat JSONL, or back."""
    from tunehouse.data.convert import Mapping, convert_file

    mapping = Mapping(to, user, assistant, system, system_column, _unescape(separator), _unescape(stop))
    with _errors_as_messages():
        report = convert_file(source, out, mapping)
    for note in report.notes:
        console.print(note)
    console.print(f"wrote {report.n_written} of {report.n_read} rows to {out}")
    for reason, count in report.dropped.most_common():
        console.print(f"dropped {count}: {reason}")
    if report.dropped_rows:
        console.print("first dropped rows: " + ", ".join(f"{row} ({why})" for row, why in report.dropped_rows[:5]))


@data_app.command("split")
def split(
    file: Path = typer.Argument(..., help="The JSONL file to split."),
    valid: float = typer.Option(0.1, "--valid", help="Fraction of examples for validation."),
    seed: int = typer.Option(0, "--seed", help="Same file and seed, same split."),
    train_out: Path | None = typer.Option(None, help="Default: FILE_train.jsonl."),
    valid_out: Path | None = typer.Option(None, help="Default: FILE_valid.jsonl."),
) -> None:
    """Deterministic train/validation split; duplicates and near-duplicates stay on one side."""
    from tunehouse.data.split import split_file

    train_out = train_out or file.with_name(f"{file.stem}_train.jsonl")
    valid_out = valid_out or file.with_name(f"{file.stem}_valid.jsonl")
    with _errors_as_messages():
        report = split_file(file, train_out, valid_out, valid, seed)
    console.print(f"train: {report.n_train} examples -> {train_out}")
    console.print(f"valid: {report.n_valid} examples -> {valid_out}")
    console.print(
        f"{report.n_grouped_duplicates} examples share their text or paraphrase group with another "
        "and were kept together"
    )
    if report.n_dropped:
        lines = ", ".join(map(str, report.dropped_lines))
        console.print(f"dropped {report.n_dropped} lines that are not JSON objects (lines {lines})")


@data_app.command("overlap")
def overlap_command(
    train: Path = typer.Argument(..., help="Training file."),
    valid: Path = typer.Argument(..., help="Validation file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Report validation examples that also appear in the training file; exit 1 when any do."""
    from tunehouse.data.split import overlap

    with _errors_as_messages():
        report = overlap(train, valid)
    if as_json:
        _print_json(
            {
                "n_valid": report.n_valid,
                "n_overlapping": report.n_overlapping,
                "n_same_group": report.n_same_group,
                "samples": [{"valid_line": v, "train_line": t} for v, t in report.samples],
            }
        )
    elif report.n_overlapping:
        console.print(
            f"{report.n_overlapping} of {report.n_valid} validation examples ({report.fraction:.1%}) also "
            "appear in the training file (ignoring case, punctuation and spacing"
            + (f"; {report.n_same_group} as a rephrasing in the same group" if report.n_same_group else "")
            + "):"
        )
        for valid_line, train_line in report.samples:
            console.print(f"  valid line {valid_line} = train line {train_line}")
    else:
        console.print(f"no overlap: none of the {report.n_valid} validation examples appear in the training file")
    raise typer.Exit(1 if report.n_overlapping else 0)
