"""Which engine serves chat and completions: tunehouse's own, or vLLM (TUNEHOUSE_SERVE_BACKEND)."""

from __future__ import annotations

from tunehouse.config import settings
from tunehouse.errors import InvalidValue
from tunehouse.serve.engine import Engine
from tunehouse.serve.vllm_backend import VllmEngine

BACKENDS = ("builtin", "vllm")


def serving_engine() -> Engine | VllmEngine:
    """The engine TUNEHOUSE_SERVE_BACKEND names; a clear error for an unknown name or a missing vLLM."""
    backend = settings().serve_backend
    if backend == "vllm":
        return VllmEngine()
    if backend == "builtin":
        return Engine()
    raise InvalidValue(f"TUNEHOUSE_SERVE_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}.")
