"""Drawing one row's next token: its own bias, penalties and constraint, temperature, top-p and seed.

Each choice has its own `torch.Generator`, seeded from the request's `seed` (choice i from seed + i),
so a seeded request draws the same tokens whatever else shares its batch. Temperature and top-p
follow transformers' warpers, so a row draws as `generate` would.
"""

from __future__ import annotations

import torch

from tunehouse.serve.constraint import ConstraintFactory, TokenConstraint, adjust_logits


class BrokenLogits(Exception):
    """The model's logits hold NaN or +inf: no token can be drawn from them."""


class RowSampler:
    def __init__(
        self,
        *,
        temperature: float,
        top_p: float,
        seed: int | None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: dict[int, float] | None = None,
        constraint: ConstraintFactory | None = None,
    ) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.logit_bias = logit_bias or {}
        self.constraint: TokenConstraint | None = constraint() if constraint is not None else None
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.generated: list[int] = []

    @property
    def done(self) -> bool:
        """True once the constraint's grammar is complete."""
        return self.constraint is not None and self.constraint.is_done()

    def draw(self, logits: torch.Tensor, checked: tuple[bool, int]) -> int:
        """The next token from this row's float32 logits `[vocab]` (changed in place); the constraint is told.
        `checked`, computed by the step for all its rows at once: whether these logits are broken (NaN
        or +inf), and their argmax."""
        broken, argmax = checked
        if broken:
            raise BrokenLogits
        adjusts = bool(self.logit_bias or self.presence_penalty or self.frequency_penalty or self.constraint)
        if self.temperature <= 0 and not adjusts:
            self.generated.append(argmax)
            return argmax
        if adjusts:
            adjust_logits(
                logits,
                self.generated,
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                logit_bias=self.logit_bias,
                constraint=self.constraint,
            )
        token = int(logits.argmax()) if self.temperature <= 0 else self._sample(logits / self.temperature)
        if self.constraint is not None:
            self.constraint.accept(token)
        self.generated.append(token)
        return token

    def _sample(self, scores: torch.Tensor) -> int:
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores)
            remove = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_p
            remove[-1] = False
            scores = scores.scatter(0, order, ordered.masked_fill(remove, -float("inf")))
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
