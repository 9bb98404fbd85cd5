"""Exports of a catalog model to run elsewhere: a PEFT adapter, merged safetensors, GGUF (llama.cpp),
an Ollama folder, a vLLM adapter folder with its serve command.

Each export is refused up front when it would break (`preflight.py`), and checked after writing
(`verify.py`) against the model as tunehouse serves it. `export_model` (`service.py`) is the entry.
"""

from tunehouse.models.export.preflight import FORMATS
from tunehouse.models.export.service import ExportReport, export_model

__all__ = ["FORMATS", "ExportReport", "export_model"]
