"""Requests run in parallel threads, where finishing one may add more, with progress and a clean stop.

The generator's requests wait on the network (or on a local server's model), not on Python, so
threads are enough. A task returns the follow-up tasks it spawns (a passage's questions spawn their
answers); `total` is re-estimated as tasks finish. An exception other than a counted drop stops the
run: queued tasks are cancelled and the exception reaches the caller.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

Progress = Callable[[str, int, int], None]  # (phase, done, total)
Task = Callable[[], "list[Task]"]


def derive_seed(seed: int, *parts: Any) -> int:
    """A request's seed from the run's seed and what the request is about, independent of run order.

    >>> derive_seed(0, "questions", "A passage.") == derive_seed(0, "questions", "A passage.")
    True
    """
    digest = hashlib.sha256(json.dumps([seed, *parts], ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def run_tasks(
    tasks: list[Task],
    concurrency: int,
    phase: str,
    progress: Progress | None = None,
    total: Callable[[int], int] | None = None,
) -> None:
    """Run tasks and every follow-up they return, `concurrency` at a time.

    `total(done)` re-estimates the number of tasks after each one finishes (default: those known).
    """
    done = 0
    known = len(tasks)
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="synth") as pool:
        pending: set[Future[list[Task]]] = {pool.submit(task) for task in tasks}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    follow_ups = future.result()
                    done += 1
                    known += len(follow_ups)
                    pending |= {pool.submit(task) for task in follow_ups}
                if progress is not None:
                    progress(phase, done, max(done, total(done) if total else known))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
