"""Aggregate scores of a run, per testing criterion, from its output items' results (wire shape), so
the job's summary event and `tunehouse eval` report a comparison the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CriterionScore:
    name: str
    passed: int
    graded: int
    mean_score: float

    @property
    def pass_rate(self) -> float:
        return self.passed / self.graded if self.graded else 0.0


def criterion_scores(
    criteria: list[dict[str, Any]], item_results: Iterable[list[dict[str, Any]]]
) -> list[CriterionScore]:
    """Per criterion (in the eval's order): items passed, items graded, mean score.

    `item_results` holds each output item's `results`; a result is matched to its criterion by id.
    """
    sums = {c["id"]: [0, 0, 0.0] for c in criteria}
    for results in item_results:
        for result in results:
            tally = sums.get(result["name"])
            if tally is not None:
                tally[0] += int(bool(result["passed"]))
                tally[1] += 1
                tally[2] += float(result["score"])
    return [
        CriterionScore(
            c["name"], int(sums[c["id"]][0]), int(sums[c["id"]][1]), sums[c["id"]][2] / max(1, sums[c["id"]][1])
        )
        for c in criteria
    ]


def describe_change(before: list[CriterionScore], after: list[CriterionScore]) -> str:
    """`Exact match 10% → 60%, Similarity (fuzzy_match) mean 0.42 → 0.87` for two runs of one eval."""
    parts = []
    for old, new in zip(before, after, strict=True):
        parts.append(
            f"{new.name} {old.pass_rate:.0%} → {new.pass_rate:.0%} passed "
            f"(mean score {old.mean_score:.2f} → {new.mean_score:.2f})"
        )
    return "; ".join(parts)
