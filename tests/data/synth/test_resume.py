"""A synthesis run killed halfway (SIGKILL) and run again finishes without repeating a completed request."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from tests.data.synth.canned import CannedGenerator
from tunehouse.cli.main import app

TOPICS = ("river", "forest", "castle", "harbour", "bridge", "market", "mill", "garden", "school", "chapel")


def long_article(path: Path) -> Path:
    paragraphs = [
        f"The {topic} of Aldwick was built in {1700 + 7 * i}. Its first keeper was named {name}. "
        f"The {topic} was repaired after the flood of {1800 + 3 * i}. Today the {topic} belongs to the parish."
        for i, (topic, name) in enumerate(
            zip(TOPICS, ("Ann", "Bea", "Cy", "Dov", "Eli", "Fay", "Gus", "Hal", "Ivo", "Jo"), strict=True)
        )
    ]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def cached_keys(home: Path) -> set[str]:
    with sqlite3.connect(home / "synth" / "replies.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT key FROM replies")}


def test_a_killed_run_resumes_without_asking_again_for_anything_it_received(tmp_path: Path) -> None:
    canned = CannedGenerator(delay=0.4).start()
    try:
        article = long_article(tmp_path / "aldwick.txt")
        home, out = tmp_path / "home", tmp_path / "qa.jsonl"
        out.write_text('{"old": "a previous run\'s file stays whole until the new one replaces it"}\n')
        old_output = out.read_bytes()
        args = ["data", "synth", str(article), "-o", str(out), "--base-url", canned.base_url, "--model", "canned"]
        args += ["--chunk-tokens", "40", "--overlap-tokens", "0", "--per-chunk", "2", "--concurrency", "2"]
        env = {**os.environ, "TUNEHOUSE_HOME": str(home)}
        estimate = subprocess.run(
            [sys.executable, "-m", "tunehouse.cli.main", *args, "--dry-run", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        total = json.loads(estimate.stdout)["estimate"]["requests"]
        assert total >= 24

        run = subprocess.Popen(
            [sys.executable, "-m", "tunehouse.cli.main", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 300
        while len(canned.answered) < total // 2 and time.time() < deadline and run.poll() is None:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        assert run.returncode == -signal.SIGKILL, run.stdout.read() if run.stdout else ""
        first_answered = set(canned.keys(canned.answered))
        received = cached_keys(home)
        assert 0 < len(received) < total  # killed halfway
        assert len(first_answered - received) <= 2  # at most the requests in flight at the kill were lost
        assert out.read_bytes() == old_output  # nothing half-written

        asked_before = len(canned.requests)
        resumed = CliRunner(env={"TUNEHOUSE_HOME": str(home)}).invoke(app, args)
        assert resumed.exit_code == 0, resumed.output
        second = canned.keys(canned.requests[asked_before:])
        assert not set(second) & received  # no completed request repeated
        assert len(second) == len(set(second))  # nor any asked twice
        assert f"{len(received)} replies from the cache" in resumed.output

        asked_before = len(canned.requests)
        fresh_out = tmp_path / "fresh.jsonl"
        fresh_args = [*args[: args.index("-o") + 1], str(fresh_out), *args[args.index("-o") + 2 :]]
        fresh = CliRunner(env={"TUNEHOUSE_HOME": str(tmp_path / "fresh-home")}).invoke(app, fresh_args)
        assert fresh.exit_code == 0, fresh.output
        uninterrupted = canned.keys(canned.requests[asked_before:])
        assert set(uninterrupted) == received | set(second)  # the two halves are exactly one whole run
        assert len(received) + len(second) == len(uninterrupted)
        assert out.read_bytes() == fresh_out.read_bytes()  # and wrote what an uninterrupted run writes
    finally:
        canned.stop()
