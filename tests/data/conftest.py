"""Fixtures for the dataset toolkit: the shipped model's tokenizer (no weights) and file writers.

The tokenizer is read from the repo's `.cache/` when the rest of the suite has already dequantized
the shipped model there, and otherwise straight from the shipped GGUF (about 8 s, once a session).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
CACHED = REPO / ".cache" / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
TOKENIZER_MODEL_ID = "test/smollm2-tokenizer"

WriteJsonl = Callable[..., Path]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with SmolLM2's tokenizer and chat template, and a stub config so it can be registered."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    if (CACHED / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(CACHED))
    else:
        from tunehouse.models.shipped import shipped_gguf_path

        gguf = shipped_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TUNEHOUSE_HOME."""
    path = tmp_path / "home"
    monkeypatch.setenv("TUNEHOUSE_HOME", str(path))
    return path


@pytest.fixture
def registered_tokenizer(home: Path, tokenizer_dir: Path) -> str:
    """A model id whose tokenizer is SmolLM2's, registered in a fresh home (for CLI `--model`)."""
    from tunehouse.models.catalog import register_base_model

    folder = home.parent / "tokenizer-model"
    shutil.copytree(tokenizer_dir, folder)
    register_base_model(TOKENIZER_MODEL_ID, folder)
    return TOKENIZER_MODEL_ID


@pytest.fixture
def write_jsonl(tmp_path: Path) -> WriteJsonl:
    """Write rows (objects, or raw strings written as they are) one per line; returns the path."""

    def write(rows: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with path.open("wb") as fh:
            for row in rows:
                fh.write((row.encode() if isinstance(row, str) else orjson.dumps(row)) + b"\n")
        return path

    return write
