"""`tunehouse models export MODEL --format FORMAT -o DIR`: a model in a form other tools run.

Works on the local store, like `models add`: the weights are on this machine. Prints each step,
then what was checked and the command that runs the export; exits 1 when an export is refused or
its check fails (the report in the folder says what differed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunehouse.cli.client import AsJson, console, err_console, fail, print_json
from tunehouse.errors import TunehouseError


def models_export(
    model: Annotated[str, typer.Argument(help="A model id (fine-tuned, checkpoint, base, or an alias).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="adapter (PEFT LoRA), merged (safetensors), gguf (llama.cpp), ollama (GGUF + Modelfile), "
            "vllm (adapter + serve command).",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="A new (or empty) folder to write.")],
    quantization: Annotated[
        str | None, typer.Option("--quantization", "-q", help="gguf and ollama: f16 (default), bf16 or q8_0.")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the export against the model after writing it.")
    ] = True,
    as_json: AsJson = False,
) -> None:
    """Export a model for llama.cpp, Ollama, vLLM or any Hugging Face tool, checked after writing."""
    from tunehouse.models.export import export_model

    try:
        report = export_model(
            model,
            fmt,
            output,
            quantization=quantization,
            verify=verify,
            progress=lambda step: err_console.print(f"[dim]{escape(step)}…[/dim]"),
        )
    except TunehouseError as exc:
        fail(exc.message)
    if as_json:
        print_json(report.as_dict())
        return
    console.print(f"Exported [bold]{escape(report.model)}[/bold] as {report.format} to {report.output}")
    files = Table("file", "bytes")
    for name, size in report.files.items():
        files.add_row(name, f"{size:,}")
    console.print(files)
    if report.logits is not None:
        check = report.logits
        console.print(
            f"Logits: {escape(check.compared)}: max |difference| {check.max_abs_diff:.3g} "
            f"(tolerance {check.tolerance:.3g}) on {check.prompts} prompts — ok"
        )
    for gguf in report.gguf:
        line = f"llama.cpp: {escape(gguf.file)}: {gguf.status}"
        console.print(line + (f" ({escape(gguf.reason)})" if gguf.reason else ""))
        for answer in gguf.answers:
            console.print(f"  {answer.agrees}: {escape(answer.llamacpp[:60])!r}")
    for note in report.notes:
        console.print(f"Note: {escape(note)}")
    for tool, command in report.commands.items():
        console.print(f"{tool}: [bold]{escape(command)}[/bold]")
    console.print(f"Report: {escape(report.output)}/export-report.json")
