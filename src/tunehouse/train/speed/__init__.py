"""The speed wing: patches over transformers and PEFT that make training faster without changing
what it computes.

The rules at the door:
- **Optional.** The recipe (`recipe.py`) is correct with none of it: with `SFTConfig.speed` off it
  trains on transformers' and PEFT's own forwards, and a test holds that run, this wing's and a
  plain transformers/PEFT loop to the same losses (`tests/train/speed/test_apply.py`).
- **Parity-tested.** Every piece is tested against the plain computation it replaces (transformers'
  or PEFT's forward, or `reference.py` for a compiled kernel), outputs and gradients.
- **One entry point.** `apply(model, ...)` switches the model's modules and returns `Speedups`:
  what each kind of module got (`report`), and the three things the trainer hands back to the wing:
  each pass's inputs (`pass_inputs`: the packer's example boundaries, for attention), the pass's
  context (`pass_context`), and the optimizer's post-step call (`weights_changed`).
- **One way down.** The wing reads the recipe's data types (`batching.PackedRow`); the recipe
  imports nothing of the wing but this module.

The pieces: `attention.py` (CPU attention in plain matmuls, over the rows of a packed pass),
`packed_attention.py` (a Llama layer's rotary embedding and attention in one Function),
`fused_lora.py` (the adapter inside the base matmul, siblings sharing one input), `fused_layers.py`
and `rms_norm.py` (RMSNorm and SwiGLU keeping less for backward), `casts.py` (compute dtypes and
the adapter weights' cast copies), `kernels.py` (compiled CPU kernels) and `reference.py` (the
arithmetic they compile).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tunehouse.train.batching import PackedRow
from tunehouse.train.speed import fused_layers, fused_lora, packed_attention
from tunehouse.train.speed.attention import (
    PASS_KWARG,
    PackedPass,
    full_causal_attention,
    training_sdpa_backends,
    use_matmul_attention,
)
from tunehouse.train.speed.casts import WeightCasts
from tunehouse.train.speed.kernels import KERNELS, kernel

OWN = "the model's own"


@dataclass(frozen=True)
class SpeedReport:
    """What each kind of module of a model runs, in a few words: the one place that says what the
    wing switched on."""

    attention: str = OWN
    norm: str = OWN
    mlp: str = OWN
    lora: str = OWN
    kernels: str = "unused"
    """The compiled CPU kernels (`kernels.py`), which the fused layers call for bf16 on a CPU."""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return "; ".join(f"{kind}: {what}" for kind, what in self.as_dict().items())


@dataclass(frozen=True)
class Speedups:
    """What `apply` switched on, and what the trainer hands back to the wing while it trains."""

    report: SpeedReport
    device: torch.device
    casts: WeightCasts
    """The fused layers' cast copies of adapter weights, kept until `weights_changed`."""
    enabled: bool = True
    matmul_attention: bool = False
    """Attention runs as plain matmuls over rows it lays out itself (`attention.py`): passes are
    packed end to end in one row (`pack_examples(one_row=True)`) and hand over their boundaries."""
    full_causal: bool = False
    """Every attention layer sees all earlier tokens (`full_causal_attention`): a pass's example
    boundaries are all attention needs, and a prefix the examples share may be computed once."""

    @property
    def shares_prefixes(self) -> bool:
        """Whether passes may compute their examples' shared prefix once (`share_prefix`)."""
        return self.matmul_attention and self.full_causal

    def pass_inputs(self, packed: PackedRow | None) -> dict[str, Any]:
        """The model's extra keyword arguments for one forward pass: a new `PackedPass` holding the
        packer's boundaries (None: the pass was not packed in one row), which the model hands to
        every attention layer and which goes with the pass."""
        if not self.matmul_attention:
            return {}
        return {PASS_KWARG: PackedPass(packed if self.full_causal else None, self.device)}

    def pass_context(self) -> contextlib.AbstractContextManager[Any]:
        """What a forward pass runs under: SDPA's backends for training (CUDA: no cuDNN)."""
        return training_sdpa_backends(self.device) if self.enabled else contextlib.nullcontext()

    def weights_changed(self) -> None:
        """The optimizer's end of the weight-cast protocol (`casts.WeightCasts`): call after each
        step."""
        self.casts.weights_changed()


def apply(
    model: torch.nn.Module,
    *,
    device: torch.device,
    bf16: bool,
    lora: bool,
    matmul_attention: bool | None = None,
    enabled: bool = True,
) -> Speedups:
    """Switch `model` (a transformers model, or PEFT's wrapper of one) to the wing's modules where
    they apply, and say what it got. `matmul_attention`: attention in plain matmuls (None: on a
    CPU, where it is the faster). `enabled=False` switches nothing: the model's own forwards."""
    casts = WeightCasts()
    if not enabled:
        return Speedups(SpeedReport(), device, casts, enabled=False)
    base = getattr(model, "get_base_model", lambda: model)()
    adapter_inputs = fused_lora.keep_adapter_inputs_as_is(model) if (bf16 and lora) else 0
    if lora:
        fused_lora.fuse_lora_forward(model, casts)
    fused_layers.fuse_norms_and_mlps(base, casts)
    use_matmul = device.type == "cpu" if matmul_attention is None else matmul_attention
    matmul = use_matmul and use_matmul_attention(base)
    if matmul:
        packed_attention.fuse_packed_attention(base)
    report = SpeedReport(
        attention=_attention_report(base, matmul, device),
        norm=_counted("fused RMSNorm", _switched(base, fused_layers._rms_norm_forward)),
        mlp=_counted("fused SwiGLU", _switched(base, fused_layers._swiglu_forward)),
        lora=_lora_report(_switched(model, fused_lora._fused_forward), adapter_inputs) if lora else "none",
        kernels=_kernels_report(bf16, device),
    )
    return Speedups(report, device, casts, True, matmul, full_causal_attention(base.config))


def _switched(model: torch.nn.Module, forward: Callable[..., Any]) -> int:
    """How many of `model`'s modules run `forward` (bound to them by the fuse functions)."""
    return sum(getattr(m.__dict__.get("forward"), "func", None) is forward for m in model.modules())


def _counted(what: str, count: int) -> str:
    return f"{what} ({count})" if count else OWN


def _attention_report(base: torch.nn.Module, matmul: bool, device: torch.device) -> str:
    if matmul:
        rotary = _switched(base, packed_attention._llama_attention_forward)
        return "packed rows in plain matmuls" + (f", rotary fused ({rotary})" if rotary else "")
    return "SDPA, no cuDNN" if device.type == "cuda" else OWN


def _lora_report(layers: int, adapter_inputs: int) -> str:
    inputs = ", bf16 inputs as they are" if adapter_inputs else ""
    return f"shared-input LoRA ({layers}{inputs})" if layers else "PEFT's own"


def _kernels_report(bf16: bool, device: torch.device) -> str:
    if not (bf16 and device.type == "cpu"):
        return "unused (bf16 on a CPU only)"
    missing = [name for name in KERNELS if kernel(name) is None]
    if not missing:
        return f"compiled ({len(KERNELS)})"
    return f"eager, {len(missing)} of {len(KERNELS)} not built (python -m tunehouse.train.speed.kernels)"
