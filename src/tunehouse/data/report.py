"""What validation found: problems with a line, a stable category and a one-line fix.

A 1 GB file of garbage must not produce a 1 GB report, so `ProblemLog` keeps only the first
`PROBLEMS_PER_CATEGORY` problems of each category and counts the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunehouse.data.categories import CATEGORIES

PROBLEMS_PER_CATEGORY = 20


@dataclass(frozen=True)
class Problem:
    line: int | None  # 1-based line number; None for file-level problems
    category: str  # stable id, e.g. "missing_messages_list"
    message: str  # one line naming the line and the field
    fix: str  # one-line fix
    severity: str  # "error" | "warning"
    field: str | None = None  # e.g. "messages[1].role"

    def shifted(self, offset: int) -> Problem:
        """The same problem with its line number moved by `offset` (chunks count lines from 1)."""
        if self.line is None or offset == 0:
            return self
        line = self.line + offset
        message = self.message.replace(f"line {self.line}", f"line {line}", 1)
        return Problem(line, self.category, message, self.fix, self.severity, self.field)


def make_problem(
    line: int | None,
    category: str,
    detail: str,
    *,
    field: str | None = None,
    fix: str | None = None,
    severity: str | None = None,
) -> Problem:
    """Build a Problem whose message reads `line 3, messages[1].role: <detail>`."""
    default_severity, default_fix = CATEGORIES[category]
    where = ", ".join(part for part in (f"line {line}" if line else None, field) if part)
    message = f"{where}: {detail}" if where else detail
    return Problem(line, category, message, fix or default_fix, severity or default_severity, field)


@dataclass
class ProblemLog:
    """Problems kept per category up to a cap, with exact counts of every category."""

    cap: int = PROBLEMS_PER_CATEGORY
    kept: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    _kept_counts: dict[str, int] = field(default_factory=dict)

    def _keep(self, problem: Problem) -> None:
        kept = self._kept_counts.get(problem.category, 0)
        if kept < self.cap:
            self.kept.append(problem)
            self._kept_counts[problem.category] = kept + 1

    def add(self, problem: Problem) -> None:
        self.counts[problem.category] = self.counts.get(problem.category, 0) + 1
        self._keep(problem)

    def extend(self, other: ProblemLog, line_offset: int = 0) -> None:
        """Append another log's problems (from a later chunk), keeping the per-category cap."""
        for problem in other.kept:
            self._keep(problem.shifted(line_offset))
        for category, count in other.counts.items():
            self.counts[category] = self.counts.get(category, 0) + count

    def problems(self) -> list[Problem]:
        """Kept problems in line order, plus one summary line per category that overflowed."""
        problems = sorted(self.kept, key=lambda p: (p.line is not None, p.line or 0))
        for category, count in self.counts.items():
            if count > self.cap:
                severity, fix = CATEGORIES[category]
                problems.append(
                    Problem(
                        None,
                        category,
                        f"{count - self.cap} more {category} problems not shown ({count} in all)",
                        fix,
                        severity,
                    )
                )
        return problems


@dataclass
class ValidationReport:
    path: str
    format: str | None  # "chat" | "completion" | "preference" (None if undetectable)
    n_examples: int  # non-blank lines
    problems: list[Problem]
    n_valid: int = 0  # examples without errors
    counts: dict[str, int] = field(default_factory=dict)  # every category's exact count

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.format,
            "n_examples": self.n_examples,
            "n_valid": self.n_valid,
            "ok": self.ok,
            "counts": self.counts,
            "problems": [
                {
                    "line": p.line,
                    "category": p.category,
                    "severity": p.severity,
                    "field": p.field,
                    "message": p.message,
                    "fix": p.fix,
                }
                for p in self.problems
            ],
        }
