"""What a request may add to the model's next-token scores, row by row, whatever engine draws the token.

A `TokenConstraint` (structured output: a JSON schema, a tool call) masks the tokens its grammar does
not allow and is told each token drawn; one is made per choice, since each choice walks the grammar on
its own. `adjust_logits` applies it with the request's logit bias and OpenAI's presence and frequency
penalties, so every engine scores a row the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

import torch


class TokenConstraint(Protocol):
    def mask(self, logits: torch.Tensor) -> None:
        """Set the scores of the tokens not allowed next to -inf, in place (`logits`: one row, [vocab])."""

    def accept(self, token_id: int) -> None:
        """Advance past the token just drawn."""

    def is_done(self) -> bool:
        """True once the grammar is complete: the generation ends there, as at an end-of-sequence token."""


ConstraintFactory = Callable[[], TokenConstraint]


def adjust_logits(
    logits: torch.Tensor,
    generated: list[int],
    *,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: dict[int, float] | None = None,
    constraint: TokenConstraint | None = None,
) -> None:
    """Apply one row's bias, penalties (over the tokens it generated so far) and constraint, in place.

    OpenAI's rule: score -= presence_penalty · [count > 0] + frequency_penalty · count.
    """
    if logit_bias:
        ids = torch.tensor(list(logit_bias), dtype=torch.long, device=logits.device)
        logits[ids] += torch.tensor(list(logit_bias.values()), dtype=logits.dtype, device=logits.device)
    if generated and (presence_penalty or frequency_penalty):
        counts = Counter(generated)
        ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)
        n = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
        logits[ids] -= presence_penalty + frequency_penalty * n
    if constraint is not None:
        constraint.mask(logits)
