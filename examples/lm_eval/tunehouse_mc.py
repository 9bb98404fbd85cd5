"""The `tunehouse_mc` task's data: the JSONL beside this file, as the `test` split lm-eval reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ITEMS = Path(__file__).with_suffix(".jsonl")


def load(**_: Any) -> Any:
    """A DatasetDict with one `test` split; lm-eval passes the task's metadata, which this ignores."""
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in ITEMS.read_text().splitlines() if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})
