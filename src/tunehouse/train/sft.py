"""Supervised fine-tuning: the method that trains assistant (or completion) tokens by cross-entropy.

A pass's loss is the masked cross-entropy summed over its trained tokens, and a step divides it by the
step's trained tokens (a token-weighted mean), so splitting a step into passes or processes changes
no gradient (PITFALLS 4). The chunked loss (loss.py) computes it from the decoder's hidden states
without holding vocabulary-wide logits.
"""

from __future__ import annotations

from typing import Any

import torch

from tunehouse.models.template import EncodedExample, encode_example
from tunehouse.train.config import SFTConfig
from tunehouse.train.distributed import SingleProcess
from tunehouse.train.loss import LossSums, chunked_lm_loss_sum, masked_lm_loss_sum
from tunehouse.train.recipe import Trainer, TrainResult, train
from tunehouse.train.reporting import Reporter


def encode_all(tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> list[EncodedExample]:
    """The examples tokenized with their loss masks, without those that train no token."""
    encoded = [encode_example(tokenizer, example, max_length) for example in examples]
    return [e for e in encoded if e.trained_tokens > 0]


class SupervisedMethod:
    """Cross-entropy on the trained tokens; see the module's docstring."""

    full_logits = False
    shards_weights = True

    def encode(self, tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> list[EncodedExample]:
        return encode_all(tokenizer, examples, max_length)

    def length(self, example: EncodedExample) -> int:
        return len(example.input_ids)

    def trained_tokens(self, example: EncodedExample) -> int:
        return example.trained_tokens

    def normalizer(self, examples: list[EncodedExample]) -> int:
        return sum(e.trained_tokens for e in examples)

    def prepare(self, trainer: Trainer) -> None:
        pass

    def pass_sums(self, trainer: Trainer, examples: list[EncodedExample]) -> LossSums:
        result = trainer.forward_pass(trainer.forward, examples, packed=trainer.config.packing)
        if trainer.decoder is not None and trainer.head_weight is not None:  # set together
            sums = chunked_lm_loss_sum(
                result.output.last_hidden_state,
                result.labels,
                trainer.head_weight,
                torch.bfloat16 if trainer.use_bf16 else torch.float32,
                buffers=trainer.chunk_buffers,
            )
        else:
            sums = masked_lm_loss_sum(result.output.logits, result.labels)
        sums.computed_tokens = result.computed_tokens
        return sums


def sft_trainer(config: SFTConfig, reporter: Reporter, processes: SingleProcess | None = None) -> Trainer:
    """A trainer of `config` by supervised fine-tuning."""
    return Trainer(config, SupervisedMethod(), reporter, processes)


def train_sft(
    config: SFTConfig,
    train_examples: list[dict[str, Any]],
    valid_examples: list[dict[str, Any]] | None,
    reporter: Reporter,
    processes: SingleProcess | None = None,
) -> TrainResult:
    return train(config, SupervisedMethod(), train_examples, valid_examples, reporter, processes)
