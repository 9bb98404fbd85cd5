"""Benchmark: how fast workers sharing one PostgreSQL claim jobs, and how the API answers meanwhile.

    .venv/bin/python bench/claims.py                       # 8 workers, 4,000 jobs, a throwaway cluster
    .venv/bin/python bench/claims.py --workers 16 --jobs 10000
    .venv/bin/python bench/claims.py --database-url postgresql+psycopg://user@host/empty_db

The store is a new PostgreSQL cluster (Debian's binaries, as the tests start it: `tests/postgres.py`)
unless `--database-url` names an empty database. `--jobs` queued jobs are written into it, then
`--workers` processes run the workers' claim loop (`jobs/claims.py` `claim_next_job`, the very call
`tunehouse worker` makes: `FOR UPDATE SKIP LOCKED`, the compare-and-set, the claim's event) with no
training after each claim, until the queue is empty: jobs claimed per second is jobs / wall time.
Meanwhile a `tunehouse serve --no-worker` on the same database answers `jobs.list(limit=20)` through
the official SDK in a loop; its p50/p99 is reported beside the same figure with no claims running.
At the end every job must have been claimed exactly once.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _claim_loop(env: dict[str, str], go: EventType, results: Any) -> None:
    """One worker: register, wait for the start, claim until the queue is empty."""
    os.environ.update(env)
    from tunehouse.jobs.claims import claim_next_job
    from tunehouse.jobs.leases import Capacity, register_worker

    capacity = Capacity("cpu", 0, None)
    worker_id = register_worker(capacity)
    go.wait()
    claimed = 0
    while claim_next_job(worker_id, capacity) is not None:
        claimed += 1
    results.put((worker_id, claimed, time.perf_counter()))


def _queue_jobs(n: int) -> None:
    from tunehouse.ids import new_id
    from tunehouse.store.db import session
    from tunehouse.store.schema import JobRow

    hyperparameters = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}
    now = int(time.time())
    with session() as s:
        s.add_all(
            JobRow(
                id=new_id("ftjob-"),
                created_at=now,
                model="tiny-llama",
                organization_id="org-tunehouse",
                training_file="file-bench",
                status="queued",
                method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
                hyperparameters=hyperparameters,
                training_options={},
                seed=1,
                result_files=[],
            )
            for _ in range(n)
        )


def _claims_per_job() -> dict[int, int]:
    """How many jobs were claimed how many times (from the claims' events)."""
    from sqlalchemy import func, select

    from tunehouse.store.db import session
    from tunehouse.store.schema import EventRow, JobRow

    with session() as s:
        per_job = (
            select(JobRow.id, func.count(EventRow.id).label("claims"))
            .outerjoin(EventRow, (EventRow.job_id == JobRow.id) & EventRow.message.like("Claimed by worker%"))
            .group_by(JobRow.id)
            .subquery()
        )
        rows = s.execute(select(per_job.c.claims, func.count()).group_by(per_job.c.claims)).all()
    return {int(claims): int(count) for claims, count in rows}


def _start_api(env: dict[str, str], home: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(home / "server.log", "ab")  # noqa: SIM115  # the server's log while it runs
    process = subprocess.Popen(
        [sys.executable, "-m", "tunehouse.cli.main", "serve", "--no-worker", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError((home / "server.log").read_text()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the API did not start")


def _list_latencies(base_url: str, until: Any, at_least: int) -> list[float]:
    """Seconds per `jobs.list(limit=20)`, called back to back until `until()` and at least `at_least` times."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    times: list[float] = []
    while len(times) < at_least or not until():
        started = time.perf_counter()
        page = client.fine_tuning.jobs.list(limit=20)
        times.append(time.perf_counter() - started)
        assert len(page.data) == 20
    return times


def _percentiles(times: list[float]) -> str:
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms ({len(times)} calls)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: a throwaway cluster)")
    args = parser.parse_args()

    cluster = None
    if args.database_url is None:
        sys.path.insert(0, str(REPO))
        from tests.postgres import Cluster

        cluster = Cluster()
        url = cluster.create_database("claims_bench")
    else:
        url = args.database_url
    home = Path(tempfile.mkdtemp(prefix="tunehouse-claims-"))
    env = {"TUNEHOUSE_HOME": str(home), "TUNEHOUSE_DATABASE_URL": url, "TUNEHOUSE_AUTO_EVAL_EXAMPLES": "0"}
    os.environ.update(env)
    api = None
    try:
        _queue_jobs(args.jobs)
        api, base_url = _start_api({**os.environ, **env}, home)
        idle = _list_latencies(base_url, lambda: True, 200)

        spawn = multiprocessing.get_context("spawn")
        go, results = spawn.Event(), spawn.Queue()
        workers = [spawn.Process(target=_claim_loop, args=(env, go, results)) for _ in range(args.workers)]
        for worker in workers:
            worker.start()
        time.sleep(20)  # each has imported tunehouse and registered (a cold start takes seconds)
        started = time.perf_counter()
        go.set()
        busy = _list_latencies(base_url, lambda: all(not w.is_alive() for w in workers), 20)
        ends = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
        wall = max(end for _, _, end in ends) - started
        claimed = sum(n for _, n, _ in ends)

        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        print(f"store: PostgreSQL ({'throwaway cluster, fsync off' if cluster else url})")
        print(
            f"{args.workers} workers claimed {claimed:,} of {args.jobs:,} jobs in {wall:.2f} s: {claimed / wall:,.0f} jobs/s"
        )
        print(f"claims per worker: {sorted(n for _, n, _ in ends)}")
        print(f"jobs by times claimed: {_claims_per_job()}")
        print(f"jobs.list(limit=20), idle:           {_percentiles(idle)}")
        print(f"jobs.list(limit=20), while claiming: {_percentiles(busy)}")
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
