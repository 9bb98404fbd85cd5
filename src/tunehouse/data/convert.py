"""Converting tables and the legacy format into training JSONL, saying what was dropped and why.

Sources: CSV, TSV, JSON (an array of objects), JSONL and Parquet, read as rows of named fields.
Targets: chat (`{"messages": [...]}`) by column mapping or from legacy prompt/completion, and legacy
prompt/completion from chat. Going to chat removes the legacy separator and stop sequence (they mean
nothing to a chat template); going to legacy adds them, as `prepare_data` would.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tunehouse.data.legacy import LegacyFacts
from tunehouse.data.reader import existing_file, iter_lines, strip_line
from tunehouse.errors import InvalidRequest
from tunehouse.models.template import message_text

DEFAULT_SEPARATOR = "\n\n###\n\n"
DEFAULT_STOP = " END"
Row = tuple[int, dict[str, Any] | None, str]  # (row number, fields or None, why it is unreadable)


@dataclass
class ConvertReport:
    n_read: int = 0
    n_written: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> rows
    dropped_rows: list[tuple[int, str]] = field(default_factory=list)  # first 20 (row, reason)
    notes: list[str] = field(default_factory=list)  # what was changed in the rows kept

    def drop(self, row: int, reason: str) -> None:
        self.dropped[reason] += 1
        if len(self.dropped_rows) < 20:
            self.dropped_rows.append((row, reason))


def _jsonl_rows(path: Path) -> Iterator[Row]:
    for number, raw in iter_lines(path):
        line = strip_line(raw or b"", number == 1)
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield number, None, "not valid JSON"
            continue
        yield (number, value, "") if isinstance(value, dict) else (number, None, "not a JSON object")


def _json_rows(path: Path) -> Iterator[Row]:
    try:
        value = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{path} is not valid JSON ({exc}).", param="file") from exc
    if isinstance(value, dict):  # {"data": [...]} and similar wrappers
        value = next((v for v in value.values() if isinstance(v, list)), [value])
    if not isinstance(value, list):
        raise InvalidRequest(f"{path} holds a JSON {type(value).__name__}, not an array of objects.", param="file")
    for number, item in enumerate(value, start=1):
        yield (number, item, "") if isinstance(item, dict) else (number, None, "not a JSON object")


def _csv_rows(path: Path, delimiter: str) -> Iterator[Row]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.DictReader(fh, delimiter=delimiter), start=2):
            yield number, dict(row), ""


def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidRequest("Reading Parquet needs pyarrow: `pip install pyarrow`.", param="file") from exc
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield number, row, ""


def read_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a CSV/TSV/JSON/JSONL/Parquet file, chosen by extension, streamed where the format allows."""
    path = existing_file(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix in (".csv", ".tsv", ".tab"):
        return _csv_rows(path, "," if suffix == ".csv" else "\t")
    if suffix in (".parquet", ".pq"):
        return _parquet_rows(path)
    raise InvalidRequest(f"Cannot read {path.name}: use a .csv, .tsv, .json, .jsonl or .parquet file.", param="file")


def _text(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _columns_to_chat(
    row: dict[str, Any], user: str, assistant: str, system: str | None, system_column: str | None
) -> dict[str, Any] | str:
    for column in (user, assistant, system_column):
        if column and column not in row:
            return f"no column {column!r}"
    user_text, assistant_text = _text(row, user), _text(row, assistant)
    if not user_text or not user_text.strip():
        return f"empty {user!r}"
    if not assistant_text or not assistant_text.strip():
        return f"empty {assistant!r}"
    messages = []
    system_text = _text(row, system_column) if system_column else system
    if system_text:
        messages.append({"role": "system", "content": system_text})
    messages += [{"role": "user", "content": user_text}, {"role": "assistant", "content": assistant_text}]
    return {"messages": messages}


def _legacy_to_chat(row: dict[str, Any], separator: str, stop: str, system: str | None) -> dict[str, Any] | str:
    prompt, completion = row.get("prompt"), row.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return "no string prompt and completion"
    if separator and prompt.endswith(separator):
        prompt = prompt[: -len(separator)]
    if stop and completion.endswith(stop):
        completion = completion[: -len(stop)]
    completion = completion.lstrip()
    if not prompt.strip():
        return "empty prompt"
    if not completion:
        return "empty completion"
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}


def _chat_to_legacy(row: dict[str, Any], separator: str, stop: str) -> dict[str, Any] | str:
    messages = row.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "no messages list"
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return "no assistant message"
    if messages[last].get("tool_calls") or messages[last].get("function_call"):
        return "assistant reply is a tool call"
    context = [m for m in messages[:last] if m.get("role") != "system"]
    if not context:
        return "no user message before the assistant"
    if len(context) == 1:
        prompt = message_text(context[0].get("content"))
    else:
        prompt = "\n".join(f"{m.get('role')}: {message_text(m.get('content'))}" for m in context)
    reply = message_text(messages[last].get("content")).strip()
    if not reply:
        return "empty assistant message"
    return {"prompt": prompt + separator, "completion": " " + reply + stop}


def _legacy_markers(path: Path) -> tuple[str, str]:
    """The separator and stop sequence a legacy file uses: the common ends of its prompts and completions."""
    facts = LegacyFacts()
    for _, row, _ in read_rows(path):
        if row and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            facts.add(row["prompt"], row["completion"])
    separator = facts.common_separator if facts.n > 1 and facts.prompts_differ else ""
    stop = facts.common_stop if facts.n > 1 and facts.completions_differ else ""
    return separator, stop


@dataclass(frozen=True)
class Mapping:
    """How rows become examples: by columns, or legacy <-> chat (`to` says which way)."""

    to: str = "chat"  # "chat" | "completion"
    user: str | None = None
    assistant: str | None = None
    system: str | None = None
    system_column: str | None = None
    separator: str | None = None  # None: detect (to chat) or DEFAULT_SEPARATOR (to completion)
    stop: str | None = None


def convert_file(source: str | Path, out: str | Path, mapping: Mapping) -> ConvertReport:
    """Convert `source` into JSONL at `out` (written atomically); the report lists every drop."""
    source, out = Path(source), Path(out)
    if mapping.to not in ("chat", "completion"):
        raise InvalidRequest("--to must be chat or completion.", param="to")
    if (mapping.user is None) != (mapping.assistant is None):
        raise InvalidRequest("Give both --user and --assistant columns, or neither.", param="user")
    report = ConvertReport()
    separator, stop = mapping.separator, mapping.stop
    by_columns = mapping.user is not None
    if mapping.to == "chat" and not by_columns and (separator is None or stop is None):
        found_separator, found_stop = _legacy_markers(source)
        separator = found_separator if separator is None else separator
        stop = found_stop if stop is None else stop
        report.notes.append(f"removed the separator {separator!r} and the stop sequence {stop!r}")
    if mapping.to == "completion":
        separator = DEFAULT_SEPARATOR if separator is None else separator
        stop = DEFAULT_STOP if stop is None else stop
        report.notes.append(f"added the separator {separator!r} to prompts and {stop!r} to completions")
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        for number, row, unreadable in read_rows(source):
            report.n_read += 1
            if row is None:
                report.drop(number, unreadable)
                continue
            if by_columns:
                made = _columns_to_chat(
                    row, mapping.user or "", mapping.assistant or "", mapping.system, mapping.system_column
                )
            elif mapping.to == "chat" and "messages" in row:
                made = {"messages": row["messages"]}
            elif mapping.to == "chat":
                made = _legacy_to_chat(row, separator or "", stop or "", mapping.system)
            else:
                made = _chat_to_legacy(row, separator or "", stop or "")
            if isinstance(made, str):
                report.drop(number, made)
                continue
            fh.write(orjson.dumps(made) + b"\n")
            report.n_written += 1
    os.replace(tmp, out)
    return report
