"""`tunehouse bench train`: our trainer against TRL's SFTTrainer on the same examples and settings.

Each side runs in its own child process (`python -m tunehouse.bench.train SIDE ...`), so peak RSS
is that side's alone (read when training ends, before the final-loss measurement below, whose
forward passes are the benchmark's, not the trainer's), and prints one JSON line. Both train the
same model with LoRA on all linear layers, the same batch size, epochs, learning rate and seed;
TRL keeps its other defaults (that is what users would run). Both final models are then scored by the same code — the mean loss on the
assistant tokens of the training examples — because the two report different training losses
(TRL's default trains on every token of a conversation, we train assistant turns only).

MFU is model FLOPs per second over the machine's measured peak matmul FLOP/s (bf16 or fp32, the
faster), with model FLOPs per token = 2·N (forward) + 2·N (input gradients) + 4·N_trainable (weight
gradients) + attention, N being the linear-layer weights including the output layer.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tunehouse.train.reporting import SilentReporter

SIDES = ("ours", "trl")


@dataclass
class BenchSettings:
    data: Path
    model_dir: Path
    limit: int = 64
    batch_size: int = 8
    n_epochs: int = 1
    learning_rate: float = 2e-4
    seed: int = 42
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 2048


def read_examples(settings: BenchSettings) -> list[dict[str, Any]]:
    with open(settings.data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[: settings.limit] if settings.limit else rows


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_gpu_bytes() -> int | None:
    """Most GPU memory PyTorch's allocator held for tensors during the run (None without CUDA)."""
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def device_name() -> str:
    """The GPU's name, or the CPU's model and its bf16 matrix units: the machines a session gets
    differ (AMD EPYC with AVX-512 BF16, Intel Xeon with AMX), and so do their figures."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    from tunehouse.hardware import cpu_flags

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
            break
    units = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16")) if flag in cpu_flags()]
    return f"CPU ({model}, {os.cpu_count()} cores{', ' + ' and '.join(units) if units else ''})"


def measure_peak_matmul_flops(seconds: float = 2.0) -> dict[str, float]:
    """FLOP/s of a square matmul in fp32 and bf16 on the training device (the MFU denominator).

    A GPU needs an 8192-wide product to reach its peak (2048 leaves an H100 at half of it); a CPU
    reaches its peak by 2048. GPU work is asynchronous, so the clock starts and stops only after
    the device has finished.
    """
    from tunehouse.hardware import default_device

    device = default_device()
    size = 8192 if device.type == "cuda" else 2048
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        for _ in range(2):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            runs += 1
            if device.type == "cuda" and runs % 8 == 0:
                torch.cuda.synchronize()  # keep the queue short, so the clock sees finished work
        if device.type == "cuda":
            torch.cuda.synchronize()
        result[name] = 2 * size**3 * runs / (time.perf_counter() - started)
    return result


def model_flops_per_token(model_dir: Path, lora_r: int, mean_length: float) -> float:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = config.num_key_value_heads * head_dim
    intermediate = config.intermediate_size
    per_layer = hidden * (heads * head_dim) * 2 + hidden * kv * 2 + 3 * hidden * intermediate
    linear = layers * per_layer + hidden * config.vocab_size
    lora_per_layer = lora_r * (hidden + heads * head_dim) * 2 + lora_r * (hidden + kv) * 2
    lora_per_layer += lora_r * (hidden + intermediate) * 3
    trainable = layers * lora_per_layer
    attention = layers * 4 * mean_length / 2 * (heads * head_dim) * 3  # causal: half of QK^T and AV, ×3 fwd+bwd
    return 4 * linear + 6 * trainable + attention


def assistant_token_loss(model: Any, tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> float:
    """Mean loss on the trained (assistant) tokens, the same measurement for both sides (under bf16
    autocast where the hardware has it, as both train). Logits are computed only at the positions
    that predict a trained token, so the measurement adds no vocabulary-wide tensor to either
    side's peak memory."""
    import torch.nn.functional as F

    from tunehouse.hardware import bf16_supported
    from tunehouse.models.template import IGNORE_INDEX
    from tunehouse.train.sft import encode_all

    model.eval()
    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_supported(device)):
        for example in encode_all(tokenizer, examples, max_length):
            targets = torch.tensor(example.labels[1:], device=device)
            keep = (targets != IGNORE_INDEX).nonzero().flatten()
            ids = torch.tensor([example.input_ids], device=device)
            logits = model(input_ids=ids, logits_to_keep=keep).logits[0].float()
            total += float(F.cross_entropy(logits, targets[keep], reduction="sum"))
            tokens += int(keep.numel())
    return total / max(1, tokens)


class _Messages(SilentReporter):
    """Only the trainer's messages, to stderr (stdout carries the result line)."""

    def message(self, text: str, level: str = "info") -> None:
        print(f"[ours] {text}", file=sys.stderr)


