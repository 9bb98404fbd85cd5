"""Data-parallel training over several processes through accelerate, and the one-process case.

`accelerate launch` (see `jobs/launch.py`) starts one trainer process per GPU (or several CPU processes
talking over gloo where there is no GPU). Each process runs the same recipe; only these operations
differ between one process and several, so the recipe reads the same either way:

- `shard`: each process trains its share of a step's examples (every process knows them all);
- `most` / `sum`: every process runs as many forward passes as the busiest one, and the step's
  metric sums are added over processes;
- `prepare`: DDP wraps the forward pass (LoRA, and full fine-tuning on CPU); on CUDA, full
  fine-tuning is sharded with FSDP instead, so no GPU holds all the weights' optimizer state;
- `no_sync`, `barrier`, `full_state_dict`, `clip_grad_norm`: what DDP and FSDP need around them.

`SingleProcess` is today's path: no accelerate, no wrapping, no communication.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from tunehouse.hardware import default_device


def causal_lm(model: torch.nn.Module) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself without one)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


class ForwardPass(torch.nn.Module):
    """The training forward pass as one module, so that a DDP or FSDP wrapper sees every call.

    With `stop_at_decoder` it returns the decoder's output (its hidden states feed the chunked
    loss, which takes the output layer's weight itself); otherwise the model's output (logits).
    """

    def __init__(self, model: torch.nn.Module, stop_at_decoder: bool) -> None:
        super().__init__()
        self.model = model
        self.stop_at_decoder = stop_at_decoder

    def forward(self, **inputs: torch.Tensor) -> Any:
        if self.stop_at_decoder:
            return causal_lm(self.model).get_decoder()(**inputs)
        return self.model(**inputs)


class SingleProcess:
    """One trainer process: every operation is the identity, nothing is wrapped or communicated."""

    world_size = 1
    rank = 0
    is_main = True

    def __init__(self) -> None:
        self.device = default_device()

    def describe(self, sharded: bool) -> str:
        return ""

    def shard(self, indices: list[int]) -> list[int]:
        return indices

    def most(self, count: int) -> int:
        return count

    def sum(self, values: list[float]) -> list[float]:
        return values

    def barrier(self) -> None:
        pass

    def prepare(self, forward: ForwardPass, shard_weights: bool) -> torch.nn.Module:
        return forward

    def no_sync(self, module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def clip_grad_norm(self, module: torch.nn.Module, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The weights to save when the model's own `state_dict` would not hold them all; None here."""
        return None

    def close(self) -> None:
        pass


class AcceleratedProcesses(SingleProcess):
    """One of several processes started by `accelerate launch`; accelerate does the communication.

    The `Accelerator` is made in `prepare`, once it is known whether the weights are sharded
    (FSDP's plugin is given at construction); rank, device and collectives need only its state.
    """

    def __init__(self) -> None:
        from accelerate import PartialState

        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.world_size = self.state.num_processes
        self.rank = self.state.process_index
        self.is_main = self.state.is_main_process
        self.device = self.state.device
        self.accelerator: Any = None
        self.sharded = False

    def describe(self, sharded: bool) -> str:
        return f", {self.world_size} processes ({'FSDP' if sharded else 'DDP'})"

    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.world_size]

    def most(self, count: int) -> int:
        from accelerate.utils import gather

        return int(gather(torch.tensor([count], device=self.device)).max())

    def sum(self, values: list[float]) -> list[float]:
        from accelerate.utils import reduce

        return reduce(torch.tensor(values, dtype=torch.float64, device=self.device), "sum").tolist()

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def prepare(self, forward: ForwardPass, shard_weights: bool) -> torch.nn.Module:
        """DDP around the forward pass; FSDP (CUDA only: accelerate has no FSDP over gloo) when
        `shard_weights`. Under FSDP the weights load on the CPU and each GPU receives its shard.

        FSDP is not exercised by the test suite (it needs several CUDA GPUs); DDP is, over gloo.
        """
        from accelerate import Accelerator

        plugin = None
        if shard_weights:
            from accelerate import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin(
                auto_wrap_policy="transformer_based_wrap",
                transformer_cls_names_to_wrap=list(causal_lm(forward.model)._no_split_modules),
                use_orig_params=True,  # the optimizer is built from the wrapped module's parameters
                state_dict_type="FULL_STATE_DICT",
            )
        self.accelerator = Accelerator(cpu=self.device.type == "cpu", mixed_precision="no", fsdp_plugin=plugin)
        self.sharded = shard_weights
        return self.accelerator.prepare_model(forward)

    def no_sync(self, module: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager[None]:
        """DDP accumulates gradients locally and all-reduces once, on the step's last pass. FSDP
        reduces every pass instead: its `no_sync` would keep whole unsharded gradients."""
        if sync or self.sharded:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(module)

    def clip_grad_norm(self, module: torch.nn.Module, max_norm: float) -> None:
        """The norm over all processes' gradient shards under FSDP (DDP's gradients are whole)."""
        self.accelerator.clip_grad_norm_(list(module.parameters()), max_norm)

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the gathered weights (on the main process; every process must call this),
        named as in the unwrapped model. Under DDP every process holds the whole model already."""
        if not self.sharded:
            return None
        state = self.accelerator.get_state_dict(module)
        return {name.removeprefix("model."): tensor for name, tensor in state.items()}

    def close(self) -> None:
        self.state.destroy_process_group()


def from_environment() -> SingleProcess:
    """This process's place: one of `accelerate launch`'s (which sets WORLD_SIZE), or alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return AcceleratedProcesses()
    return SingleProcess()
