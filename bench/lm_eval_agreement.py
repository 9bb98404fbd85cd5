"""Benchmark: lm-evaluation-harness through tunehouse's `/v1/completions` against lm-eval's own
Hugging Face backend, on the same model folder and the same multiple-choice task.

    .venv/bin/python bench/lm_eval_agreement.py              # the shipped SmolLM2-135M, all 60 items
    .venv/bin/python bench/lm_eval_agreement.py --limit 20   # the first 20 items

lm-eval's `local-completions` scores each answer through `/v1/completions` (context + answer as token
ids, `echo`, `logprobs` 1, `max_tokens` 1) against a fresh `tunehouse serve --no-worker` with a
temporary home; its `hf` backend runs the same model folder in this process. The task is
`tunehouse_mc` (`examples/lm_eval/`, read from its local JSONL). Printed: each backend's accuracy
and wall time, the largest difference between the two per-answer log-likelihoods, and the questions
whose picked answer differs. Nothing is downloaded (the HF_*_OFFLINE variables are set).

`tests/eval/test_lm_eval.py` runs the same comparison (`evaluate`, `compare`) on fewer items.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "examples" / "lm_eval"
TASK = "tunehouse_mc"
SHIPPED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHIPPED_FOLDER = "HuggingFaceTB--SmolLM2-135M-Instruct"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class Run:
    """One backend's pass over the task."""

    backend: str
    accuracy: float
    seconds: float
    loglikelihoods: dict[int, list[float]]  # question (doc id) → each answer's log-likelihood, in order


@dataclass
class Agreement:
    accuracy_points: float  # |server − hf| accuracy, in points (percent)
    max_loglikelihood_gap: float  # the largest |server − hf| over every answer of every question
    different_picks: list[int]  # questions whose best-scored answer differs


def evaluate(backend: str, model_args: dict[str, Any], questions: list[int] | None = None, batch_size: int = 8) -> Run:
    """`TASK` through lm-eval's `backend` (`local-completions` or `hf`), with per-answer scores; only
    `questions` (doc ids) when given."""
    os.environ.update(OFFLINE)
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=backend,
        model_args=model_args,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(TASK_DIR)),
        batch_size=batch_size,
        samples=None if questions is None else {TASK: questions},
        log_samples=True,
        bootstrap_iters=0,
    )
    seconds = time.perf_counter() - started
    assert results is not None  # None only on ranks other than 0 of a distributed run
    samples = results["samples"][TASK]
    scores = {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in samples}
    return Run(backend, float(results["results"][TASK]["acc,none"]), seconds, scores)


def through_server(base_url: str, model_id: str, model_dir: Path, questions: list[int] | None = None) -> Run:
    """The task scored by a running tunehouse server (`base_url` ends in `/v1`), tokenized by lm-eval
    with the model folder's own tokenizer, as `local-completions` needs."""
    return evaluate(
        "local-completions",
        {
            "model": model_id,
            "base_url": f"{base_url}/completions",
            "tokenizer_backend": "huggingface",
            "tokenizer": str(model_dir),
            "num_concurrent": 1,
            "max_retries": 1,
        },
        questions,
    )


def with_hf(model_dir: Path, questions: list[int] | None = None) -> Run:
    """The task scored by lm-eval's own Hugging Face backend on `model_dir`, in float32 on the CPU as
    tunehouse serves it."""
    return evaluate("hf", {"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"}, questions)


def compare(server: Run, hf: Run) -> Agreement:
    assert server.loglikelihoods.keys() == hf.loglikelihoods.keys()
    gaps = [
        abs(a - b)
        for doc in hf.loglikelihoods
        for a, b in zip(server.loglikelihoods[doc], hf.loglikelihoods[doc], strict=True)
    ]
    picks = [doc for doc, scores in hf.loglikelihoods.items() if _best(scores) != _best(server.loglikelihoods[doc])]
    return Agreement(100 * abs(server.accuracy - hf.accuracy), max(gaps), picks)


def _best(scores: list[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


@contextmanager
def tunehouse_server(model_dir: Path) -> Iterator[str]:
    """A `tunehouse serve --no-worker` whose temporary home holds the shipped model folder; its `/v1` URL."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        home = Path(tmp)
        (home / "models").mkdir()
        (home / "models" / SHIPPED_FOLDER).symlink_to(model_dir.resolve(), target_is_directory=True)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {**os.environ, "TUNEHOUSE_HOME": str(home), **OFFLINE}
        env.pop("TUNEHOUSE_API_KEY", None)
        command = [sys.executable, "-m", "tunehouse.cli.main", "serve", "--port", str(port), "--no-worker"]
        with open(home / "server.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            else:
                raise RuntimeError(f"the server did not start: {(home / 'server.log').read_text()[-2000:]}")
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    args = parser.parse_args()
    questions = None if args.limit is None else list(range(args.limit))

    from tunehouse.models.shipped import materialize_shipped_model

    model_dir = materialize_shipped_model(REPO / ".cache" / "models" / SHIPPED_FOLDER)
    with tunehouse_server(model_dir) as base_url:
        server = through_server(base_url, SHIPPED_ID, model_dir, questions)
    hf = with_hf(model_dir, questions)
    agreement = compare(server, hf)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "model": SHIPPED_ID,
        "questions": len(hf.loglikelihoods),
        "tunehouse local-completions": {"accuracy": server.accuracy, "seconds": round(server.seconds, 1)},
        "lm-eval hf": {"accuracy": hf.accuracy, "seconds": round(hf.seconds, 1)},
        **asdict(agreement),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
