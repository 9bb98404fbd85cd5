"""The `merged` format: safetensors in the base's dtype with the tokenizer and chat template, whose
logits are the fine-tune's (adapter on base), as PITFALLS 6 asks of every merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.models.conftest import LORA_ID, TRAINED_HEAD_ID
from tunehouse.models.export import export_model
from tunehouse.models.template import render_chat_prompt

PROMPT = [{"role": "user", "content": "Which colour is item 7?"}]


def _adapter_on_base_and_merged(model_id: str, merged_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunehouse.models.catalog import base_of, get_model, weights_dir

    info = get_model(model_id)
    base_dir = weights_dir(base_of(info))
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    ids = torch.tensor([tokenizer(render_chat_prompt(tokenizer, PROMPT), add_special_tokens=False)["input_ids"]])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(info.path)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        return reference(input_ids=ids).logits, merged(input_ids=ids).logits


@pytest.mark.parametrize("model_id", [LORA_ID, TRAINED_HEAD_ID], ids=["lora", "lora+trained-lm_head"])
def test_merged_logits_match_the_adapter_on_its_base(home: Path, tmp_path: Path, model_id: str) -> None:
    out = tmp_path / "merged"
    report = export_model(model_id, "merged", out)

    expected, actual = _adapter_on_base_and_merged(model_id, out)
    difference = float((expected - actual).abs().max())
    print(f"{model_id}: merged vs adapter-on-base max |logit difference| = {difference:.3g}")
    assert difference < 1e-3 * max(1.0, float(expected.abs().max()))
    assert report.logits is not None and report.logits.passed
    assert report.logits.max_abs_diff == pytest.approx(difference, abs=1e-4)


def test_the_merged_folder_carries_tokenizer_chat_template_and_base_dtype(home: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tunehouse.models.catalog import load_tokenizer

    out = tmp_path / "merged"
    export_model(LORA_ID, "merged", out, verify=False)

    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32"  # the tiny base's dtype
    assert (out / "model.safetensors").exists() and not list(out.glob("adapter_*"))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    served = load_tokenizer(LORA_ID)
    assert tokenizer.chat_template == served.chat_template
    assert render_chat_prompt(tokenizer, PROMPT) == render_chat_prompt(served, PROMPT)


def test_a_trained_lm_head_unties_the_embeddings_rather_than_being_lost(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    export_model(TRAINED_HEAD_ID, "merged", out, verify=False)

    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
