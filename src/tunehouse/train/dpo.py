"""Direct preference optimization (DPO) recipe: the SFT recipe with a different step.

OpenAI's preference format — `input.messages`, one `preferred_output` and one `non_preferred_output`
(assistant messages) — becomes a pair of encoded examples that share the prompt and train only
their outputs. A step is: pairs → one packed forward of policy and one of the reference (the base
model: LoRA disabled, or a frozen copy for full fine-tuning) → summed log-probabilities of each
output → DPO loss `-log σ(β·((π_c − ref_c) − (π_r − ref_r)))` averaged over the step's pairs →
backward → clip → optimizer step. Only the pass's loss and what it is averaged over differ from
the SFT recipe; the step loop (passes, processes), setup, schedule, checkpoints, exact resume and
metrics are its.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.models.template import EncodedExample, encode_chat_example
from tunehouse.train.attention import training_sdpa_backends
from tunehouse.train.batching import pack_examples, packed_inputs
from tunehouse.train.config import SFTConfig
from tunehouse.train.distributed import SingleProcess
from tunehouse.train.loss import LossSums
from tunehouse.train.reporting import Reporter
from tunehouse.train.sft import SFTTrainer, TrainResult


@dataclass
class DPOConfig(SFTConfig):
    beta: float = 0.1
    """How far the policy may move from the reference: lower trusts the preferences more."""


@dataclass(frozen=True)
class PreferencePair:
    chosen: EncodedExample
    rejected: EncodedExample

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens


def encode_preference_example(tokenizer: Any, example: dict[str, Any], max_length: int) -> PreferencePair:
    """Prompt turns are context (assistant turns in the input included); only the outputs train."""
    prompt = [dict(m, weight=0) if m.get("role") == "assistant" else m for m in example["input"]["messages"]]

    def encode(output: list[dict[str, Any]]) -> EncodedExample:
        return encode_chat_example(tokenizer, prompt + [dict(m, role="assistant") for m in output], max_length)

    return PreferencePair(encode(example["preferred_output"]), encode(example["non_preferred_output"]))


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of log p(token) over each example's labelled tokens, from packed rows: shape (n,)."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    segments = segment_ids[:, 1:]
    mask = shift_labels != -100
    token_logprobs = torch.log_softmax(shift_logits[mask], dim=-1).gather(1, shift_labels[mask][:, None]).squeeze(1)
    return torch.zeros(n, dtype=token_logprobs.dtype, device=logits.device).index_add(0, segments[mask], token_logprobs)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss (sigmoid form, Rafailov et al. 2023) and whether the chosen output wins."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin), margin > 0


class DPOTrainer(SFTTrainer):
    config: DPOConfig

    def __init__(self, config: DPOConfig, reporter: Reporter, processes: SingleProcess | None = None) -> None:
        super().__init__(config, reporter, processes)
        # The frozen reference of full fine-tuning is a whole copy in each process anyway: DDP, not FSDP.
        self.shard_weights = False

    def encode(self, examples: list[dict[str, Any]]) -> list[Any]:
        pairs = [encode_preference_example(self.tokenizer, e, self.config.max_length) for e in examples]
        return [p for p in pairs if p.chosen.trained_tokens and p.rejected.trained_tokens]

    def example_length(self, example: Any) -> int:
        return len(example.chosen.input_ids) + len(example.rejected.input_ids)

    def _setup_speed(self) -> None:
        super()._setup_speed()
        self.decoder = None  # DPO needs every output token's log-probability: full logits
        self.reference = None
        if not hasattr(self.model, "disable_adapter"):  # full fine-tuning: a frozen copy is the reference
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def _reference_model(self) -> Iterator[Any]:
        if self.reference is not None:
            yield self.reference
        else:
            with self.model.disable_adapter():
                yield self.model

    def _pair_logprobs(self, model: Any, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        packed = pack_examples(examples, self.pad_id, one_row=self.matmul_attention, share_prefix=self.share_prefix)
        batch = {k: v.to(self.device) for k, v in packed.items()}
        inputs = packed_inputs(batch)
        with (
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16),
            training_sdpa_backends(self.device),
        ):
            logits = model(**inputs).logits
        logprobs = sequence_logprobs(logits, batch["labels"], batch["segment_ids"], len(examples))
        return logprobs[: len(pairs)], logprobs[len(pairs) :]

    def _pass_losses(self, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self._reference_model() as reference:
            reference_chosen, reference_rejected = self._pair_logprobs(reference, pairs)
        policy_chosen, policy_rejected = self._pair_logprobs(self.forward, pairs)
        return dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, self.config.beta)

    def _forward_sums(self, examples: list[PreferencePair]) -> LossSums:  # type: ignore[override]
        """Summed DPO loss of the pairs, how many the chosen output wins, and how many pairs."""
        losses, won = self._pass_losses(examples)
        return LossSums(loss_sum=losses.sum(), correct=int(won.sum()), tokens=len(examples))

    def loss_normalizer(self, indices: list[int]) -> int:
        """The mean DPO loss over the step's pairs, however the step is split into passes."""
        return len(indices)


def train_dpo(
    config: DPOConfig,
    train_examples: list[dict[str, Any]],
    valid_examples: list[dict[str, Any]] | None,
    reporter: Reporter,
    processes: SingleProcess | None = None,
) -> TrainResult:
    trainer = DPOTrainer(config, reporter, processes)
    trainer.setup(train_examples, valid_examples)
    return trainer.run()
