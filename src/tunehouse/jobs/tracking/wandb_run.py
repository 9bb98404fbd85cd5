"""Weights & Biases: one run per job, named and tagged the way OpenAI's integration does it.

OpenAI's convention (spec §6): the run goes to `project` (and `entity`), is named `name` or the job
id, carries the user's tags plus default ones — here `tunehouse/finetune`, `tunehouse/{base-model}`,
`tunehouse/{job-id}` — and logs every result-file metric against `step`. The run id is the job id, so
a re-queued job resumes its run. `WANDB_MODE=offline` works as usual.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tunehouse.config import settings
from tunehouse.jobs.tracking.base import JobContext, Tracker


def _artifact_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


class WandbTracker(Tracker):
    label = "Weights & Biases"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.run: Any = None
        self.context: JobContext | None = None

    def start(self, context: JobContext) -> None:
        import wandb

        self.context = context
        directory = Path(os.environ.get("WANDB_DIR") or settings().jobs_dir / context.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        user_tags = [str(t) for t in self.options.get("tags") or []]
        self.run = wandb.init(
            project=self.options["project"],
            entity=self.options.get("entity") or None,
            name=self.options.get("name") or context.job_id,
            id=context.job_id,
            resume="allow",
            job_type="fine-tune",
            tags=list(dict.fromkeys(context.tags + user_tags)),
            config=context.config,
            dir=str(directory),
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )

    def metrics(self, step: int, data: dict[str, float]) -> None:
        self.run.log(data, step=step)

    def checkpoint(self, step: int, name: str, metrics: dict[str, Any]) -> None:
        self.run.summary["last_checkpoint_step"] = step

    def finish(self, result_csv: bytes, model_dir: Path, fine_tuned_model: str) -> None:
        import wandb

        assert self.context is not None
        job_id = self.context.job_id
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / f"{job_id}_results.csv"
            results.write_bytes(result_csv)
            artifact = wandb.Artifact(_artifact_name(f"{job_id}-results"), type="results")
            artifact.add_file(str(results))
            self.run.log_artifact(artifact)
            if (model_dir / "adapter_config.json").exists():  # full weights are too big to copy by default
                adapter = wandb.Artifact(
                    _artifact_name(f"{job_id}-adapter"),
                    type="model",
                    metadata={"fine_tuned_model": fine_tuned_model},
                )
                adapter.add_dir(str(model_dir))
                self.run.log_artifact(adapter, aliases=["latest", job_id])
            self.run.summary.update({"fine_tuned_model": fine_tuned_model, "status": "succeeded"})
            self.run.finish()  # artifacts are staged from `tmp`, so finish before it goes
        self.run = None

    def abort(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=1)
