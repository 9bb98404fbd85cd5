"""An export as one tar file, for the HTTP API (the dashboard's Export button).

The export is written and checked exactly as the CLI does, into a scratch folder under the home,
then packed uncompressed (GGUF and safetensors do not compress) into `<name>.tar` holding one
top-level folder. One export runs at a time per process: a second is refused with 429 while the
first still holds the CPU and memory.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tunehouse.config import settings
from tunehouse.errors import ExportVerificationFailed, ServerBusy
from tunehouse.models.export.service import ExportReport, export_model, failure_summary

_running = threading.Lock()


@dataclass(frozen=True)
class ExportArchive:
    path: Path
    """The tar file; delete `scratch` when it has been sent."""
    filename: str
    report: ExportReport
    scratch: Path


def archive_name(model_id: str, fmt: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-._") or "model"
    return f"{slug}-{fmt}"


def export_archive(model_id: str, fmt: str, *, quantization: str | None = None, verify: bool = True) -> ExportArchive:
    """Export `model_id` as `fmt` into a tar file; errors as `export_model` raises them."""
    if not _running.acquire(blocking=False):
        raise ServerBusy("Another export is running on this server; try again when it has finished.")
    scratch = Path(tempfile.mkdtemp(dir=_exports_dir(), prefix="export-"))
    try:
        name = archive_name(model_id, fmt)
        report = export_model(
            model_id, fmt, scratch / name, quantization=quantization, verify=verify, raise_on_failure=False
        )
        if not report.passed:
            raise ExportVerificationFailed(
                f"The {fmt} export of '{report.model}' does not behave as the model does, so it was discarded: "
                f"{failure_summary(report)}.",
                param="model",
            )
        tar_path = scratch / f"{name}.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(scratch / name, arcname=name)
        shutil.rmtree(scratch / name)
        return ExportArchive(tar_path, tar_path.name, report, scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        _running.release()


def _exports_dir() -> Path:
    path = settings().home / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path
