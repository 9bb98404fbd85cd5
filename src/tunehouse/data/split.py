"""Train/validation splits that cannot leak, and a check for leakage between two files.

Examples are grouped by a hash of their normalized text (case, accents' composition, punctuation and
whitespace ignored), so exact and near duplicates always land on the same side. Examples that carry
the same `group` id (an example and its rephrasings, from `tunehouse data augment`) are grouped too,
so no rephrasing of a validation question is trained on. Which groups go to validation depends only
on the seed and the text, never on line order, so the same file and seed give the same split on any
machine. Both passes stream; memory is 8 bytes per example, plus a little per grouped example.
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


def group_key(example: dict[str, Any]) -> int | None:
    """The hash of the example's `group` id, when it has one."""
    group = example.get("group")
    return content_hash(b"group\0" + group.encode()) if isinstance(group, str) and group else None


def _keyed_lines(path: Path) -> Iterator[tuple[int, bytes, int | None, int | None]]:
    """(line number, raw line, key, group key) per non-blank line; keys are None for a line that is not an object."""
    for number, raw in iter_lines(path):
        line = strip_line(raw or b"", number == 1)
        if not line:
            continue
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError:
            example = None
        if isinstance(example, dict):
            yield number, line, example_key(example), group_key(example)
        else:
            yield number, line, None, None


class _Joined:
    """Keys joined into sets (union-find): an example's text key with its group's key. Roots are the least key."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, key: int) -> int:
        root = key
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while key != root:
            key, self.parent[key] = self.parent[key], root
        return root

    def join(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _ranks(keys: np.ndarray, seed: int) -> np.ndarray:
    """A seed-dependent pseudo-random order of the keys (a multiply-xorshift mix of key and seed)."""
    with np.errstate(over="ignore"):
        mixed = (keys ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) * _MIX
        return mixed ^ (mixed >> np.uint64(29))


@dataclass
class SplitReport:
    n_train: int
    n_valid: int
    n_groups: int  # distinct normalized texts and paraphrase groups
    n_grouped_duplicates: int  # examples that share their text or group with another (kept together)
    n_dropped: int  # lines that were not JSON objects
    dropped_lines: list[int] = field(default_factory=list)


def split_file(
    path: str | Path, train_out: str | Path, valid_out: str | Path, valid_fraction: float = 0.1, seed: int = 0
) -> SplitReport:
    """Write a deterministic, leak-free split of `path` into two JSONL files."""
    path = existing_file(path)
    if not 0 < valid_fraction < 1:
        raise InvalidRequest("--valid must be a fraction between 0 and 1, e.g. 0.1.", param="valid")
    keys, joined = array("Q"), _Joined()
    for _, _, key, group in _keyed_lines(path):
        if key is not None:
            keys.append(key)
            if group is not None:
                joined.join(key, group)
    if joined.parent:
        keys = array("Q", (joined.find(key) for key in keys))
    values = np.frombuffer(keys, dtype=np.uint64) if len(keys) else np.zeros(0, dtype=np.uint64)
    unique, counts = np.unique(values, return_counts=True)
    order = np.argsort(_ranks(unique, seed), kind="stable")
    wanted = max(1, round(valid_fraction * len(values))) if len(values) > 1 else 0
    taken = np.searchsorted(np.cumsum(counts[order]), wanted) + 1 if wanted else 0
    valid_keys = np.sort(unique[order[:taken]])
    report = SplitReport(0, 0, len(unique), int(counts[counts > 1].sum()), 0)
    train_tmp, valid_tmp = Path(f"{train_out}.tmp"), Path(f"{valid_out}.tmp")
    with train_tmp.open("wb") as train_fh, valid_tmp.open("wb") as valid_fh:
        for number, line, key, _ in _keyed_lines(path):
            if key is None:
                report.n_dropped += 1
                report.dropped_lines += [number] if len(report.dropped_lines) < 20 else []
                continue
            key = joined.find(key)
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
    n_overlapping: int  # of them, how many match a training example (normalized text or group)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (valid line, train line), first 20
    n_same_group: int = 0  # of the overlapping, how many match only by group (a rephrasing of a trained example)

    @property
    def fraction(self) -> float:
        return self.n_overlapping / self.n_valid if self.n_valid else 0.0


class _SortedKeys:
    """Keys with the line each first came from, for lookups by binary search."""

    def __init__(self, keys: array[int], lines: array[int]) -> None:
        values = np.frombuffer(keys, dtype=np.uint64) if len(keys) else np.zeros(0, dtype=np.uint64)
        self.order = np.argsort(values, kind="stable")
        self.sorted = values[self.order]
        self.lines = lines

    def line_of(self, key: int | None) -> int | None:
        if key is None:
            return None
        index = int(np.searchsorted(self.sorted, np.uint64(key)))
        if index < len(self.sorted) and self.sorted[index] == np.uint64(key):
            return int(self.lines[int(self.order[index])])
        return None


def overlap(train: str | Path, valid: str | Path) -> OverlapReport:
    """Validation examples whose normalized text or `group` also appears in the training file (leakage)."""
    text_keys, text_lines, group_keys, group_lines = array("Q"), array("Q"), array("Q"), array("Q")
    for number, _, key, group in _keyed_lines(existing_file(train)):
        if key is not None:
            text_keys.append(key)
            text_lines.append(number)
        if group is not None:
            group_keys.append(group)
            group_lines.append(number)
    texts, groups = _SortedKeys(text_keys, text_lines), _SortedKeys(group_keys, group_lines)
    report = OverlapReport(0, 0)
    for number, _, key, group in _keyed_lines(existing_file(valid)):
        if key is None:
            continue
        report.n_valid += 1
        same_text = texts.line_of(key)
        train_line = same_text if same_text is not None else groups.line_of(group)
        if train_line is not None:
            report.n_overlapping += 1
            report.n_same_group += same_text is None
            if len(report.samples) < 20:
                report.samples.append((number, train_line))
    return report
