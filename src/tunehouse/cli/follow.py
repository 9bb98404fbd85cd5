"""Following a job: poll the server, print its messages, and show step/total, epoch, loss and ETA.

In a terminal this is a live rich progress bar with messages printed above it; piped into a file it
is plain lines (messages, and a progress line at most every PLAIN_EVERY_SECONDS and at the end).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from openai import OpenAI
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from tunehouse.cli.client import TERMINAL_STATES, when

PLAIN_EVERY_SECONDS = 10.0
EVENT_PAGE = 100


def new_events(client: OpenAI, job_id: str, last_seen: str | None, first_page_only: bool = False) -> list[Any]:
    """Events newer than `last_seen`, oldest first. The list is newest first and `after` pages toward
    older events, so read pages until the last seen id shows up."""
    collected: list[Any] = []
    after: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": EVENT_PAGE}
        if after:
            kwargs["after"] = after
        page = client.fine_tuning.jobs.list_events(job_id, **kwargs)
        for event in page.data:
            if event.id == last_seen:
                return collected[::-1]
            collected.append(event)
        if not page.has_more or not page.data or first_page_only or last_seen is None:
            return collected[::-1]
        after = page.data[-1].id


def all_events(client: OpenAI, job_id: str, page_size: int = 1000) -> list[Any]:
    """Every event of a job, oldest first."""
    events: list[Any] = []
    after: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": page_size}
        if after:
            kwargs["after"] = after
        page = client.fine_tuning.jobs.list_events(job_id, **kwargs)
        events.extend(page.data)
        if not page.has_more or not page.data:
            return events[::-1]
        after = page.data[-1].id


def n_epochs_of(job: Any) -> int | None:
    hyperparameters = getattr(job, "hyperparameters", None)
    value = getattr(hyperparameters, "n_epochs", None) if hyperparameters is not None else None
    return value if isinstance(value, int) else None


def epoch_at(step: int, total_steps: int, n_epochs: int | None) -> int | None:
    if not n_epochs or not total_steps:
        return None
    return max(1, math.ceil(step / (total_steps / n_epochs)))


def eta_text(job: Any) -> str:
    finish = getattr(job, "estimated_finish", None)
    if not finish or job.status != "running":
        return "-"
    seconds = max(0, int(finish - time.time()))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Snapshot:
    step: int = 0
    total_steps: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None

    def update(self, data: dict[str, Any]) -> None:
        self.step = int(data.get("step", self.step))
        self.total_steps = int(data.get("total_steps", self.total_steps))
        if data.get("train_loss") is not None:
            self.train_loss = float(data["train_loss"])
        if data.get("valid_loss") is not None:
            self.valid_loss = float(data["valid_loss"])

    def fields(self, job: Any) -> dict[str, Any]:
        n_epochs = n_epochs_of(job)
        epoch = epoch_at(self.step, self.total_steps, n_epochs)
        loss = "-" if self.train_loss is None else f"{self.train_loss:.4f}"
        if self.valid_loss is not None:
            loss += f" (valid {self.valid_loss:.4f})"
        return {
            "epoch": f"{epoch}/{n_epochs}" if epoch else "-",
            "loss": loss,
            "eta": eta_text(job),
            "status": job.status,
        }

    def line(self, job: Any) -> str:
        f = self.fields(job)
        total = self.total_steps or "?"
        return f"Step {self.step}/{total}  epoch {f['epoch']}  loss {f['loss']}  ETA {f['eta']}"


def format_event(event: Any) -> str:
    level = "" if event.level == "info" else f"{event.level.upper()}: "
    return f"[{when(event.created_at)}] {level}{event.message}"


def follow_job(client: OpenAI, job_id: str, console: Console, interval: float = 1.0) -> Any:
    """Follow until the job ends; returns the final job. Ctrl-C propagates to the caller."""
    job = client.fine_tuning.jobs.retrieve(job_id)
    snapshot = Snapshot()
    last_seen: str | None = None
    live = console.is_terminal
    progress = (
        Progress(
            TextColumn("[bold]{task.fields[status]}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  epoch {task.fields[epoch]}  loss {task.fields[loss]}  ETA {task.fields[eta]}"),
            console=console,
            transient=False,
        )
        if live
        else None
    )
    task = progress.add_task("train", total=None, **snapshot.fields(job)) if progress else None
    last_plain = 0.0
    printed_step = -1
    first = True
    if progress:
        progress.start()
    try:
        while True:
            ended = job.status in TERMINAL_STATES
            if ended:
                time.sleep(0.5)  # the closing events are written just after the status
            events = new_events(client, job_id, last_seen, first_page_only=first)
            first = False
            for event in events:
                last_seen = event.id
                if event.type == "metrics" and event.data:
                    snapshot.update(dict(event.data))
                else:
                    text = format_event(event)
                    if progress:
                        progress.console.print(escape(text))
                    else:
                        console.print(text, markup=False)
            if progress is not None and task is not None:
                progress.update(
                    task, completed=snapshot.step, total=snapshot.total_steps or None, **snapshot.fields(job)
                )
            elif snapshot.step != printed_step and (
                ended or snapshot.step == snapshot.total_steps or time.monotonic() - last_plain >= PLAIN_EVERY_SECONDS
            ):
                console.print(snapshot.line(job), markup=False)
                printed_step, last_plain = snapshot.step, time.monotonic()
            if ended:
                return job
            time.sleep(interval)
            job = client.fine_tuning.jobs.retrieve(job_id)
    finally:
        if progress:
            progress.stop()
