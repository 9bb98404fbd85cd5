"""A request's logit bias, penalties and token constraint, as the engine applies them."""

from __future__ import annotations

import torch

from tests.conftest import TINY_ID
from tunehouse.serve.constraint import adjust_logits
from tunehouse.serve.engine import Engine, SamplingParams


def test_penalties_follow_openai_s_rule_and_bias_adds() -> None:
    logits = torch.zeros(6)
    adjust_logits(logits, [1, 1, 2], presence_penalty=0.5, frequency_penalty=0.25, logit_bias={4: 3.0})
    assert logits.tolist() == [0.0, -1.0, -0.75, 0.0, 3.0, 0.0]


class Sequence:
    """Allows exactly `ids`, one after the other, then is done."""

    def __init__(self, ids: list[int]) -> None:
        self.ids, self.seen = ids, 0
        self.accepted: list[int] = []

    def mask(self, logits: torch.Tensor) -> None:
        keep = logits[self.ids[self.seen]].clone()
        logits.fill_(float("-inf"))
        logits[self.ids[self.seen]] = keep

    def accept(self, token_id: int) -> None:
        self.accepted.append(token_id)
        self.seen += 1

    def is_done(self) -> bool:
        return self.seen == len(self.ids)


def test_a_constraint_chooses_every_token_and_ends_the_generation(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    made: list[Sequence] = []
    wanted = [5, 9, 7]

    def factory() -> Sequence:
        made.append(Sequence(wanted))
        return made[-1]

    params = SamplingParams(max_tokens=10, temperature=1.0, seed=1, constraint=factory)
    result = engine.generate(handle, handle.encode("hello"), params)
    assert result.completion_tokens == 3 and result.finish_reason == "stop"
    assert len(made) == 1 and made[0].accepted == wanted


def test_a_large_logit_bias_forces_its_token(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    params = SamplingParams(max_tokens=4, temperature=0.0, logit_bias={11: 100.0}, logprobs=0)
    result = engine.generate(handle, handle.encode("hello"), params)
    assert [r.token_id for r in result.logprobs or []] == [11] * 4
