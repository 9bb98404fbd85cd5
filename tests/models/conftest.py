"""A store holding fine-tunes to export: of the tiny Llama, a LoRA adapter, one with a trained
`lm_head` copy (PEFT's modules_to_save) and one with an untrained copy; a LoRA over the shipped model.

The adapters are made with PEFT directly (random, non-zero matrices with a large alpha, so they
change the model's answers decisively) and registered as a finished job registers its model.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, SHIPPED_ID, TINY_ID, make_home

LORA_ID = f"ft:{TINY_ID}:tunehouse:lora:ftjob-export0001"
TRAINED_HEAD_ID = f"ft:{TINY_ID}:tunehouse:head:ftjob-export0002"
UNTRAINED_HEAD_ID = f"ft:{TINY_ID}:tunehouse:copy:ftjob-export0003"
SHIPPED_LORA_ID = f"ft:{SHIPPED_ID}:tunehouse:smol:ftjob-export0004"
LLAMACPP_VENV = REPO / ".venv-llamacpp"


def _make_adapter(base_dir: Path, target: Path, *, head: str | None, seed: int, alpha: int = 64) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=alpha,
        target_modules="all-linear",
        init_lora_weights=False,  # random A and B: the adapter changes the logits from the start
        modules_to_save=["lm_head"] if head else None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if head == "trained":
        with torch.no_grad():
            copy = peft_model.base_model.model.lm_head.modules_to_save["default"].weight
            copy.add_(torch.randn_like(copy) * 0.05)
    peft_model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def export_home(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path) -> Path:
    """A TUNEHOUSE_HOME with the tiny base and its three fine-tunes, and a LoRA over the shipped model."""
    home = make_home(tmp_path_factory.mktemp("export-home"), shipped_model_dir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNEHOUSE_HOME", str(home))
        from tunehouse.models.catalog import register_base_model, register_trained_model

        register_base_model(TINY_ID, tiny_model_dir)
        for model_id, head, seed in (
            (LORA_ID, None, 1),
            (TRAINED_HEAD_ID, "trained", 2),
            (UNTRAINED_HEAD_ID, "copy", 3),
        ):
            job = model_id.rsplit(":", 1)[1]
            path = _make_adapter(tiny_model_dir, home / "models" / "ft" / job, head=head, seed=seed)
            register_trained_model(model_id, kind="fine-tuned", path=path, base_model=TINY_ID, adapter=True, job_id=job)
        # a gentler adapter on the real model: its answers stay language-like
        path = _make_adapter(shipped_model_dir, home / "models" / "ft" / "ftjob-export0004", head=None, seed=4, alpha=8)
        register_trained_model(
            SHIPPED_LORA_ID,
            kind="fine-tuned",
            path=path,
            base_model=SHIPPED_ID,
            adapter=True,
            job_id="ftjob-export0004",
        )
    return home


@pytest.fixture
def home(export_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(export_home))
    yield export_home


LLAMACPP_LOG = REPO / ".cache" / "llamacpp-build.log"
_build: subprocess.Popen[bytes] | None = None


def _missing_build_tools() -> list[str]:
    return [tool for tool in ("make", "cc", "c++") if shutil.which(tool) is None]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building `.venv-llamacpp` as soon as a selected test needs it: the build (10+ minutes on
    two cores, once per checkout) then runs beside the rest of the suite instead of before its test."""
    global _build
    needed = any("llamacpp" in getattr(item, "fixturenames", ()) for item in session.items)
    if needed and _build is None and not (LLAMACPP_VENV / ".installed").exists() and not _missing_build_tools():
        LLAMACPP_LOG.parent.mkdir(parents=True, exist_ok=True)
        with open(LLAMACPP_LOG, "wb") as log:
            _build = subprocess.Popen(["nice", "-n", "5", "make", "llamacpp"], cwd=REPO, stdout=log, stderr=log)


@pytest.fixture(scope="session")
def llamacpp() -> Path:
    """`.venv-llamacpp` with llama-cpp-python, from the build started at collection (or built here);
    skipped, saying why, only where no C/C++ compiler exists."""
    if not (LLAMACPP_VENV / ".installed").exists():
        missing = _missing_build_tools()
        if missing:
            pytest.skip(f"llama-cpp-python needs a compiler to build and {', '.join(missing)} is missing")
        if _build is not None:
            code = _build.wait(timeout=3600)
            output = LLAMACPP_LOG.read_text(errors="replace")[-3000:]
        else:
            done = subprocess.run(["make", "llamacpp"], cwd=REPO, capture_output=True, text=True, timeout=3600)
            code, output = done.returncode, done.stdout[-3000:] + done.stderr[-3000:]
        assert code == 0, f"make llamacpp failed:\n{output}"
    return LLAMACPP_VENV / "bin" / "python"
