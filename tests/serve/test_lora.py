"""The batched pass's LoRA (`serve/batch/lora.py`): rows of an adapter give what PEFT's model gives, and
base rows beside them what the base gives."""

from __future__ import annotations

from pathlib import Path

import torch

from tunehouse.serve.batch.llama import BatchedLlama, Row
from tunehouse.serve.batch.lora import load_lora


def test_adapted_rows_match_peft_and_base_rows_the_base(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    base = LlamaForCausalLM(config).eval()
    # q and v of the attention's three, up and down of the MLP's: the others' columns get no update.
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(base, lora).eval()
    peft_model.save_pretrained(str(tmp_path))
    weights = load_lora(tmp_path, torch.float32, torch.device("cpu"))
    batched = BatchedLlama(peft_model.get_base_model(), torch.float32)

    prompts = [[5, 9, 11, 3], [7, 7, 2, 100, 4]]
    rows = [Row(prompts[0], batched.new_cache(), weights), Row(prompts[1], batched.new_cache(), None)]
    adapted, plain = batched.forward(rows)
    with torch.no_grad():
        expected = peft_model(torch.tensor([prompts[0]])).logits[0, -1]
        with peft_model.disable_adapter():
            expected_base = peft_model(torch.tensor([prompts[1]])).logits[0, -1]
            unadapted = peft_model(torch.tensor([prompts[0]])).logits[0, -1]
    assert torch.allclose(adapted, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(plain, expected_base, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected, unadapted, atol=1e-3)  # the adapter does change the logits