def run_ours(settings: BenchSettings) -> dict[str, Any]:
    from tunehouse.train.config import SFTConfig
    from tunehouse.train.sft import sft_trainer

    examples = read_examples(settings)
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            base_model_dir=settings.model_dir,
            output_dir=Path(tmp) / "out",
            checkpoint_dir=Path(tmp) / "checkpoints",
            n_epochs=settings.n_epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            seed=settings.seed,
            lora_r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            max_length=settings.max_length,
            checkpoint_interval=10**9,  # like the TRL side: no checkpoints inside the timed loop
        )
        trainer = sft_trainer(config, _Messages())
        trainer.setup(examples, None)
        # Like TRL's timed train(), which saves nothing: no epoch-end checkpoints in the timed loop.
        trainer.save_checkpoint = lambda step, metrics: None  # type: ignore[method-assign]  # a bench-only stub
        result = trainer.run()
        training_peak_rss, training_peak_gpu = peak_rss_bytes(), peak_gpu_bytes()
        final_loss = assistant_token_loss(trainer.model, trainer.tokenizer, examples, settings.max_length)
    return {
        "side": "ours",
        "tokens": result.trained_tokens,
        "train_seconds": result.wall_seconds,
        "tokens_per_second": result.tokens_per_second,
        "reported_train_loss": result.final_train_loss,
        "final_assistant_loss": final_loss,
        "peak_rss_bytes": training_peak_rss,
        "peak_gpu_bytes": training_peak_gpu,
        "precision": "bf16 autocast" if result.bf16 else "fp32",
        "gradient_checkpointing": trainer.checkpointing,
        "pass_tokens": trainer.pass_tokens,
        "computed_tokens": trainer.computed_tokens,
    }


def run_trl(settings: BenchSettings) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer as TRLTrainer

    examples = read_examples(settings)
    tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(settings.model_dir), dtype=torch.float32)
    dataset = Dataset.from_list([{"messages": e["messages"]} for e in examples])
    with tempfile.TemporaryDirectory() as tmp:
        args = TRLConfig(
            output_dir=tmp,
            per_device_train_batch_size=settings.batch_size,
            num_train_epochs=settings.n_epochs,
            learning_rate=settings.learning_rate,
            seed=settings.seed,
            max_length=settings.max_length,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
        )
        lora = LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        trainer = TRLTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
        )
        prepared: Any = trainer.train_dataset  # TRL's tokenized dataset, typed as any dataset or None
        tokens = sum(len(ids) for ids in prepared["input_ids"]) * settings.n_epochs
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        training_peak_rss, training_peak_gpu = peak_rss_bytes(), peak_gpu_bytes()
        final_loss = assistant_token_loss(trainer.model, tokenizer, examples, settings.max_length)
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {
        "side": "trl",
        "tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "reported_train_loss": losses[-1] if losses else output.training_loss,
        "final_assistant_loss": final_loss,
        "peak_rss_bytes": training_peak_rss,
        "peak_gpu_bytes": training_peak_gpu,
        "precision": "bf16 autocast" if args.bf16 else "fp32",
    }


def run_side_in_child(side: str, settings: BenchSettings) -> dict[str, Any]:
    values = {k: str(v) for k, v in asdict(settings).items()}
    process = subprocess.run(
        [sys.executable, "-m", "tunehouse.bench.train", side, json.dumps(values)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if process.returncode != 0:
        raise RuntimeError(f"the {side} side of the benchmark failed (exit {process.returncode})")
    return json.loads(process.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s, its peak memory replaced by the median over the runs, and
    every run's figures under `runs`."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_second"])
    result = dict(ordered[(len(ordered) - 1) // 2])
    for key in ("peak_rss_bytes", "peak_gpu_bytes"):
        values = sorted(r[key] for r in runs if r.get(key) is not None)
        if values:
            result[key] = values[(len(values) - 1) // 2]
    result["runs"] = [{k: r.get(k) for k in ("tokens_per_second", "peak_rss_bytes", "peak_gpu_bytes")} for r in runs]
    return result


def compare(settings: BenchSettings, sides: tuple[str, ...] = SIDES, repeat: int = 1) -> dict[str, Any]:
    """Run the sides back to back (`repeat` times, alternating, keeping each side's median run),
    then add the speed ratio and MFU."""
    peak = measure_peak_matmul_flops()
    examples = read_examples(settings)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for _ in range(repeat):
        for side in sides:
            runs[side].append(run_side_in_child(side, settings))
    results = {side: _median_run(side_runs) for side, side_runs in runs.items()}
    ours = results.get("ours")
    mean_length = 0.0
    if ours:
        from transformers import AutoTokenizer

        from tunehouse.train.sft import encode_all

        tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
        lengths = [len(e.input_ids) for e in encode_all(tokenizer, examples, settings.max_length)]
        mean_length = sum(lengths) / max(1, len(lengths))
    flops_per_token = model_flops_per_token(settings.model_dir, settings.lora_r, mean_length)
    for result in results.values():
        result["model_flops_per_token"] = flops_per_token
        result["mfu"] = result["tokens_per_second"] * flops_per_token / max(peak.values())
    summary: dict[str, Any] = {
        "settings": {k: str(v) for k, v in asdict(settings).items()},
        "device": device_name(),
        "examples": len(examples),
        "peak_matmul_flops": peak,
        "results": results,
    }
    if "ours" in results and "trl" in results:
        summary["speedup"] = results["ours"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
        # each run of ours against the TRL run right after it: the spread a noisy machine gives
        summary["pair_speedups"] = [
            a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(runs["ours"], runs["trl"], strict=True)
        ]
        summary["rss_ratio"] = results["ours"]["peak_rss_bytes"] / results["trl"]["peak_rss_bytes"]
        if results["ours"].get("peak_gpu_bytes") and results["trl"].get("peak_gpu_bytes"):
            summary["gpu_memory_ratio"] = results["ours"]["peak_gpu_bytes"] / results["trl"]["peak_gpu_bytes"]
    return summary


def _settings_from_json(text: str) -> BenchSettings:
    values = json.loads(text)
    types = {"data": Path, "model_dir": Path, "learning_rate": float}
    return BenchSettings(**{k: types.get(k, int)(v) for k, v in values.items()})


def main(argv: list[str]) -> int:
    side, settings = argv[1], _settings_from_json(argv[2])
    torch.manual_seed(settings.seed)
    result = run_ours(settings) if side == "ours" else run_trl(settings)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
