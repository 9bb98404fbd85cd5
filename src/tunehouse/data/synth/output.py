"""Pairs written as training examples, and files written whole or not at all.

Chat: `{"messages": [system?, user, assistant]}`. Legacy prompt/completion, exactly as seed 003
writes it: the prompt ends with the separator, the completion starts with a space and ends with
the stop sequence. Output files are written to a temporary file beside the target, synced and
renamed into place, so an interrupted run leaves the old file or the new one, never half a line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tunehouse.errors import InvalidRequest

DEFAULT_SEPARATOR = "\n\n###\n\n"
DEFAULT_STOP = " END"


@dataclass(frozen=True)
class ExampleFormat:
    format: str = "chat"  # chat | legacy
    system: str | None = None
    separator: str = DEFAULT_SEPARATOR
    stop: str = DEFAULT_STOP

    def __post_init__(self) -> None:
        if self.format not in ("chat", "legacy"):
            raise InvalidRequest("--format must be chat or legacy.", param="format")
        if self.format == "legacy" and self.system:
            raise InvalidRequest(
                "--system applies to chat examples; legacy prompts have no system turn.", param="system"
            )

    def example(self, question: str, answer: str) -> dict[str, Any]:
        """One training example.

        >>> ExampleFormat("legacy").example("When?", "In 1901.")
        {'prompt': 'When?\\n\\n###\\n\\n', 'completion': ' In 1901. END'}
        """
        if self.format == "legacy":
            return {"prompt": question + self.separator, "completion": " " + answer + self.stop}
        system = [{"role": "system", "content": self.system}] if self.system else []
        return {"messages": [*system, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def provenance_path(out: Path) -> Path:
    """`qa.jsonl` → `qa.provenance.jsonl`."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".provenance.jsonl")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically (temporary file, fsync, rename); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row) + b"\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
