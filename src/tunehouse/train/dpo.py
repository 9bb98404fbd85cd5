"""Direct preference optimization (DPO) recipe: the SFT recipe with a different step.

OpenAI's preference format — `input.messages`, one `preferred_output` and one `non_preferred_output`
(assistant messages) — becomes a pair of encoded examples that share the prompt and train only
their outputs. A step is: pairs → one packed forward of policy and one of the reference (the base
model: LoRA disabled, or a frozen copy for full fine-tuning) → summed log-probabilities of each
output → DPO loss `-log σ(β·((π_c − ref_c) − (π_r − ref_r)))` averaged over the step's pairs →
backward → clip → optimizer step. Only the pass's loss and what it is averaged over differ from
the SFT method; the recipe (`recipe.Trainer`: passes, processes, setup, schedule, checkpoints, exact
resume and metrics) is the same one, given `PreferenceMethod` instead of `SupervisedMethod`.
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
from tunehouse.train.config import SFTConfig
from tunehouse.train.distributed import SingleProcess
from tunehouse.train.loss import LossSums
from tunehouse.train.recipe import Trainer, TrainResult, train
from tunehouse.train.reporting import Reporter


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


class PreferenceMethod:
    """DPO's pass loss over preference pairs against a reference model; see the module's docstring."""

    full_logits = True  # every output token's log-probability
    shards_weights = False  # the frozen reference of full fine-tuning is a whole copy in each process

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.reference: Any = None

    def encode(self, tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> list[PreferencePair]:
        pairs = [encode_preference_example(tokenizer, e, max_length) for e in examples]
        return [p for p in pairs if p.chosen.trained_tokens and p.rejected.trained_tokens]

    def length(self, example: PreferencePair) -> int:
        return len(example.chosen.input_ids) + len(example.rejected.input_ids)

    def trained_tokens(self, example: PreferencePair) -> int:
        return example.trained_tokens

    def normalizer(self, examples: list[PreferencePair]) -> int:
        """The mean DPO loss over the step's pairs, however the step is split into passes."""
        return len(examples)

    def prepare(self, trainer: Trainer) -> None:
        if not hasattr(trainer.model, "disable_adapter"):  # full fine-tuning: a frozen copy is the reference
            self.reference = copy.deepcopy(trainer.model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def reference_model(self, trainer: Trainer) -> Iterator[Any]:
        """The model DPO measures the policy against: the base (adapter off) or the frozen copy."""
        if self.reference is not None:
            yield self.reference
        else:
            with trainer.model.disable_adapter():
                yield trainer.model

    def pair_logprobs(
        self, trainer: Trainer, model: Any, pairs: list[PreferencePair]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities of each pair's chosen and rejected outputs under `model`."""
        examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        result = trainer.forward_pass(model, examples, packed=True)
        assert result.segment_ids is not None  # packed
        logprobs = sequence_logprobs(result.output.logits, result.labels, result.segment_ids, len(examples))
        return logprobs[: len(pairs)], logprobs[len(pairs) :]

    def pair_losses(self, trainer: Trainer, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each pair's DPO loss and whether its chosen output wins."""
        with torch.no_grad(), self.reference_model(trainer) as reference:
            reference_chosen, reference_rejected = self.pair_logprobs(trainer, reference, pairs)
        policy_chosen, policy_rejected = self.pair_logprobs(trainer, trainer.forward, pairs)
        return dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, self.beta)

    def pass_sums(self, trainer: Trainer, examples: list[PreferencePair]) -> LossSums:
        """Summed DPO loss of the pairs, how many the chosen output wins, and how many pairs."""
        losses, won = self.pair_losses(trainer, examples)
        return LossSums(loss_sum=losses.sum(), correct=int(won.sum()), tokens=len(examples))


def dpo_trainer(config: DPOConfig, reporter: Reporter, processes: SingleProcess | None = None) -> Trainer:
    """A trainer of `config` by direct preference optimization."""
    return Trainer(config, PreferenceMethod(config.beta), reporter, processes)


def train_dpo(
    config: DPOConfig,
    train_examples: list[dict[str, Any]],
    valid_examples: list[dict[str, Any]] | None,
    reporter: Reporter,
    processes: SingleProcess | None = None,
) -> TrainResult:
    return train(config, PreferenceMethod(config.beta), train_examples, valid_examples, reporter, processes)
