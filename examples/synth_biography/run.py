"""Seed 001's story from prose: a biography → synthesized Q&A → rephrasings → two fine-tunes → held-out recall.

    python examples/synth_biography/run.py                      # starts a tunehouse server of its own
    python examples/synth_biography/run.py --base-url http://127.0.0.1:8000/v1

`biography.md` is a short life of a fictional person, Elowen Brackett, written as prose (16 facts, no
questions). `tunehouse data synth` turns it into question/answer pairs with the shipped model as the
generator; `tunehouse data augment` adds rephrasings of each question. The shipped model is then
fine-tuned (LoRA) twice with the same seed and epochs, once on the synthesized pairs alone and once
on the augmented set, and each is asked the questions of `heldout.csv`, phrased unlike anything
generated. Recall is the share of answers that contain the expected word. Figures go to
`artifacts/synth_biography/results.json`; BENCHMARKS.md records a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SYSTEM = "You are a helpful assistant."


def heldout() -> list[tuple[str, str]]:
    with open(HERE / "heldout.csv", newline="") as f:
        return [(row["question"], row["expected"]) for row in csv.DictReader(f)]


def start_server(out: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(out / "server.log", "ab")  # noqa: SIM115 - kept open for the server's lifetime
    server = subprocess.Popen(
        [sys.executable, "-m", "tunehouse.cli.main", "serve", "--port", str(port)], stdout=log, stderr=log
    )
    for _ in range(600):
        if server.poll() is not None:
            sys.exit(f"The server exited; see {out / 'server.log'}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return server, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit("The server did not start within 2 minutes.")


def tunehouse(*args: str) -> dict[str, Any]:
    """Run a `tunehouse data …` command with --json; its report."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tunehouse.cli.main", "data", *args, "--json"], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"tunehouse data {args[0]} failed:\n{done.stderr}\n{done.stdout[-2000:]}")
    report = json.loads(done.stdout)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def fine_tune(client: OpenAI, path: Path, suffix: str, epochs: int, seed: int) -> tuple[str, float]:
    with open(path, "rb") as f:
        training_file = client.files.create(file=f, purpose="fine-tune").id
    started = time.perf_counter()
    job = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=training_file,
        suffix=suffix,
        seed=seed,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": epochs, "learning_rate_multiplier": 5}},
        },
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded" or not job.fine_tuned_model:
        sys.exit(f"Fine-tuning on {path.name} {job.status}: {job.error}")
    return job.fine_tuned_model, time.perf_counter() - started


def recall(client: OpenAI, model: str, questions: list[tuple[str, str]]) -> tuple[int, list[str]]:
    answers = []
    for question, _ in questions:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            temperature=0,
            max_tokens=40,
        )
        answers.append((reply.choices[0].message.content or "").strip())
    right = sum(expected.lower() in answer.lower() for answer, (_, expected) in zip(answers, questions, strict=True))
    return right, answers


def normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="A running tunehouse server (default: start one).")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "synth_biography")
    parser.add_argument("--chunk-tokens", type=int, default=64)
    parser.add_argument("--per-chunk", type=int, default=5)
    parser.add_argument("--paraphrases", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--with-base", action="store_true", help="Also ask the base model (16 more answers).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server, base_url = (None, args.base_url) if args.base_url else start_server(args.out)
    try:
        common = ["--base-url", base_url, "--model", BASE_MODEL, "--seed", str(args.seed)]
        common += ["--concurrency", str(args.concurrency), "--timeout", "900"]
        qa, augmented = args.out / "qa.jsonl", args.out / "qa_augmented.jsonl"
        print(f"1. tunehouse data synth biography.md -o {qa} (generator: {BASE_MODEL} at {base_url})", flush=True)
        synth = tunehouse(
            "synth", str(HERE / "biography.md"), "-o", str(qa), "--system", SYSTEM,
            "--chunk-tokens", str(args.chunk_tokens), "--overlap-tokens", str(args.chunk_tokens // 4), "--per-chunk", str(args.per_chunk), *common,
        )  # fmt: skip
        pairs = synth["written"]
        print(
            f"   {pairs} pairs from {synth['chunks']} passages, {synth['usage']['requests']} requests, {synth['wall_seconds']} s"
        )
        for stage in synth["stages"]:
            print(f"   {stage['stage']}: kept {stage['kept']}, dropped {stage['dropped'] or 'none'}")
        if pairs < 10:  # a fine-tuning file needs 10 examples, as OpenAI's does
            sys.exit(
                f"Only {pairs} pairs survived curation; ask for more with --per-chunk or a smaller --chunk-tokens."
            )
        print(f"2. tunehouse data augment {qa.name} -o {augmented.name} --paraphrases {args.paraphrases}", flush=True)
        augment = tunehouse("augment", str(qa), "-o", str(augmented), "--paraphrases", str(args.paraphrases), *common)
        print(
            f"   {augment['paraphrases']} rephrasings kept, {augment['usage']['requests']} requests, {augment['wall_seconds']} s"
        )
        questions = heldout()
        trained = {
            normalized(json.loads(line)["messages"][1]["content"]) for line in augmented.read_text().splitlines()
        }
        seen = [q for q, _ in questions if normalized(q) in trained]
        print(f"   held-out questions that appear in the training data: {len(seen)} of {len(questions)}")

        client = OpenAI(base_url=base_url, api_key="sk-local")
        print(f"3. fine-tuning {BASE_MODEL} twice (LoRA, seed {args.seed}, {args.epochs} epochs)", flush=True)
        plain_model, plain_seconds = fine_tune(client, qa, "bio-plain", args.epochs, args.seed)
        augmented_model, augmented_seconds = fine_tune(client, augmented, "bio-augmented", args.epochs, args.seed)
        print(f"   {plain_model} ({plain_seconds:.0f} s), {augmented_model} ({augmented_seconds:.0f} s)")
        print(f"4. asking the {len(questions)} held-out questions", flush=True)
        results: dict[str, Any] = {"synth": synth, "augment": augment, "heldout_in_training": seen}
        models = [("synthesized", plain_model), ("augmented", augmented_model)]
        for label, model in [("base", BASE_MODEL)] * args.with_base + models:
            right, answers = recall(client, model, questions)
            results[label] = {"model": model, "right": right, "of": len(questions), "answers": answers}
            print(f"   {label:12} recall {right}/{len(questions)}  ({model})")
        results["training_seconds"] = {"synthesized": round(plain_seconds, 1), "augmented": round(augmented_seconds, 1)}
        results["load_average"] = os.getloadavg()  # the machine's contention, to read the timings by
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"Results in {args.out / 'results.json'}")
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
