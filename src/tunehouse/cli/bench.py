"""`tunehouse bench` — measure the trainer against the tool users would otherwise run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
console = Console(width=160)


def _model_dir(model: str) -> Path:
    as_path = Path(model)
    if as_path.is_dir():
        return as_path
    from tunehouse.models.catalog import base_of, get_model, weights_dir

    return Path(weights_dir(base_of(get_model(model))))


@bench_app.command("train")
def bench_train(
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="A chat JSONL file."),
    model: str = typer.Option("HuggingFaceTB/SmolLM2-135M-Instruct", help="Model id or Hugging Face folder."),
    limit: int = typer.Option(64, help="Use the first N examples (0: all)."),
    batch_size: int = typer.Option(8),
    epochs: int = typer.Option(1),
    learning_rate: float = typer.Option(2e-4),
    seed: int = typer.Option(42),
    lora_r: int = typer.Option(16),
    lora_alpha: int = typer.Option(32),
    random_init: str | None = typer.Option(
        None,
        "--random-init",
        help="Train a randomly initialised Llama of this shape instead of --model's weights, with "
        "--model's tokenizer: tiny, or llama-1b (TinyLlama-1.1B's shape).",
    ),
    ours_only: bool = typer.Option(False, "--ours-only", help="Skip the TRL run."),
    repeat: int = typer.Option(
        1, min=1, help="Run each side this many times, alternating, and report each side's median run."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the full results here."),
) -> None:
    """Train on DATA with tunehouse and with TRL's SFTTrainer (LoRA on all linear layers, same
    batch, epochs, learning rate and seed) and compare tokens/s, wall time, peak RSS, loss and MFU."""
    import json
    import tempfile

    from tunehouse.bench.train import BenchSettings, compare
    from tunehouse.models.random_init import SHAPES, build_random_llama

    if random_init is not None and random_init not in SHAPES:
        raise typer.BadParameter(f"choose one of {', '.join(SHAPES)}", param_hint="--random-init")
    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        model_dir = _model_dir(model)
        if random_init is not None:
            console.print(f"Building a random-init {random_init} Llama with {model}'s tokenizer…")
            model_dir = build_random_llama(random_init, model_dir, Path(tmp) / random_init, seed)
        settings = BenchSettings(
            data=data,
            model_dir=model_dir,
            limit=limit,
            batch_size=batch_size,
            n_epochs=epochs,
            learning_rate=learning_rate,
            seed=seed,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
        )
        summary = compare(settings, ("ours",) if ours_only else ("ours", "trl"), repeat)
    _print_summary(summary)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=1))


def _print_summary(summary: dict[str, Any]) -> None:
    on_gpu = any(r.get("peak_gpu_bytes") is not None for r in summary["results"].values())
    columns = ["engine", "tokens", "tokens/s", "wall s", "peak RSS"] + (["peak GPU memory"] if on_gpu else [])
    table = Table(*columns, "final loss*", "reported loss", "MFU", "precision")
    for side, r in summary["results"].items():
        memory = [f"{r['peak_rss_bytes'] / 1e9:.2f} GB"]
        if on_gpu:
            memory.append(f"{r['peak_gpu_bytes'] / 1e9:.2f} GB")
        table.add_row(
            "tunehouse" if side == "ours" else "TRL SFTTrainer",
            f"{r['tokens']:,}",
            f"{r['tokens_per_second']:.1f}",
            f"{r['train_seconds']:.1f}",
            *memory,
            f"{r['final_assistant_loss']:.4f}",
            f"{r['reported_train_loss']:.4f}",
            f"{100 * r['mfu']:.1f} %",
            r["precision"],
        )
    console.print(table)
    for side, r in summary["results"].items():
        if len(r["runs"]) > 1:
            each = ", ".join(f"{run['tokens_per_second']:.1f}" for run in r["runs"])
            console.print(f"{side}: median of {len(r['runs'])} runs; tokens/s of each: {each}")
    ours = summary["results"].get("ours")
    if ours and ours.get("computed_tokens") and ours["computed_tokens"] != ours["tokens"]:
        console.print(
            f"ours ran {ours['computed_tokens']:,} tokens for its {ours['tokens']:,}: the leading tokens a "
            "pass's examples share (a repeated system prompt) once per pass. MFU counts the model FLOPs of "
            "the trained tokens."
        )
    peak = summary["peak_matmul_flops"]
    console.print(
        f"{summary['examples']} examples on {summary['device']}. Peak matmul: {peak['bf16'] / 1e9:.0f} GFLOP/s "
        f"bf16, {peak['fp32'] / 1e9:.0f} GFLOP/s fp32. *final loss: mean loss on the assistant tokens of the "
        "training examples after training, measured the same way for both."
    )
    if "speedup" in summary:
        memory_ratio = f"{summary['rss_ratio']:.2f}× its peak RSS"
        if "gpu_memory_ratio" in summary:
            memory_ratio += f" and {summary['gpu_memory_ratio']:.2f}× its peak GPU memory"
        console.print(f"tunehouse is [bold]{summary['speedup']:.2f}×[/bold] TRL's tokens/s, at {memory_ratio}.")
        if len(summary["pair_speedups"]) > 1:
            pairs = ", ".join(f"{ratio:.2f}×" for ratio in summary["pair_speedups"])
            console.print(f"Each run of ours against the TRL run after it: {pairs}.")
