"""`tunehouse bench` — measure the trainer against the tool users would otherwise run."""

from __future__ import annotations

import re
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


@bench_app.command("serve")
def bench_serve(
    model: str = typer.Option(
        "HuggingFaceTB/SmolLM2-135M-Instruct", help="A base model id of this home, or a Hugging Face folder."
    ),
    rounds: int = typer.Option(3, min=1, help="Rounds; the systems take turns in each, and figures are medians."),
    clients: str = typer.Option("1,4,16,64", help="Concurrent client counts, comma-separated."),
    max_tokens: int = typer.Option(64, min=2, help="Tokens each concurrent request asks for."),
    decode_tokens: int = typer.Option(128, min=2, help="Tokens the single-stream decode asks for."),
    systems: str = typer.Option("tunehouse,llama.cpp,vllm", help="Systems to run, where installed."),
    adapters: bool = typer.Option(True, "--adapters/--no-adapters", help="Run the mixed-adapter round."),
    before: Path | None = typer.Option(
        None,
        "--before",
        exists=True,
        file_okay=False,
        help="The src folder of an older tunehouse (git archive COMMIT src | tar -x -C DIR), run as one more peer.",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write every figure here."),
) -> None:
    """Serve MODEL with tunehouse and, where installed, llama.cpp's server (`make llamacpp`, on the
    shipped GGUF) and vLLM (`make vllm`); interleave them over rounds and compare time to first token,
    decode tokens/s, and aggregate tokens/s and p50/p99 latency at each client count. Run it from the
    repository, where the peers' venvs are."""
    import json

    from tunehouse.bench.serve import BEFORE, SYSTEMS, ServeBenchSettings, run
    from tunehouse.models.shipped import SHIPPED_MODEL_ID, shipped_gguf_path

    levels = tuple(int(c) for c in clients.split(",") if c.strip())
    if not levels or min(levels) < 1:
        raise typer.BadParameter("give positive integers, e.g. 1,4,16", param_hint="--clients")
    chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
    if unknown := set(chosen) - set(SYSTEMS):
        raise typer.BadParameter(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
    settings = ServeBenchSettings(
        model_id=Path(model).name if Path(model).is_dir() else model,
        model_dir=_model_dir(model),
        gguf=shipped_gguf_path() if model == SHIPPED_MODEL_ID else None,
        rounds=rounds,
        clients=levels,
        max_tokens=max_tokens,
        decode_tokens=decode_tokens,
        systems=chosen + ((BEFORE,) if before is not None else ()),
        adapters=adapters,
        repo=Path.cwd(),
        before=before,
    )

    def keep(report: dict[str, Any]) -> None:
        _print_serve_report(report)
        if json_out is not None:
            json_out.write_text(json.dumps(report, indent=1))

    keep(run(settings, log=console.print, on_round=keep))


SERVE_METRICS = {
    "ttft_short_seconds": "time to first token, ~50-token prompt (s)",
    "ttft_long_seconds": "time to first token, ~500-token prompt (s)",
    "decode_tokens_per_second": "decode tokens/s, one stream",
}


LOAD_METRIC = re.compile(r"(mixed_)?c(\d+)_(.+)")  # what bench/serve.py names a load level's figures
LOAD_FIGURES = {
    "tokens_per_second": "aggregate tokens/s",
    "p50_seconds": "p50 latency (s)",
    "p99_seconds": "p99 latency (s)",
}


def _serve_row(metric: str) -> tuple[tuple[int, int, int], str]:
    """Where a metric's row goes in the table (single-stream figures, then by client count, mixed
    adapters last) and its label."""
    if metric in SERVE_METRICS:
        return (0, 0, list(SERVE_METRICS).index(metric)), SERVE_METRICS[metric]
    match = LOAD_METRIC.fullmatch(metric)
    if match is None:
        return (3, 0, 0), metric
    mixed, clients, figure = match.groups()
    who = f"{clients} client{'s' if clients != '1' else ''}" + (", two adapters and the base mixed" if mixed else "")
    order = list(LOAD_FIGURES).index(figure) if figure in LOAD_FIGURES else len(LOAD_FIGURES)
    return (2 if mixed else 1, int(clients), order), f"{LOAD_FIGURES.get(figure, figure)}, {who}"


def _print_serve_report(report: dict[str, Any]) -> None:
    from tunehouse.bench.serve import percentile

    summary, ratios = report["summary"], report["ratios"]
    systems = list(summary)
    metrics = sorted({m for figures in summary.values() for m in figures}, key=lambda m: _serve_row(m)[0])
    table = Table("median over rounds", *systems, *(f"tunehouse ÷ {peer}" for peer in ratios))
    for metric in metrics:
        row = [f"{summary[s][metric]:.2f}" if metric in summary[s] else "—" for s in systems]
        row += [f"{ratios[p][metric]:.2f}×" if metric in ratios[p] else "—" for p in ratios]
        table.add_row(_serve_row(metric)[1], *row)
    table.add_row("peak RSS of the server (GB)", *(f"{report['peak_rss_bytes'][s] / 1e9:.2f}" for s in systems))
    console.print(table)
    host = report["machine"]
    console.print(
        f"{report['model']} on {host['device']}, {host['memory_gb']} GB; flags: "
        f"{' '.join(host['flags']) or 'none of note'}; load average at the start {host['load_average']}. "
        f"{report['settings']['rounds']} rounds, {report['settings']['max_tokens']} tokens a request. Ratios: "
        "for tokens/s above 1 favours tunehouse, for seconds below 1 does."
    )
    if report["mixed_over_base"] is not None:
        console.print(
            f"tunehouse with two adapters and the base mixed: {report['mixed_over_base']:.2f}× its base-only "
            "aggregate tokens/s at as many clients."
        )
    for system, seconds in report["ttft_while_training_seconds"].items():
        console.print(
            f"{system}, chats sent while a fine-tuning job trained: time to first token median "
            f"{percentile(seconds, 50):.2f} s, max {max(seconds):.2f} s, over {len(seconds)} chats."
        )
    for system, why in report["skipped"].items():
        console.print(f"{system} skipped: {why}")
