"""Preflight: an export that would break is refused before anything is written, saying why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_ID
from tests.models.conftest import LORA_ID
from tunehouse.errors import ExportRefused, InvalidRequest, InvalidValue, ModelNotFound, TunehouseError
from tunehouse.models.export import export_model
from tunehouse.models.export.preflight import preflight
from tunehouse.models.export.source import load_tokenizer, resolve_source

FULL_ID = f"ft:{TINY_ID}:tunehouse:full:ftjob-export0005"
ADAPTER_ON_FULL_ID = f"ft:{FULL_ID}:tunehouse:more:ftjob-export0006"
LLAMA2_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
)


def _variant(tiny: Path, target: Path, *, config: dict | None = None, tokenizer_config: dict | None = None) -> Path:
    shutil.copytree(tiny, target)
    for name, changes in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if changes:
            data = json.loads((target / name).read_text())
            data.update(changes)
            (target / name).write_text(json.dumps(data))
    return target


@pytest.fixture(scope="module")
def odd_models(export_home: Path, tiny_model_dir: Path) -> dict[str, str]:
    """Base models each broken in one way, and a full fine-tune with an adapter over it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNEHOUSE_HOME", str(export_home))
        from tunehouse.models.catalog import register_base_model, register_trained_model

        root = export_home / "odd"
        folders = {
            "short-vocab": _variant(tiny_model_dir, root / "short-vocab", config={"vocab_size": 49000}),
            "mistral-arch": _variant(tiny_model_dir, root / "mistral-arch", config={"model_type": "mistral"}),
            "llama2-template": _variant(
                tiny_model_dir, root / "llama2-template", tokenizer_config={"chat_template": LLAMA2_STYLE}
            ),
        }
        (folders["llama2-template"] / "chat_template.jinja").unlink(missing_ok=True)
        folders["no-template"] = _variant(tiny_model_dir, root / "no-template")
        (folders["no-template"] / "chat_template.jinja").unlink(missing_ok=True)
        folders["whitespace-split"] = _variant(tiny_model_dir, root / "whitespace-split")
        spec = json.loads((folders["whitespace-split"] / "tokenizer.json").read_text())
        spec["pre_tokenizer"] = {"type": "Whitespace"}
        (folders["whitespace-split"] / "tokenizer.json").write_text(json.dumps(spec))
        for name, folder in folders.items():
            register_base_model(name, folder)
        full = _variant(tiny_model_dir, root / "full")
        register_trained_model(FULL_ID, kind="fine-tuned", path=full, base_model=TINY_ID, adapter=False, job_id="j5")
        register_trained_model(
            ADAPTER_ON_FULL_ID,
            kind="fine-tuned",
            path=export_home / "models" / "ft" / "ftjob-export0001",  # the LoRA fixture's adapter
            base_model=FULL_ID,
            adapter=True,
            job_id="j6",
        )
    return {name: name for name in folders}


def _refusal(model_id: str, fmt: str) -> TunehouseError:
    source = resolve_source(model_id)
    with pytest.raises(TunehouseError) as refused:
        preflight(source, fmt, load_tokenizer(source))
    return refused.value


def test_an_unknown_model_is_a_404_like_the_catalog_says(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="no-such-model") as missing:
        export_model("no-such-model", "merged", tmp_path / "out")
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"


def test_a_tokenizer_larger_than_the_embeddings_is_refused(home: Path, odd_models: dict[str, str]) -> None:
    refused = _refusal("short-vocab", "merged")
    assert isinstance(refused, ExportRefused) and refused.status_code == 422 and refused.code == "export_refused"
    assert "vocab_size is 49000" in refused.message and "49151" in refused.message


@pytest.mark.parametrize("fmt", ["merged", "gguf", "ollama"])
def test_formats_that_carry_the_chat_template_refuse_a_model_without_one(
    home: Path, odd_models: dict[str, str], fmt: str
) -> None:
    refused = _refusal("no-template", fmt)
    assert isinstance(refused, ExportRefused) and "no chat template" in refused.message


def test_gguf_refuses_an_architecture_it_does_not_translate(home: Path, odd_models: dict[str, str]) -> None:
    refused = _refusal("mistral-arch", "gguf")
    assert "Llama-architecture" in refused.message and "'mistral'" in refused.message


def test_gguf_refuses_a_pre_tokenizer_llama_cpp_would_split_differently(home: Path, odd_models: dict[str, str]) -> None:
    refused = _refusal("whitespace-split", "gguf")
    assert "pre-tokenizer" in refused.message and "Whitespace" in refused.message


def test_ollama_refuses_a_template_that_drops_the_system_message_but_gguf_takes_it(
    home: Path, odd_models: dict[str, str]
) -> None:
    refused = _refusal("llama2-template", "ollama")
    assert "Ollama TEMPLATE" in refused.message and "--format gguf" in refused.message
    source = resolve_source("llama2-template")
    preflight(source, "gguf", load_tokenizer(source))  # the GGUF carries the Jinja template as it is


def test_full_weights_have_no_adapter_to_export(home: Path, odd_models: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ExportRefused, match="not a LoRA fine-tune"):
        export_model(FULL_ID, "adapter", tmp_path / "out")


def test_an_adapter_over_a_full_fine_tune_cannot_name_a_hub_base(home: Path, odd_models: dict[str, str]) -> None:
    refused = _refusal(ADAPTER_ON_FULL_ID, "vllm")
    assert f"full fine-tune '{FULL_ID}'" in refused.message and "--format merged" in refused.message


@pytest.mark.parametrize(
    ("fmt", "quantization", "error", "param"),
    [
        ("zip", None, InvalidValue, "format"),
        ("merged", "q8_0", InvalidValue, "quantization"),
        ("gguf", "q2_k", InvalidValue, "quantization"),
    ],
)
def test_bad_requests_name_the_option(
    home: Path, tmp_path: Path, fmt: str, quantization: str | None, error: type, param: str
) -> None:
    with pytest.raises(error) as bad:
        export_model(LORA_ID, fmt, tmp_path / "out", quantization=quantization)
    assert bad.value.param == param and bad.value.status_code == 400


def test_an_output_folder_with_files_in_it_is_not_overwritten(home: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidRequest, match="not an empty folder"):
        export_model(LORA_ID, "adapter", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
