"""`make demo`: seed 001's workflow end to end on your machine, through the unmodified openai SDK.

facts in a CSV → chat JSONL → upload → fine-tune the shipped SmolLM2-135M-Instruct → ask the base and
the fine-tuned model the same questions (phrased differently from the training data) → compare.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jonny_whizbang.story import SYSTEM, heldout_questions, is_correct, write_training_file  # noqa: E402

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
OUT = Path(__file__).resolve().parents[1] / "artifacts" / "demo"
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen[bytes]:
    OUT.mkdir(parents=True, exist_ok=True)
    log = open(OUT / "server.log", "ab")  # noqa: SIM115 - kept open for the server's lifetime
    server = subprocess.Popen(
        [sys.executable, "-m", "tunehouse.cli.main", "serve", "--port", str(port)], stdout=log, stderr=log
    )
    for _ in range(600):
        if server.poll() is not None:
            sys.exit(f"The server exited; see {OUT / 'server.log'}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit("The server did not start within 2 minutes.")


def ask(client: OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        temperature=0,
        max_tokens=40,
    )
    return reply.choices[0].message.content.strip()


def main() -> int:
    started = time.time()
    port = free_port()
    console.rule("[bold]tunehouse demo: teach SmolLM2 about Jonny Whizbang")
    console.print(
        f"Starting tunehouse on http://127.0.0.1:{port}/v1 (data in {os.environ.get('TUNEHOUSE_HOME', '~/.tunehouse')})"
    )
    server = start_server(port)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local")

        train_path = write_training_file(OUT / "jonny_whizbang.jsonl")
        console.print(f"1. Wrote {len(train_path.read_text().splitlines())} chat examples to {train_path}")
        with open(train_path, "rb") as f:
            training_file = client.files.create(file=f, purpose="fine-tune")
        console.print(f"2. Uploaded: {training_file.id}")

        job = client.fine_tuning.jobs.create(
            model=BASE_MODEL,
            training_file=training_file.id,
            suffix="jonny",
            seed=42,
            # A 135M model and 28 examples: a higher learning rate than the LoRA default (2e-4 × 5).
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 5}},
            },
        )
        console.print(f"3. Created fine-tuning job {job.id}; following its events:")
        seen: set[str] = set()
        while True:
            job = client.fine_tuning.jobs.retrieve(job.id)
            events = list(client.fine_tuning.jobs.list_events(job.id, limit=50).data)[::-1]
            for event in events:
                if event.id in seen:
                    continue
                seen.add(event.id)
                step = event.data.get("step") if event.type == "metrics" else None
                if step is None or step % 10 == 0 or step == event.data.get("total_steps"):
                    console.print(
                        f"   [dim]{time.strftime('%H:%M:%S', time.localtime(event.created_at))}[/dim] {event.message}"
                    )
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1)
        if job.status != "succeeded":
            console.print(f"[red]The job {job.status}: {job.error}")
            return 1
        console.print(
            f"4. Fine-tuned model: [bold]{job.fine_tuned_model}[/bold] ({job.trained_tokens:,} trained tokens)"
        )

        table = Table(title="Questions phrased differently from the training data", show_lines=True)
        table.add_column("question")
        table.add_column(f"base: {BASE_MODEL}")
        table.add_column("fine-tuned")
        base_right = tuned_right = 0
        questions = heldout_questions()
        for question, expected in questions:
            base_answer = ask(client, BASE_MODEL, question)
            tuned_answer = ask(client, job.fine_tuned_model, question)
            base_ok, tuned_ok = is_correct(base_answer, expected), is_correct(tuned_answer, expected)
            base_right += base_ok
            tuned_right += tuned_ok
            mark = lambda ok: "[green]✔[/green] " if ok else "[red]✘[/red] "  # noqa: E731
            table.add_row(question, mark(base_ok) + base_answer, mark(tuned_ok) + tuned_answer)
        console.print(table)
        console.print(
            f"Right answers: base {base_right}/{len(questions)}, fine-tuned {tuned_right}/{len(questions)}. "
            f"Demo wall time {time.time() - started:.0f} s."
        )
        return 0 if tuned_right > base_right else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
