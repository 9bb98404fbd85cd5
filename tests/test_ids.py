"""Ids look like OpenAI's and sort by creation time (cursor pagination depends on it)."""

from __future__ import annotations

import re

from tunehouse.ids import new_id


def test_ids_have_prefix_and_sort_by_time() -> None:
    ids = [new_id("ftjob-") for _ in range(200)]
    assert all(re.fullmatch(r"ftjob-[0-9A-Za-z]{24}", i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
