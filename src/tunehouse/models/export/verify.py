"""Exports checked, not assumed: logits against the served model, GGUF answers in llama.cpp.

The reference is always the model as tunehouse serves it (fp32 weights, adapter on top):
- `compare_logits`: an export loaded back (the merged weights, or the exported adapter on its base)
  gives the reference's logits on fixed chat prompts, within a tolerance for its dtype (a merge
  reorders floating-point sums; bf16 or f16 weights round);
- `check_gguf`: llama.cpp, through llama-cpp-python in a venv of its own, tokenizes the prompts as
  tunehouse does and continues them greedily from the same tokens. How far its logits stray from
  tunehouse's is measured on the prompts (the same inputs for both); a greedy step where the two
  pick different tokens counts as a difference unless the reference's margin between those two
  tokens is within twice that — a tie at the export's precision, reported as such, not hidden.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunehouse.config import settings
from tunehouse.models.template import render_chat_prompt

PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]
MAX_NEW_TOKENS = 24
PROMPT_TOP_TOKENS = 8

LOGIT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}
"""Largest |difference| in logits, as a fraction of the largest |logit| (at least 1)."""
LLAMACPP_TIMEOUT_S = 600
SCRIPT = Path(__file__).with_name("llamacpp_greedy.py")


@dataclass
class LogitsCheck:
    compared: str
    max_abs_diff: float
    tolerance: float
    prompts: int
    passed: bool


@dataclass
class PromptAnswer:
    prompt: str
    tunehouse: str
    llamacpp: str
    tokenization_matches: bool
    agrees: str
    """`exact`, `tie at token N (…)`, or `differs at token N (…)`."""


@dataclass
class GgufCheck:
    file: str
    status: str  # passed | failed | skipped
    reason: str = ""
    max_logit_diff: float | None = None
    """Largest |llama.cpp − tunehouse| logit over the prompts' positions (llama.cpp's top tokens)."""
    answers: list[PromptAnswer] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_ids(tokenizer: Any) -> list[tuple[str, list[int]]]:
    """The fixed prompts as tunehouse's chat serving renders and encodes them."""
    rendered = [render_chat_prompt(tokenizer, messages) for messages in PROMPTS]
    return [(text, tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered]


@torch.no_grad()
def compare_logits(
    reference: Any, candidate: Any, prompts: list[tuple[str, list[int]]], dtype: torch.dtype, compared: str
) -> LogitsCheck:
    """The largest logit difference between `candidate` and `reference` over every prompt position."""
    worst, scale = 0.0, 1.0
    for _, ids in prompts:
        input_ids = torch.tensor([ids])
        expected = reference(input_ids=input_ids).logits.float()
        actual = candidate(input_ids=input_ids).logits.float()
        worst = max(worst, float((expected - actual).abs().max()))
        scale = max(scale, float(expected.abs().max()))
    tolerance = LOGIT_TOLERANCE.get(dtype, 5e-2) * scale
    return LogitsCheck(compared, worst, tolerance, len(prompts), worst <= tolerance)


@torch.no_grad()
def greedy(model: Any, ids: list[int], eos: int | None) -> tuple[list[int], list[torch.Tensor]]:
    """tunehouse's `temperature=0` answer: the generated ids and each step's logits."""
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
        output_logits=True,
        return_dict_in_generate=True,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return out.sequences[0, len(ids) :].tolist(), [step[0].float() for step in out.logits]


def prompt_logit_diff(logits: torch.Tensor, top: list[list[list[float]]]) -> float:
    """The largest |llama.cpp − tunehouse| logit over `top`, llama.cpp's best (token, logit) pairs at
    each prompt position; `logits` are tunehouse's for the same positions."""
    return max(
        (
            abs(value - float(logits[position, int(token)]))
            for position, pairs in enumerate(top)
            for token, value in pairs
        ),
        default=0.0,
    )


def llamacpp_python() -> Path | None:
    """The interpreter with llama-cpp-python: configured, or the source checkout's `.venv-llamacpp`
    once `make llamacpp` has finished installing it."""
    configured = settings().llamacpp_python
    if configured is not None:
        return configured if configured.exists() else None
    venv = Path(__file__).resolve().parents[4] / ".venv-llamacpp"
    return venv / "bin" / "python" if (venv / ".installed").exists() else None


def _agreement(expected: list[int], actual: list[int], steps: list[torch.Tensor], noise: float) -> tuple[str, bool]:
    """Whether llama.cpp's greedy tokens are tunehouse's, up to a tie within `noise`."""
    for i, (ours, theirs) in enumerate(zip(expected, actual, strict=False)):
        if ours != theirs:
            margin = float(steps[i][ours] - steps[i][theirs])
            kind = "tie" if margin <= 2 * noise else "differs"
            return (
                f"{kind} at token {i} (tunehouse's margin {margin:.3g}, runtimes differ by {noise:.3g})",
                kind == "tie",
            )
    if len(expected) != len(actual):
        return f"differs at token {min(len(expected), len(actual))} (one answer ended)", False
    return "exact", True


@dataclass
class TunehouseAnswers:
    """The reference's greedy answers to the fixed prompts, computed once for every GGUF checked."""

    tokenizer: Any
    prompts: list[tuple[str, list[int]]]
    prompt_logits: list[torch.Tensor]
    answers: list[tuple[list[int], list[torch.Tensor]]]


@torch.no_grad()
def tunehouse_answers(reference: Any, tokenizer: Any) -> TunehouseAnswers:
    prompts = prompt_ids(tokenizer)
    logits = [reference(input_ids=torch.tensor([ids])).logits[0].float() for _, ids in prompts]
    answers = [greedy(reference, ids, tokenizer.eos_token_id) for _, ids in prompts]
    return TunehouseAnswers(tokenizer, prompts, logits, answers)


def check_gguf(
    gguf_path: Path, expected: TunehouseAnswers, *, lora_path: Path | None = None, label: str | None = None
) -> GgufCheck:
    """Load the GGUF (with `lora_path` on top) in llama.cpp and compare its greedy answers to tunehouse's."""
    name = label or gguf_path.name
    python = llamacpp_python()
    if python is None:
        return GgufCheck(
            name,
            "skipped",
            "llama-cpp-python is not installed: run `make llamacpp` in the tunehouse checkout, "
            "or set TUNEHOUSE_LLAMACPP_PYTHON to a Python that has it",
        )
    tokenizer, prompts = expected.tokenizer, expected.prompts
    request = {
        "model": str(gguf_path),
        "lora": str(lora_path) if lora_path else None,
        "prompts": [{"text": text, "ids": ids} for text, ids in prompts],
        "max_tokens": MAX_NEW_TOKENS,
        "eos": tokenizer.eos_token_id,
        "top": PROMPT_TOP_TOKENS,
        "n_ctx": max(len(ids) for _, ids in prompts) + MAX_NEW_TOKENS + 8,
        "threads": max(1, torch.get_num_threads()),
    }
    run = subprocess.run(
        [str(python), str(SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=LLAMACPP_TIMEOUT_S,
    )
    if run.returncode != 0:
        return GgufCheck(name, "failed", f"llama.cpp could not load or run it: {run.stderr.strip()[-2000:]}")
    answer = json.loads(run.stdout)
    check = GgufCheck(name, "passed")
    if lora_path is None and answer["chat_template"] != tokenizer.chat_template:
        check.status, check.reason = "failed", "tokenizer.chat_template in the GGUF is not the model's chat template"
    noise = max(
        prompt_logit_diff(logits, got["prompt_top"])
        for logits, got in zip(expected.prompt_logits, answer["results"], strict=True)
    )
    check.max_logit_diff = noise
    for (text, ids), (tokens, steps), got in zip(prompts, expected.answers, answer["results"], strict=True):
        agrees, ok = _agreement(tokens, got["generated"], steps, noise)
        matches = got["tokens"] == ids
        check.answers.append(
            PromptAnswer(
                prompt=text,
                tunehouse=tokenizer.decode(tokens, skip_special_tokens=True),
                llamacpp=got["text"],
                tokenization_matches=matches,
                agrees=agrees,
            )
        )
        if not (ok and matches):
            check.status = "failed"
    if check.status == "failed" and not check.reason:
        check.reason = "llama.cpp's tokens or greedy answers differ from tunehouse's (see answers)"
    return check
