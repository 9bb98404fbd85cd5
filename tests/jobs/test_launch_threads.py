"""A trainer child leaves the serving engine its floor of cores (TUNEHOUSE_SERVE_THREADS)."""

from __future__ import annotations

import os

import pytest

from tunehouse.jobs.launch import launch_environment


@pytest.mark.parametrize(("serve", "processes"), [("1", 1), ("0", 1), ("1", 2)])
def test_the_trainer_gets_the_cores_serving_does_not_keep(
    monkeypatch: pytest.MonkeyPatch, serve: str, processes: int
) -> None:
    monkeypatch.setenv("TUNEHOUSE_SERVE_THREADS", serve)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.cpu_count() or 1
    expected = max(1, max(1, cores - int(serve)) // processes)
    assert launch_environment(processes)["OMP_NUM_THREADS"] == str(expected)


def test_an_explicit_thread_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch_environment(1)["OMP_NUM_THREADS"] == "3"
