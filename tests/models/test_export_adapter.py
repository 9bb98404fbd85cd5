"""The `adapter` and `vllm` formats: LoRA matrices only, the base named by its id, checked on the base."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import SHIPPED_ID, TINY_ID
from tests.models.conftest import LORA_ID, SHIPPED_LORA_ID, TRAINED_HEAD_ID, UNTRAINED_HEAD_ID
from tunehouse.errors import ExportRefused
from tunehouse.models.export import export_model


def _logits(model, text_ids: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(input_ids=torch.tensor([text_ids])).logits


def test_the_adapter_holds_only_lora_matrices_and_names_its_base(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    report = export_model(LORA_ID, "adapter", out)

    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "export-report.json",
    ]
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert tensors and all(".lora_A." in name or ".lora_B." in name for name in tensors)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_ID
    assert config["modules_to_save"] is None and config["r"] == 8
    assert report.logits is not None and report.logits.passed and report.logits.max_abs_diff == 0.0


def test_an_adapter_of_the_shipped_model_names_it_by_its_hub_id(home: Path, tmp_path: Path) -> None:
    report = export_model(SHIPPED_LORA_ID, "adapter", tmp_path / "adapter")

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == SHIPPED_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert report.logits is not None and report.logits.passed


def test_the_exported_adapter_on_its_base_answers_as_the_fine_tune(home: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunehouse.models.catalog import get_model, weights_dir

    out = tmp_path / "adapter"
    export_model(LORA_ID, "adapter", out, verify=False)
    base_dir = weights_dir(get_model(TINY_ID))
    ids = AutoTokenizer.from_pretrained(str(base_dir))("The sea is wide and")["input_ids"]
    original = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base_dir)), str(get_model(LORA_ID).path)
    ).eval()
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(out)).eval()

    assert torch.equal(_logits(original, ids), _logits(exported, ids))


def test_an_untrained_lm_head_copy_is_left_out_and_said_so(home: Path, tmp_path: Path) -> None:
    report = export_model(UNTRAINED_HEAD_ID, "adapter", tmp_path / "adapter")

    assert not any("lm_head" in name for name in load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")))
    assert report.notes and "base_model.model.lm_head.weight" in report.notes[0]
    assert report.logits is not None and report.logits.passed


@pytest.mark.parametrize("fmt", ["adapter", "vllm"])
def test_a_trained_lm_head_is_refused_where_vllm_would_reject_it(home: Path, tmp_path: Path, fmt: str) -> None:
    with pytest.raises(ExportRefused, match=r"lm_head.*--format merged or gguf") as refused:
        export_model(TRAINED_HEAD_ID, fmt, tmp_path / fmt)

    assert refused.value.status_code == 422
    assert not (tmp_path / fmt).exists()
    assert not list(tmp_path.iterdir()), "a refused export leaves nothing behind"


def test_vllm_gets_the_adapter_and_the_exact_serve_command(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "vllm export"
    report = export_model(LORA_ID, "vllm", out)

    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    expected = [
        "vllm", "serve", TINY_ID, "--enable-lora",
        "--lora-modules", f"{LORA_ID}={adapter}",
        "--max-lora-rank", "8",
    ]  # fmt: skip
    assert shlex.split(report.commands["vllm"]) == expected
    assert report.commands["vllm"] in (out / "README.md").read_text()

    # serve.sh runs `vllm` with the same arguments from any directory, with the folder moved too
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "vllm").write_text('#!/bin/sh\nprintf "%s\\n" vllm "$@"\n')
    (fake_bin / "vllm").chmod(0o755)
    run = subprocess.run(
        [str(moved / "serve.sh"), "--port", "9000"],
        cwd="/",
        env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    moved_adapter = moved / "adapter"
    assert run.stdout.splitlines() == [*expected[:5], f"{LORA_ID}={moved_adapter}", *expected[6:], "--port", "9000"]
