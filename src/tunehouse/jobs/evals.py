"""The worker's side of eval runs: claiming queued runs (and runs a dead worker left in progress),
running them on a serving engine in this process, and the base-vs-fine-tuned eval every job with a
validation file gets when it succeeds.

A run is leased like a job (host, pid, heartbeat): one left `in_progress` by a process that died is
queued again and resumes after its last written output item. A worker that stops between items
puts its run back in the queue itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from tunehouse.config import settings
from tunehouse.data.reader import iter_examples
from tunehouse.errors import TunehouseError
from tunehouse.eval import records
from tunehouse.eval.classification import ClassificationSettings
from tunehouse.eval.compare import answer_classification, criterion_scores, describe_change, describe_classification
from tunehouse.eval.definitions import create_eval
from tunehouse.eval.executor import RunInterrupted, RunTools, execute_run
from tunehouse.eval.graders import ModelCaller, engine_caller, openai_caller, routing_caller
from tunehouse.eval.heldout import INPUT_MESSAGES, ITEM_SCHEMA, answer_tokens, comparison_criteria, heldout_items
from tunehouse.eval.runs import create_run
from tunehouse.eval.sampler import EngineSampler
from tunehouse.jobs.classification import job_settings
from tunehouse.jobs.launch import pid_alive
from tunehouse.jobs.records import add_event, get_job, update_job
from tunehouse.serve.engine import Engine
from tunehouse.store.files import file_path, get_file
from tunehouse.store.projects import acting_for
from tunehouse.store.schema import EvalOutputItemRow

log = logging.getLogger(__name__)

STALE_HEARTBEAT_SECONDS = 120
JOB_KEY = "fine_tuning_job_id"
"""The eval metadata key naming the job whose base-vs-fine-tuned comparison it is."""
EVAL_KEY = "eval_id"
"""The job metadata key naming its base-vs-fine-tuned eval."""


def requeue_orphaned_runs() -> None:
    """Runs left `in_progress` by a worker that died (here, or silent past the heartbeat limit) go back
    to the queue; the next worker resumes each after its last written output item."""
    host, now = socket.gethostname(), time.time()
    for run in records.runs_in("in_progress"):
        dead_here = run.worker_host == host and run.worker_pid is not None and not pid_alive(run.worker_pid)
        stale = run.heartbeat_at is None or now - run.heartbeat_at > STALE_HEARTBEAT_SECONDS
        if dead_here or stale:
            records.update_run(run.id, only_if_status={"in_progress"}, status="queued")


def claim_next_run() -> str | None:
    """Atomically move the oldest queued run to in_progress; None if none waits or another worker won it."""
    requeue_orphaned_runs()
    run = records.oldest_run("queued")
    if run is None:
        return None
    claimed = records.update_run(
        run.id,
        only_if_status={"queued"},
        status="in_progress",
        worker_host=socket.gethostname(),
        worker_pid=os.getpid(),
        heartbeat_at=time.time(),
    )
    return run.id if claimed else None


class EvalRunner:
    """Runs claimed eval runs on `engine` (the server's own when the worker runs inside it), or on an
    engine it opens on first use (`tunehouse worker`, without the API)."""

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine()
        return self._engine

    def call_model(self) -> ModelCaller:
        """Model graders' models: served here first, else the configured OpenAI-compatible endpoint."""
        config = settings()
        remote = openai_caller(config.grader_base_url, config.grader_api_key) if config.grader_base_url else None
        return routing_caller(engine_caller(self.engine), remote)

    def run_next(self, stop: threading.Event | None = None) -> bool:
        """Run one queued eval run to its end; False if none waits. A stop between items re-queues it."""
        run_id = claim_next_run()
        if run_id is None:
            return False
        tools = RunTools(
            sample=EngineSampler(self.engine),
            call_model=self.call_model(),
            should_stop=lambda: stop is not None and stop.is_set(),
        )
        try:
            with acting_for(_project_of_run(run_id)):  # its models and graders are its project's
                execute_run(run_id, tools)
        except RunInterrupted:
            records.update_run(run_id, only_if_status={"in_progress"}, status="queued")
            return True
        except Exception as exc:  # a bug, or the machine (out of memory): the run fails, the worker goes on
            log.exception("eval run %s failed", run_id)
            error = {"code": "internal_error", "message": f"The run stopped: {type(exc).__name__}: {exc}"}
            records.update_run(run_id, only_if_status={"in_progress"}, status="failed", error=error)
        report_job_eval(run_id)
        return True


def _project_of_run(run_id: str) -> str | None:
    run = records.find_run(run_id)
    return None if run is None else records.get_eval(run.eval_id).project_id


def queue_job_eval(job_id: str) -> str | None:
    """For a succeeded job with a validation file: an eval with one run for the base model and one for
    the fine-tuned model, on the first `settings().auto_eval_examples` validation examples, linked from
    the job (`metadata.eval_id` and an event). Returns the eval's id, None when there is nothing to do."""
    job = get_job(job_id)
    limit = settings().auto_eval_examples
    if job.status != "succeeded" or not job.validation_file or not job.fine_tuned_model or limit <= 0:
        return None
    path = file_path(get_file(job.validation_file, param="validation_file"))
    items = heldout_items((example for _, example in iter_examples(path)), limit)
    if not items:
        return None
    evaluation = create_eval(
        name=f"{job.fine_tuned_model} vs its base",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=comparison_criteria(),
        metadata={JOB_KEY: job.id},
    )
    content = [{"item": item} for item in items]
    sampling = {"temperature": 0, "max_completion_tokens": answer_tokens(items), "seed": job.seed}
    for role, model in (("base", job.model), ("fine-tuned", job.fine_tuned_model)):
        create_run(
            evaluation.id,
            name=f"{role}: {model}",
            data_source={
                "type": "completions",
                "source": {"type": "file_content", "content": content},
                "input_messages": INPUT_MESSAGES,
                "model": model,
                "sampling_params": sampling,
            },
            metadata={"role": role},
        )
    metadata = dict(job.job_metadata or {})
    if len(metadata) < 16:  # OpenAI's limit; the event below links the eval either way
        update_job(job.id, job_metadata={**metadata, EVAL_KEY: evaluation.id})
    add_event(
        job.id,
        f"Evaluation {evaluation.id} queued: the base model and the fine-tuned model answer "
        f"{len(items)} validation examples, graded by exact match and text similarity.",
        data={EVAL_KEY: evaluation.id},
    )
    return evaluation.id


def queue_job_eval_safely(job_id: str) -> None:
    """`queue_job_eval`, whose failure is the eval's and never the job's: it is logged and told in an event."""
    try:
        with acting_for(get_job(job_id).project_id):  # the eval belongs to the job's project
            queue_job_eval(job_id)
    except TunehouseError as exc:
        add_event(job_id, f"The base-vs-fine-tuned evaluation was not created: {exc.message}", level="warn")
    except Exception as exc:  # a bug here must not touch the job that succeeded
        log.exception("the evaluation of job %s could not be created", job_id)
        add_event(job_id, f"The base-vs-fine-tuned evaluation was not created: {type(exc).__name__}.", level="warn")


def report_job_eval(run_id: str) -> None:
    """Once every run of a job's base-vs-fine-tuned eval has ended, tell the job how they compare."""
    run = records.find_run(run_id)
    if run is None:
        return
    evaluation = records.get_eval(run.eval_id)
    job_id = (evaluation.eval_metadata or {}).get(JOB_KEY)
    runs = records.runs_of(evaluation.id)
    if job_id is None or len(runs) != 2 or any(r.status not in records.RUN_TERMINAL for r in runs):
        return
    base, tuned = runs
    if base.status != "completed" or tuned.status != "completed":
        add_event(
            job_id,
            f"Evaluation {evaluation.id} ended without a comparison: its runs were {base.status} and {tuned.status}.",
            level="warn",
            data={EVAL_KEY: evaluation.id},
        )
        return
    outputs = [records.all_output_items(r.id) for r in runs]
    scores = [criterion_scores(evaluation.testing_criteria, (item.results for item in found)) for found in outputs]
    change = describe_change(*scores)
    settings = job_settings(get_job(job_id))
    if settings is not None:  # a classifier: how often each model answers with the right class
        metrics = [_classification(settings, found) for found in outputs]
        for run, values in zip(runs, metrics, strict=True):
            shown = {name: f"{value:.4f}" for name, value in values.items() if value is not None}
            records.update_run(run.id, run_metadata={**(run.run_metadata or {}), **shown})
        change += f"; {describe_classification(*metrics)}"
    add_event(
        job_id,
        f"Evaluation {evaluation.id} compares base and fine-tuned on {base.result_counts['total']} validation "
        f"examples: {change}.",
        data={EVAL_KEY: evaluation.id},
    )


def _classification(settings: ClassificationSettings, outputs: list[EvalOutputItemRow]) -> dict[str, float | None]:
    """The classification metrics of one run's answers (an item that could not be answered is wrong)."""
    answers = [(item.sample.get("output") or [{}])[0].get("content") or "" for item in outputs]
    return answer_classification(settings, [item.datasource_item["expected"] for item in outputs], answers)
