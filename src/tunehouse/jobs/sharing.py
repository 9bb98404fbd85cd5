"""A job's checkpoints and trained model in the shared blob root, so that whichever worker claims the
job next resumes from the newest checkpoint, and the API's machine can fetch the model.

Each trainer writes to its own home (`TUNEHOUSE_HOME/jobs/<id>/checkpoints`, `…/models/ft/<id>`) as
on one machine; with `TUNEHOUSE_BLOB_URL` set each complete checkpoint and the final model are also
copied to the shared root under `jobs/<id>/checkpoints/step-N` and `models/ft/<id>`. Without it these
do nothing.
"""

from __future__ import annotations

from pathlib import Path

from tunehouse.store.blobs import checkpoints_key, pull_tree, push_tree, shared_folders, trained_model_key
from tunehouse.train.recipe import TRAINER_STATE, latest_checkpoint


def _step(folder: str) -> int:
    return int(folder.removeprefix("step-")) if folder.removeprefix("step-").isdigit() else -1


def share_checkpoint(job_id: str, path: Path) -> None:
    """Copy a complete checkpoint (`…/step-N`) to the shared root, its trainer state last: a worker
    that sees that file there sees the whole checkpoint."""
    push_tree(f"{checkpoints_key(job_id)}/{path.name}", path, last=TRAINER_STATE)


def fetch_latest_checkpoint(job_id: str, checkpoint_dir: Path) -> None:
    """Bring the newest complete shared checkpoint into `checkpoint_dir` when it is newer than the
    newest one here (another worker trained the job further before it stopped)."""
    local = latest_checkpoint(checkpoint_dir)
    newest_here = _step(local.name) if local is not None else -1
    for folder in sorted(shared_folders(checkpoints_key(job_id)), key=_step, reverse=True):
        if _step(folder) <= newest_here:
            return
        pull_tree(f"{checkpoints_key(job_id)}/{folder}", checkpoint_dir / folder, last=TRAINER_STATE)
        if (checkpoint_dir / folder / TRAINER_STATE).exists():
            return  # else a checkpoint whose copy was cut short: the one before it


def share_model(job_id: str, output_dir: Path) -> None:
    """Copy the job's trained model (full weights or adapter) to the shared root."""
    push_tree(trained_model_key(job_id), output_dir)
