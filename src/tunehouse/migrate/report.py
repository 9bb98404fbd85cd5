"""The migration report: per job, where it came from and what it became here, and how the new model's
answers compare with the source model's — as Markdown to read and JSON to process."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunehouse.migrate.plan import SourceJob
from tunehouse.store.schema import MigrationRow

EXCERPT = 160  # characters of a prompt or an answer shown side by side


def job_summary(row: MigrationRow) -> dict[str, Any]:
    """One job's part of the JSON report (without the per-prompt answers, which stay in the store)."""
    job = SourceJob.from_wire(row.source_job)
    comparison = {k: v for k, v in (row.comparison or {}).items() if k != "items"}
    golden = row.golden or {}
    return {
        "source_job": job.id,
        "source_model": job.fine_tuned_model,
        "source_base_model": job.model,
        "settings": job.settings_text(),
        "stage": row.stage,
        "job": row.job_id,
        "fine_tuned_model": row.fine_tuned_model,
        "aliases": row.aliases or [],
        "files": row.files or {},
        "golden": {k: v for k, v in golden.items() if k != "items"} | {"n": len(golden.get("items", []))},
        "comparison": comparison or None,
        "error": row.error,
    }


def _excerpt(value: Any) -> str:
    if isinstance(value, list):  # chat messages: the last one asked
        value = value[-1].get("content", "") if value else ""
    text = " ".join(str(value).split())
    text = text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"
    return text.replace("|", "\\|") or ("(only whitespace)" if str(value) else "(empty)")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _markdown(source_url: str, jobs: list[dict[str, Any]]) -> str:
    lines = [
        "# Migration report",
        "",
        f"From {source_url}, {time.strftime('%Y-%m-%d %H:%M')}. Exact match and similarity (rapidfuzz's "
        "fuzzy_match, 0–100%) compare the new model's greedy answers with the source model's on the golden "
        "prompts; the last two columns compare each with the examples' own answers.",
        "",
        "| source model | model here | stage | prompts | exact match | similarity | source vs data | new vs data |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for job in jobs:
        figures = job["comparison"] or {}
        lines.append(
            f"| `{job['source_model']}` | `{job['fine_tuned_model'] or '–'}` | {job['stage']} | {figures.get('n', '–')} "
            f"| {_percent(figures.get('exact_match_rate'))} | {_percent(figures.get('mean_similarity'))} "
            f"| {_percent(figures.get('source_vs_expected'))} | {_percent(figures.get('new_vs_expected'))} |"
        )
    for job in jobs:
        lines += ["", f"## {job['source_job']} → {job['job'] or 'not created yet'}", ""]
        lines.append(f"- Settings: {job['settings']}; base model `{job['source_base_model']}`")
        if job["aliases"]:
            checkpoints = len(job["aliases"]) - 1
            more = f" and its {checkpoints} checkpoints' ids" if checkpoints else ""
            lines.append(f"- Alias here: `{job['aliases'][0]}`{more}")
        golden = job["golden"]
        if golden.get("origin"):
            lines.append(f"- Golden set: {golden['origin']}")
        if golden.get("skipped"):
            lines.append(f"- No comparison: {golden['skipped']}")
        if job["error"]:
            lines.append(f"- Stopped short: {job['error']}")
        examples = (job["comparison"] or {}).get("examples") or []
        if examples:
            lines += ["", "| prompt | source | here | same |", "| --- | --- | --- | --- |"]
            for item in examples:
                lines.append(
                    f"| {_excerpt(item['input'])} | {_excerpt(item['source'])} | {_excerpt(item['new'])} "
                    f"| {'yes' if item['exact'] else 'no'} |"
                )
    return "\n".join(lines) + "\n"


def write_report(source_url: str, rows: list[MigrationRow], path: Path) -> tuple[Path, Path]:
    """Write the report as Markdown at `path` and as JSON beside it (`.json`); both paths. A `path`
    ending in `.json` names the JSON, and the Markdown goes beside it as `.md`."""
    jobs = [job_summary(row) for row in rows]
    path = path.with_suffix(".md") if path.suffix == ".json" else path
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path = path.with_suffix(".json")
    path.write_text(_markdown(source_url, jobs))
    json_path.write_text(json.dumps({"source": source_url, "created": int(time.time()), "jobs": jobs}, indent=2))
    return path, json_path
