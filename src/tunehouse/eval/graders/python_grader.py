"""`python`: the grader's `source` defines `grade(sample, item) -> float`, run in a child process.

The child (`python_sandbox.py`, run with `python -I` in an empty folder and environment, so no
server secret reaches it) has TUNEHOUSE_PYTHON_GRADER_MEMORY_MB of address space and leaves the
network before the source runs; the server stops it, and any process it started, after
TUNEHOUSE_PYTHON_GRADER_TIMEOUT_S. What it prints comes back in `details` (`stdout`, `stderr`),
what it raises as the item's `python_grader_runtime_error`, a grader stopped for its time as
`unresponsive_reward_error`. At most one child per CPU runs at once; the others wait their turn.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from tunehouse.config import settings
from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.core import GradeFailed, GradeResult, Sample
from tunehouse.eval.graders.fields import check_keys, require_str

MAX_SOURCE_CHARS = 256 * 1024  # OpenAI's limit on a python grader's source
MAX_OUTPUT_CHARS = 8000  # of the grader's stdout and stderr, reported back
SANDBOX = Path(__file__).with_name("python_sandbox.py")
_running = threading.BoundedSemaphore(os.cpu_count() or 1)


def _binds_grade(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade":
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == "grade" for target in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
            (alias.asname or alias.name) == "grade" for alias in node.names
        ):
            return True
    return False


def validate(grader: dict[str, Any], param: str) -> dict[str, Any]:
    check_keys(grader, param, required=("type", "name", "source"), optional=("image_tag",))
    require_str(grader, "name", param)
    source = require_str(grader, "source", param)
    if len(source) > MAX_SOURCE_CHARS:
        raise InvalidRequest(
            f"{param}.source is {len(source)} characters; a python grader's source may have {MAX_SOURCE_CHARS}.",
            param=f"{param}.source",
        )
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise InvalidRequest(f"{param}.source line {error.lineno}: {error.msg}.", param=f"{param}.source") from None
    if not _binds_grade(tree):
        raise InvalidRequest(
            f"{param}.source must define grade(sample, item) returning a number.", param=f"{param}.source"
        )
    return dict(grader)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill the child and anything it started (they share its session's process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _read(path: Path) -> str:
    with open(path, "rb") as stream:
        return stream.read(MAX_OUTPUT_CHARS).decode("utf-8", errors="replace")


def run_source(source: str, sample: dict[str, Any], item: Any) -> tuple[float, dict[str, Any]]:
    """`grade(sample, item)` of `source` in a limited child: its score and what to report (stdout,
    stderr, how the network was cut); GradeFailed when it raised, ran too long or died."""
    config = settings()
    timeout, memory_mb = config.python_grader_timeout_s, config.python_grader_memory_mb
    with _running, tempfile.TemporaryDirectory(prefix="tunehouse-grader-") as folder:
        work = Path(folder)
        (work / "input.json").write_text(json.dumps({"source": source, "sample": sample, "item": item}))
        with open(work / "stdout", "wb") as stdout, open(work / "stderr", "wb") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    str(SANDBOX),
                    str(work / "input.json"),
                    str(work / "result.json"),
                    str(memory_mb * 1024 * 1024),
                    str(math.ceil(timeout)),
                ],
                cwd=work,
                env={"PATH": os.defpath, "HOME": str(work), "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group, so _stop reaches what it forks
            )
            try:
                process.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _stop(process)
        details: dict[str, Any] = {"stdout": _read(work / "stdout"), "stderr": _read(work / "stderr")}
        result_file = work / "result.json"
        try:
            result = json.loads(result_file.read_text()) if result_file.exists() else {}
        except ValueError:
            result = {}  # the grader wrote over its result file
    details["network"] = result.get("network")
    if timed_out or process.returncode == -signal.SIGXCPU:
        # Its CPU-time limit (the backstop) can fire a moment before the clock's: the same verdict.
        raise GradeFailed(
            f"The python grader was stopped after its {timeout:g} s time limit.", "unresponsive_reward_error", details
        )
    if "score" in result:
        return float(result["score"]), details
    error = str(result.get("error") or details["stderr"])
    if "MemoryError" in error or process.returncode == -signal.SIGKILL:
        error = f"The python grader ran out of its {memory_mb} MiB memory limit.\n{error}".strip()
    elif not error:
        error = f"The python grader exited with status {process.returncode} before giving a score."
    raise GradeFailed(error, "python_grader_runtime_error", details)


def grade(grader: dict[str, Any], *, item: dict[str, Any], sample: Sample, pass_threshold: float | None) -> GradeResult:
    score, details = run_source(grader["source"], sample.as_dict(), item)
    threshold = 1.0 if pass_threshold is None else pass_threshold
    return GradeResult(score=score, passed=score >= threshold, details=details)
