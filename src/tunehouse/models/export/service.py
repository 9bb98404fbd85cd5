"""`export_model`: preflight, write one format into a folder, check what was written, report.

The folder is built beside the target and renamed into place when complete, so an interrupted or
refused export never leaves a half-written folder behind. `export-report.json` inside it records
the checks (logit differences, llama.cpp's answers) and the commands that use the export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunehouse.errors import ExportRefused, ExportVerificationFailed
from tunehouse.models.export.adapter import read_adapter, write_adapter
from tunehouse.models.export.gguf_llama import QUANTIZATIONS, write_lora_gguf, write_model_gguf
from tunehouse.models.export.merged import write_merged
from tunehouse.models.export.ollama import modelfile, ollama_name
from tunehouse.models.export.preflight import check_request, preflight
from tunehouse.models.export.source import (
    ExportSource,
    load_tokenizer,
    load_weights,
    merged_model,
    reference_model,
    resolve_source,
)
from tunehouse.models.export.verify import (
    GgufCheck,
    LogitsCheck,
    check_gguf,
    compare_logits,
    prompt_ids,
    tunehouse_answers,
)
from tunehouse.models.export.vllm import write_serving_files

REPORT = "export-report.json"
MODEL_GGUF = "model.gguf"
ADAPTER_GGUF = "adapter.gguf"

Progress = Callable[[str], None]


@dataclass
class ExportReport:
    model: str
    format: str
    output: str
    quantization: str | None = None
    files: dict[str, int] = field(default_factory=dict)
    """Path inside the folder → bytes."""
    logits: LogitsCheck | None = None
    gguf: list[GgufCheck] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.logits is None or self.logits.passed) and all(g.status != "failed" for g in self.gguf)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class _Export:
    """One export in progress: what it reads, where it writes, what it found."""

    source: ExportSource
    tokenizer: Any
    folder: Path
    report: ExportReport
    verify: bool
    progress: Progress

    def reference(self) -> Any:
        return reference_model(self.source)


def export_model(
    model_id: str,
    fmt: str,
    out_dir: Path,
    *,
    quantization: str | None = None,
    verify: bool = True,
    progress: Progress | None = None,
    raise_on_failure: bool = True,
) -> ExportReport:
    """Export `model_id` as `fmt` into `out_dir` (new or empty), check it, and report.

    ModelNotFound (404) for an unknown model, InvalidValue/InvalidRequest for a bad request,
    ExportRefused (422) for an export that would break; ExportVerificationFailed when the written
    export does not behave as the model does (the folder stays, with its report, for inspection),
    unless `raise_on_failure` is false (then `report.passed` says so).
    """
    out_dir = out_dir.expanduser().resolve()
    chosen = check_request(fmt, quantization, out_dir)
    say = progress or (lambda _: None)
    source = resolve_source(model_id)
    tokenizer = load_tokenizer(source)
    preflight(source, fmt, tokenizer)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    report = ExportReport(source.name, fmt, str(out_dir), chosen if fmt in ("gguf", "ollama") else None)
    job = _Export(source, tokenizer, folder, report, verify, say)
    try:
        WRITERS[fmt](job)
        report.files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
        (folder / REPORT).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(folder, out_dir)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not report.passed and raise_on_failure:
        raise ExportVerificationFailed(
            f"The {fmt} export of '{source.name}' was written to {out_dir} but does not behave as the model "
            f"does: {failure_summary(report)}. See {out_dir / REPORT}.",
            param="model",
        )
    return report


def failure_summary(report: ExportReport) -> str:
    """What differed, in a line."""
    if report.logits is not None and not report.logits.passed:
        return f"logits differ by {report.logits.max_abs_diff:.3g} (tolerance {report.logits.tolerance:.3g})"
    return "; ".join(f"{g.file}: {g.reason}" for g in report.gguf if g.status == "failed")


def _check_adapter_folder(job: _Export, adapter_dir: Path) -> None:
    if not job.verify:
        return
    job.progress("Checking the exported adapter on its base against the model")
    reference = job.reference()
    exported = reference_model(job.source, adapter_dir=adapter_dir)
    job.report.logits = compare_logits(
        reference, exported, prompt_ids(job.tokenizer), exported.dtype, "exported adapter on its base vs the model"
    )


def _write_adapter(job: _Export) -> None:
    job.progress("Writing the LoRA adapter")
    adapter = read_adapter(job.source, "an adapter export")
    write_adapter(job.source, adapter, job.folder)
    if adapter.dropped:
        job.report.notes.append(f"Left out untrained full-module copies: {', '.join(adapter.dropped)}.")
    _check_adapter_folder(job, job.folder)


def _write_vllm(job: _Export) -> None:
    job.progress("Writing the LoRA adapter and the vLLM command")
    adapter = read_adapter(job.source, "vLLM")
    write_adapter(job.source, adapter, job.folder / "adapter")
    if adapter.dropped:
        job.report.notes.append(f"Left out untrained full-module copies: {', '.join(adapter.dropped)}.")
    _, command = write_serving_files(
        job.folder, Path(job.report.output), job.source.weights_id, job.source.name, adapter.rank
    )
    job.report.commands["vllm"] = command
    _check_adapter_folder(job, job.folder / "adapter")


def _write_merged(job: _Export) -> None:
    from transformers import AutoModelForCausalLM

    job.progress("Merging the adapter into the weights")
    merged = merged_model(job.source)
    dtype = merged.dtype
    write_merged(merged, job.tokenizer, job.folder, job.source.name)
    del merged
    if job.verify:
        job.progress("Checking the merged folder's logits against the model")
        written = AutoModelForCausalLM.from_pretrained(str(job.folder), dtype=dtype).float().eval()
        job.report.logits = compare_logits(
            job.reference(), written, prompt_ids(job.tokenizer), dtype, f"merged folder ({dtype}) vs the model"
        )


def _gguf_files(job: _Export, *, with_adapter: bool) -> None:
    """model.gguf (merged) and, for a LoRA fine-tune, adapter.gguf; checked in llama.cpp."""
    quantization = QUANTIZATIONS[job.report.quantization or "f16"]
    config = job.source.config()
    job.progress(f"Merging and writing {MODEL_GGUF} ({quantization.name})")
    merged = merged_model(job.source)
    write_model_gguf(
        job.folder / MODEL_GGUF,
        name=job.source.name,
        config={**config, "tie_word_embeddings": merged.config.tie_word_embeddings},
        state_dict=merged.state_dict(),
        tokenizer=job.tokenizer,
        tokenizer_dir=job.source.tokenizer_dir,
        quantization=quantization,
    )
    adapter = None
    if with_adapter and job.source.adapter_dir is not None:
        try:
            adapter = read_adapter(job.source, "a GGUF LoRA")
        except ExportRefused as refused:
            job.report.notes.append(f"{ADAPTER_GGUF} left out: {refused.message}")
        if adapter is not None:
            job.progress(f"Writing {ADAPTER_GGUF}")
            write_lora_gguf(
                job.folder / ADAPTER_GGUF,
                name=job.source.name,
                config=config,
                adapter=adapter,
                quantization=quantization,
            )
    if not job.verify:
        return
    job.progress("Checking logits and llama.cpp's greedy answers against the model")
    reference = job.reference()
    job.report.logits = compare_logits(
        reference, merged.float(), prompt_ids(job.tokenizer), merged.dtype, "merged weights vs the model"
    )
    del merged
    expected = tunehouse_answers(reference, job.tokenizer)
    job.report.gguf.append(check_gguf(job.folder / MODEL_GGUF, expected))
    if adapter is not None:
        with tempfile.TemporaryDirectory(dir=job.folder.parent, prefix=".base-gguf-") as tmp:
            base = write_model_gguf(
                Path(tmp) / "base.gguf",
                name=job.source.weights_id,
                config=config,
                state_dict=load_weights(job.source).state_dict(),
                tokenizer=job.tokenizer,
                tokenizer_dir=job.source.tokenizer_dir,
                quantization=quantization,
            )
            job.report.gguf.append(
                check_gguf(
                    base,
                    expected,
                    lora_path=job.folder / ADAPTER_GGUF,
                    label=f"{ADAPTER_GGUF} on {job.source.weights_id}",
                )
            )


def _write_gguf(job: _Export) -> None:
    _gguf_files(job, with_adapter=True)
    lines = [f"llama-cli -m {MODEL_GGUF}"]
    job.report.commands["llama.cpp"] = lines[0]
    if (job.folder / ADAPTER_GGUF).exists():
        lines.append(
            f"llama-cli -m {job.source.weights_id.split('/')[-1]}.gguf --lora {ADAPTER_GGUF}  "
            f"# the base's GGUF: tunehouse models export {job.source.weights_id} --format gguf"
        )
        job.report.commands["llama.cpp (LoRA)"] = lines[1]
    (job.folder / "README.md").write_text(
        f"# {job.source.name} as GGUF\n\n"
        f"`{MODEL_GGUF}` is the fine-tune merged into its base ({job.report.quantization}), with its tokenizer "
        "and chat template in the metadata. "
        + (f"`{ADAPTER_GGUF}` is the LoRA alone, for a GGUF of `{job.source.weights_id}`. " if len(lines) > 1 else "")
        + "\n\n```sh\n"
        + "\n".join(lines)
        + "\n```\n"
    )


def _write_ollama(job: _Export) -> None:
    _gguf_files(job, with_adapter=False)
    (job.folder / "Modelfile").write_text(modelfile(job.tokenizer, MODEL_GGUF, job.source.name))
    job.report.commands["ollama"] = f"ollama create {ollama_name(job.source.name)} -f Modelfile"


WRITERS: dict[str, Callable[[_Export], None]] = {
    "adapter": _write_adapter,
    "merged": _write_merged,
    "gguf": _write_gguf,
    "ollama": _write_ollama,
    "vllm": _write_vllm,
}
