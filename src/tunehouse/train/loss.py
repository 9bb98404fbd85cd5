"""Masked next-token loss, summed (not averaged) so a step can normalize by all its trained tokens.

Averaging per micro-batch would weight short micro-batches more and make batch 1 × accumulation 8
differ from batch 8 (PITFALLS 4); summing and dividing once per optimizer step does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.models.template import IGNORE_INDEX


@dataclass
class LossSums:
    loss_sum: torch.Tensor
    correct: int
    tokens: int
    computed_tokens: int = 0
    """Tokens the forward pass ran (padding included, a shared prefix once), where counted."""


def masked_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> LossSums:
    """Sum of cross-entropy over positions whose next token is trained, and the argmax hits."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    selected_logits = shift_logits[mask].float()
    selected_labels = shift_labels[mask]
    loss_sum = F.cross_entropy(selected_logits, selected_labels, reduction="sum")
    correct = int((selected_logits.argmax(dim=-1) == selected_labels).sum())
    return LossSums(loss_sum=loss_sum, correct=correct, tokens=int(mask.sum()))


def trained_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states that predict a trained token, and those tokens: only they need logits."""
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    return hidden[:, :-1][mask], shift_labels[mask]


class ChunkBuffers:
    """The two `chunk × vocabulary` buffers a chunk's logits and log-probabilities are written to,
    reused by every chunk (fresh chunk-sized tensors, 25 MB each for 256 rows of a 49k vocabulary,
    would each be new pages faulted in from the OS). A trainer keeps one for all its forward passes:
    buffers that came and went with every pass were the largest blocks in the CPU heap and left it
    fragmented (peak RSS 0.04-0.07 GB higher on the training bench, at the same speed)."""

    def __init__(self) -> None:
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None

    def take(self, rows: int, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two `rows × weight.shape[0]` buffers in `weight`'s dtype and device."""
        pair = self._pair
        if (
            pair is None
            or pair[0].shape[0] < rows
            or pair[0].shape[1] != weight.shape[0]
            or pair[0].dtype != weight.dtype
            or pair[0].device != weight.device
        ):
            self._pair = pair = None  # the old pair is freed before the new one is allocated
            logits = torch.empty((rows, weight.shape[0]), dtype=weight.dtype, device=weight.device)
            self._pair = pair = (logits, torch.empty_like(logits))
        return pair[0][:rows], pair[1][:rows]


class _LinearCrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T`, computed a chunk of rows at a time.

    The forward pass also computes the gradients (softmax minus one-hot is all backward needs), so
    neither the full logits nor their fp32 copy are ever held: peak memory is one chunk of logits
    instead of tokens × vocabulary × (2 + 4 + 4) bytes. Backward only scales the stored gradients.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        chunk_size: int,
        compute_dtype: torch.dtype,
        buffers: ChunkBuffers,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight_grad else None
        logits_buffer, log_probs_buffer = buffers.take(min(chunk_size, hidden.shape[0]), w)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].to(compute_dtype)
            y = labels[start : start + chunk_size]
            n = len(y)
            logits = torch.mm(h, w.t(), out=logits_buffer[:n])
            # Fused row-wise kernels in the compute dtype (a bf16 log-softmax still sums in fp32 and
            # only rounds its output); asking for fp32 output instead costs a full fp32 copy.
            log_probs = torch.log_softmax(logits, dim=-1, out=log_probs_buffer[:n])
            label_log_probs = log_probs.gather(1, y[:, None]).squeeze(1)
            loss -= label_log_probs.float().sum()
            # the label scores at least as high as every other token (an argmax that counts ties)
            correct += (label_log_probs >= log_probs.amax(dim=-1)).sum()
            if need_hidden_grad or need_weight_grad:
                # softmax minus one-hot; the softmax as exp(log-softmax), over the spent logits: one
                # element-wise pass instead of a second row-wise one, and as precise in bf16
                d_logits = torch.exp(log_probs, out=logits)
                d_logits[torch.arange(n, device=y.device), y] -= 1.0
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk_size] = (d_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (d_logits.t() @ h).float()
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight if grad_weight is not None else torch.empty(0),
        )
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        d_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        d_weight = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return d_hidden, d_weight, None, None, None, None


def chunked_lm_loss_sum(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    compute_dtype: torch.dtype = torch.float32,
    chunk_size: int = 256,
    buffers: ChunkBuffers | None = None,
) -> LossSums:
    """`masked_lm_loss_sum` from hidden states, without materializing the vocabulary-wide logits.

    Only the positions that predict a trained token get logits at all, a chunk of rows at a time, in
    `compute_dtype` (bf16 matmul like autocast would do) with the softmax in fp32. Pass the same
    `buffers` to every call of a training run to reuse the chunk buffers.
    """
    selected_hidden, selected_labels = trained_positions(hidden, labels)
    with torch.autocast(hidden.device.type, enabled=False):
        loss_sum, correct = _LinearCrossEntropySum.apply(
            selected_hidden, weight, selected_labels, chunk_size, compute_dtype, buffers or ChunkBuffers()
        )
    return LossSums(loss_sum=loss_sum, correct=int(correct), tokens=int(selected_labels.numel()))
