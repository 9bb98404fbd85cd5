"""lm-evaluation-harness scores a multiple-choice task through tunehouse's `/v1/completions` (its
`local-completions` backend: context + answer as token ids, `echo`, `logprobs`) exactly as its own
Hugging Face backend does on the same model folder: the same accuracy, the same pick on every
question, and per-answer log-likelihoods equal to float32 noise.

The task is `examples/lm_eval/` (read locally, nothing downloaded); `bench/lm_eval_agreement.py` runs
the same comparison on all of it and BENCHMARKS.md has its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.lm_eval_agreement import compare, through_server, with_hf

from tests.conftest import SHIPPED_ID, Server

# Every fifth question, and 38 to 40, where after one answer each the shipped model's likeliest next
# token is its end-of-turn token: lm-eval's `token_logprobs[ctxlen:-1]` needs that token listed too.
QUESTIONS = sorted({*range(0, 60, 5), 38, 39, 40})  # 60 answers scored by each backend
LOGLIKELIHOOD_TOLERANCE = 1e-3  # float32 sums of a few tokens' log-probabilities, computed two ways


@pytest.mark.slow
def test_lm_eval_through_tunehouse_agrees_with_its_own_hf_backend(server: Server, shipped_model_dir: Path) -> None:
    served = through_server(server.base_url, SHIPPED_ID, shipped_model_dir, QUESTIONS)
    hf = with_hf(shipped_model_dir, QUESTIONS)
    assert sorted(hf.loglikelihoods) == QUESTIONS
    agreement = compare(served, hf)
    assert agreement.different_picks == [] and agreement.accuracy_points == 0
    assert agreement.max_loglikelihood_gap < LOGLIKELIHOOD_TOLERANCE, agreement
    assert hf.accuracy > 0.5  # the model knows these answers: the scores are not all noise
