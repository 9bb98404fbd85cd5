"""Train/validation splits that cannot leak, and a check for leakage between two files.

Examples are grouped by a hash of their normalized text (case, accents' composition, punctuation and
whitespace ignored), so exact and near duplicates always land on the same side. Which groups go to
validation depends only on the seed and the text, never on line order, so the same file and seed
give the same split on any machine. Both passes stream; memory is 8 bytes per example.
"""

from __future__ import annotations

import os
import re
import unicodedata
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tunehouse.data.reader import existing_file, iter_lines, strip_line
from tunehouse.data.scan import content_hash
from tunehouse.errors import InvalidRequest
from tunehouse.models.template import message_text

_NOT_WORD = re.compile(r"[\W_]+")
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _texts(value: Any) -> Iterator[str]:
    """Every text an example holds (message contents, prompt, completion), in order."""
    if isinstance(value, dict):
        if "content" in value or "role" in value:
            yield message_text(value.get("content"))
            if value.get("tool_calls"):
                yield orjson.dumps(value["tool_calls"]).decode()
            return
        for key in ("messages", "input", "preferred_output", "non_preferred_output", "prompt", "completion"):
            if key in value:
                yield from _texts(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, str):
        yield value


def normalized_text(example: dict[str, Any]) -> str:
    """The example's text with case, punctuation and spacing removed: near duplicates compare equal."""
    text = unicodedata.normalize("NFKC", " ".join(_texts(example))).casefold()
    return " ".join(_NOT_WORD.sub(" ", text).split())


def example_key(example: dict[str, Any]) -> int:
    return content_hash(normalized_text(example).encode())


def _keyed_lines(path: Path) -> Iterator[tuple[int, bytes, int | None]]:
    """(line number, raw line, key) per non-blank line; key is None when the line is not a JSON object."""
    for number, raw in iter_lines(path):
        line = strip_line(raw or b"", number == 1)
        if not line:
            continue
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError:
            example = None
        yield number, line, example_key(example) if isinstance(example, dict) else None


def _ranks(keys: np.ndarray, seed: int) -> np.ndarray:
    """A seed-dependent pseudo-random order of the keys (a multiply-xorshift mix of key and seed)."""
    with np.errstate(over="ignore"):
        mixed = (keys ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) * _MIX
        return mixed ^ (mixed >> np.uint64(29))


@dataclass
class SplitReport:
    n_train: int
    n_valid: int
    n_groups: int  # distinct normalized texts
    n_grouped_duplicates: int  # examples that share their text with another (kept together)
    n_dropped: int  # lines that were not JSON objects
    dropped_lines: list[int] = field(default_factory=list)


def split_file(
    path: str | Path, train_out: str | Path, valid_out: str | Path, valid_fraction: float = 0.1, seed: int = 0
) -> SplitReport:
    """Write a deterministic, leak-free split of `path` into two JSONL files."""
    path = existing_file(path)
    if not 0 < valid_fraction < 1:
        raise InvalidRequest("--valid must be a fraction between 0 and 1, e.g. 0.1.", param="valid")
    keys = array("Q", (key for _, _, key in _keyed_lines(path) if key is not None))
    values = np.frombuffer(keys, dtype=np.uint64) if len(keys) else np.zeros(0, dtype=np.uint64)
    unique, counts = np.unique(values, return_counts=True)
    order = np.argsort(_ranks(unique, seed), kind="stable")
    wanted = max(1, round(valid_fraction * len(values))) if len(values) > 1 else 0
    taken = np.searchsorted(np.cumsum(counts[order]), wanted) + 1 if wanted else 0
    valid_keys = np.sort(unique[order[:taken]])
    report = SplitReport(0, 0, len(unique), int(counts[counts > 1].sum()), 0)
    train_tmp, valid_tmp = Path(f"{train_out}.tmp"), Path(f"{valid_out}.tmp")
    with train_tmp.open("wb") as train_fh, valid_tmp.open("wb") as valid_fh:
        for number, line, key in _keyed_lines(path):
            if key is None:
                report.n_dropped += 1
                report.dropped_lines += [number] if len(report.dropped_lines) < 20 else []
                continue
            index = np.searchsorted(valid_keys, np.uint64(key))
            in_valid = index < len(valid_keys) and valid_keys[index] == np.uint64(key)
            (valid_fh if in_valid else train_fh).write(line + b"\n")
            report.n_valid += int(in_valid)
            report.n_train += int(not in_valid)
    os.replace(train_tmp, train_out)
    os.replace(valid_tmp, valid_out)
    return report


@dataclass
class OverlapReport:
    n_valid: int  # validation examples read
    n_overlapping: int  # of them, how many match a training example (normalized text)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (valid line, train line), first 20

    @property
    def fraction(self) -> float:
        return self.n_overlapping / self.n_valid if self.n_valid else 0.0


def overlap(train: str | Path, valid: str | Path) -> OverlapReport:
    """Validation examples whose normalized text also appears in the training file (leakage)."""
    train_keys, train_lines = array("Q"), array("Q")
    for number, _, key in _keyed_lines(existing_file(train)):
        if key is not None:
            train_keys.append(key)
            train_lines.append(number)
    keys = np.frombuffer(train_keys, dtype=np.uint64) if len(train_keys) else np.zeros(0, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    report = OverlapReport(0, 0)
    for number, _, key in _keyed_lines(existing_file(valid)):
        if key is None:
            continue
        report.n_valid += 1
        index = int(np.searchsorted(sorted_keys, np.uint64(key)))
        if index < len(sorted_keys) and sorted_keys[index] == np.uint64(key):
            report.n_overlapping += 1
            if len(report.samples) < 20:
                report.samples.append((number, int(train_lines[int(order[index])])))
    return report
