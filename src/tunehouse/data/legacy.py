"""The legacy prompt/completion checks of OpenAI's `prepare_data`, and the fixes `--fix` applies.

A base model fine-tuned on prompt/completion pairs learns where the prompt ends from a separator
that ends every prompt and appears nowhere else, and learns to stop from a stop sequence that ends
every completion; completions should start with whitespace so their first token is a word.
Facts about the whole file are gathered in one streaming pass (`gather_facts`), turned into a plan
(`plan_fixes`), and a second pass reports (`legacy_problems`) or rewrites (`fix_legacy_file`) lines.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tunehouse.data.reader import iter_lines, strip_line
from tunehouse.data.report import Problem, make_problem
from tunehouse.data.scan import content_hash

SEPARATORS = (" ->", "\n\n###\n\n", "\n\n===\n\n", "\n\n---\n\n", "\n\n===>\n\n", "\n\n--->\n\n")
STOP_SEQUENCES = ("\n", ".", " END", "***", "+++", "&&&", "$$$", "@@@", "%%%")
FALLBACK_STOP = " [END]"
LONG_EXAMPLE_CHARS = 10_000
DISTINCT_LIMIT = 1_000_000  # completions hashes kept to detect classification; more means generation


def _common_suffix(a: str | None, b: str) -> str:
    if a is None:
        return b
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n :] if n else ""


def _marker(common: str, candidates: tuple[str, ...]) -> str:
    """The longest known candidate `common` ends with (" END" rather than "! END"), else `common`."""
    known = [c for c in candidates if common.endswith(c)]
    return max(known, key=len) if known else common


@dataclass
class LegacyFacts:
    n: int = 0
    prompt_suffix: str | None = None
    completion_suffix: str | None = None
    first_prompt: str | None = None
    first_completion: str | None = None
    prompts_differ: bool = False
    completions_differ: bool = False
    all_prompts_empty: bool = True
    prompts_have_newlines: bool = False
    prompt_endings: Counter[str] = field(default_factory=Counter)
    used_separators: set[str] = field(default_factory=set)
    completion_endings: Counter[str] = field(default_factory=Counter)
    used_stops: set[str] = field(default_factory=set)
    distinct_completions: set[int] = field(default_factory=set)

    def add(self, prompt: str, completion: str) -> None:
        if self.n == 0:
            self.first_prompt, self.first_completion = prompt, completion
        self.n += 1
        self.prompts_differ = self.prompts_differ or prompt != self.first_prompt
        self.completions_differ = self.completions_differ or completion != self.first_completion
        self.all_prompts_empty = self.all_prompts_empty and not prompt
        self.prompts_have_newlines = self.prompts_have_newlines or "\n" in prompt
        self.prompt_suffix = _common_suffix(self.prompt_suffix, prompt)
        self.completion_suffix = _common_suffix(self.completion_suffix, completion)
        for separator in SEPARATORS:
            if prompt.endswith(separator):
                self.prompt_endings[separator] += 1
            if separator in prompt:
                self.used_separators.add(separator)
        for stop in STOP_SEQUENCES:
            if completion.endswith(stop):
                self.completion_endings[stop] += 1
            if stop in completion:
                self.used_stops.add(stop)
        if len(self.distinct_completions) < DISTINCT_LIMIT:
            self.distinct_completions.add(content_hash(completion.strip().encode(errors="replace")))

    @property
    def common_separator(self) -> str:
        """What every prompt ends with: a known separator when the common ending ends with one."""
        return _marker(self.prompt_suffix or "", SEPARATORS)

    @property
    def common_stop(self) -> str:
        """What every completion ends with: a known stop sequence when the common ending ends with one."""
        return _marker(self.completion_suffix or "", STOP_SEQUENCES)

    @property
    def classification(self) -> bool:
        """Few distinct completions for many examples: a label, not generated text (prepare_data's rule)."""
        return self.n >= 10 and len(self.distinct_completions) < self.n / 3


@dataclass(frozen=True)
class LegacyPlan:
    """The separator and stop sequence every example should end with, and whether each is new."""

    separator: str | None  # None for open-ended generation (empty prompts)
    separator_exists: bool  # already the common ending of every prompt
    separator_in_prompts: bool  # the existing separator also appears inside prompts
    stop: str | None  # None when a stop sequence does not apply (classification)
    stop_exists: bool


def _unused(candidates: tuple[str, ...], used: set[str], skip: tuple[str, ...] = ()) -> str | None:
    return next((c for c in candidates if c not in used and c not in skip), None)


def _dominant(endings: Counter[str], n: int) -> str | None:
    if not endings:
        return None
    ending, count = endings.most_common(1)[0]
    return ending if count * 2 >= n else None


def legacy_examples(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, example) for lines with a string prompt and a non-empty string completion."""
    for number, raw in iter_lines(path):
        line = strip_line(raw or b"", number == 1)
        try:
            example = orjson.loads(line) if line else None
        except orjson.JSONDecodeError:
            continue
        if (
            isinstance(example, dict)
            and isinstance(example.get("prompt"), str)
            and isinstance(example.get("completion"), str)
            and example["completion"].strip()
        ):
            yield number, example


def gather_facts(path: Path) -> LegacyFacts:
    facts = LegacyFacts()
    for _, example in legacy_examples(path):
        facts.add(example["prompt"], example["completion"])
    return facts


def _separator_inside(prompt: str, separator: str) -> bool:
    body = prompt[: -len(separator)] if prompt.endswith(separator) else prompt
    return separator in body


def plan_fixes(facts: LegacyFacts, path: Path) -> LegacyPlan:
    separator: str | None = None
    exists = inside = False
    if not facts.all_prompts_empty:
        common = facts.common_separator
        separator = common or _dominant(facts.prompt_endings, facts.n)
        exists = bool(common)
        if separator:
            inside = any(_separator_inside(e["prompt"], separator) for _, e in legacy_examples(path))
        if not separator or inside:
            skip = (" ->",) if facts.prompts_have_newlines else ()
            fresh = _unused(SEPARATORS, facts.used_separators, skip) or "\n\n####\n\n"
            separator, exists = (separator, exists) if separator and not inside else (fresh, False)
    stop: str | None = None
    stop_exists = False
    if not facts.classification and not facts.all_prompts_empty:
        stop = facts.common_stop or _dominant(facts.completion_endings, facts.n)
        stop_exists = bool(facts.common_stop)
        if not stop:
            stop = _unused(STOP_SEQUENCES, facts.used_stops) or FALLBACK_STOP
    return LegacyPlan(separator, exists, inside, stop, stop_exists)


def _file_problems(facts: LegacyFacts, plan: LegacyPlan) -> Iterator[Problem]:
    if facts.n > 1 and not facts.prompts_differ and not facts.all_prompts_empty:
        yield make_problem(None, "all_prompts_identical", f"all {facts.n} prompts are the same")
    if facts.n > 1 and not facts.completions_differ:
        yield make_problem(None, "all_completions_identical", f"all {facts.n} completions are the same")
    if facts.classification:
        distinct = len(facts.distinct_completions)
        detail = f"{facts.n} examples but only {distinct} distinct completions: this looks like classification"
        yield make_problem(None, "looks_like_classification", detail)
    if plan.separator and not plan.separator_exists and not facts.prompt_endings and not plan.separator_in_prompts:
        fix = f"End every prompt with {plan.separator!r} (`--fix OUT` adds it)."
        yield make_problem(None, "missing_separator", "prompts share no separator at their end", fix=fix)
    if plan.stop and not plan.stop_exists and not facts.completion_endings:
        fix = f"End every completion with {plan.stop!r} and pass it as `stop` (`--fix OUT` adds it)."
        yield make_problem(None, "missing_stop_sequence", "completions share no stop sequence", fix=fix)


def _line_problems(number: int, example: dict[str, Any], facts: LegacyFacts, plan: LegacyPlan) -> Iterator[Problem]:
    prompt, completion = example["prompt"], example["completion"]
    if plan.separator_in_prompts and _separator_inside(prompt, facts.common_separator):
        fix = f"Use a separator found in no prompt, e.g. {plan.separator!r} (`--fix OUT` switches to it)."
        detail = f"separator {facts.common_separator!r} also appears inside the prompt"
        yield make_problem(number, "separator_in_prompt", detail, field="prompt", fix=fix)
    elif (
        not plan.separator_in_prompts
        and plan.separator
        and facts.prompt_endings
        and not prompt.endswith(plan.separator)
    ):
        detail = f"does not end with the separator {plan.separator!r} the other prompts end with"
        yield make_problem(number, "missing_separator", detail, field="prompt", fix=f"Append {plan.separator!r}.")
    if not completion[:1].isspace():
        detail = f"starts with {completion[:12]!r} instead of whitespace"
        yield make_problem(number, "completion_missing_leading_whitespace", detail, field="completion")
    if plan.stop and facts.completion_endings and not completion.endswith(plan.stop):
        detail = f"does not end with the stop sequence {plan.stop!r} the other completions end with"
        yield make_problem(number, "missing_stop_sequence", detail, field="completion", fix=f"Append {plan.stop!r}.")
    if len(prompt) + len(completion) > LONG_EXAMPLE_CHARS:
        detail = f"{len(prompt) + len(completion)} characters (over {LONG_EXAMPLE_CHARS})"
        yield make_problem(number, "long_example", detail)


def legacy_problems(path: Path) -> list[Problem]:
    """Problems of a legacy file: file-level ones first, then per line."""
    facts = gather_facts(path)
    if facts.n == 0:
        return []
    plan = plan_fixes(facts, path)
    problems = list(_file_problems(facts, plan))
    for number, example in legacy_examples(path):
        problems += _line_problems(number, example, facts, plan)
    return problems


def fix_example(example: dict[str, Any], facts: LegacyFacts, plan: LegacyPlan, changes: Counter[str]) -> dict[str, str]:
    """The example with the plan applied; `changes` counts what was changed, by description."""
    prompt, completion = example["prompt"], example["completion"]
    if plan.separator and not plan.separator_exists:
        old = facts.common_separator if plan.separator_in_prompts else _dominant(facts.prompt_endings, facts.n)
        stripped = prompt[: -len(old)] if old and prompt.endswith(old) else prompt
        if stripped + plan.separator != prompt:
            prompt = stripped + plan.separator
            changes[f"ended prompts with the separator {plan.separator!r}"] += 1
    if not completion[:1].isspace():
        completion = " " + completion
        changes["added a leading space to completions"] += 1
    if plan.stop and not completion.endswith(plan.stop):
        completion += plan.stop
        changes[f"ended completions with the stop sequence {plan.stop!r}"] += 1
    if set(example) - {"prompt", "completion"}:
        changes["dropped keys other than prompt and completion"] += 1
    return {"prompt": prompt, "completion": completion}


def fix_legacy_file(path: Path, out: Path) -> list[str]:
    """Write a corrected copy of a legacy file to `out`; returns one line per kind of change."""
    facts = gather_facts(path)
    plan = plan_fixes(facts, path)
    changes: Counter[str] = Counter()
    seen: set[int] = set()
    kept = total = 0
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        for _, example in legacy_examples(path):
            total += 1
            key = content_hash(f"{example['prompt']}\x00{example['completion']}".encode(errors="replace"))
            if key in seen:
                changes["dropped duplicate examples"] += 1
                continue
            seen.add(key)
            if len(example["prompt"]) + len(example["completion"]) > LONG_EXAMPLE_CHARS:
                changes[f"dropped examples over {LONG_EXAMPLE_CHARS} characters"] += 1
                continue
            fh.write(orjson.dumps(fix_example(example, facts, plan, changes)) + b"\n")
            kept += 1
    os.replace(tmp, out)
    unreadable = sum(1 for _, raw in iter_lines(path) if raw and raw.strip()) - total
    summary = [f"{description}: {count}" for description, count in changes.items()]
    if unreadable:
        summary.append(f"dropped lines without a string prompt and a non-empty completion: {unreadable}")
    if plan.stop:
        summary.append(f"generate with stop=[{plan.stop!r}] and end prompts with {plan.separator!r}")
    summary.append(f"wrote {kept} examples to {out}")
    return summary
