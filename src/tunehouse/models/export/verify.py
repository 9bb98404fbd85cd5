"""Exports checked, not assumed: logits against the served model, GGUF answers in llama.cpp.

The reference is always the model as tunehouse serves it (fp32 weights, adapter on top):
- `compare_logits`: an export loaded back (the merged weights, or the exported adapter on its base)
  gives the reference's logits on fixed chat prompts, within a tolerance for its dtype (a merge
  reorders floating-point sums; bf16 or f16 weights round);
- `check_gguf`: llama.cpp, through llama-cpp-python in a venv of its own, tokenizes the prompts as
  tunehouse does and continues them greedily with the same tokens. A divergence counts only where the
  reference's top two logits were further apart than the export's rounding can move them; closer
  than that the two are a tie, and which one wins is noise (reported, not hidden).
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

LOGIT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}
"""Largest |difference| in logits, as a fraction of the largest |logit| (at least 1)."""
TIE_MARGIN = {"f16": 0.05, "bf16": 0.25, "q8_0": 0.25}
"""A greedy step whose top two reference logits are closer than this may flip under the export's rounding."""
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
    """`exact`, `near-tie at token N (margin M)`, or `differs at token N (margin M)`."""


@dataclass
class GgufCheck:
    file: str
    status: str  # passed | failed | skipped
    reason: str = ""
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
def greedy(model: Any, ids: list[int], eos: int | None) -> tuple[list[int], list[float]]:
    """tunehouse's `temperature=0` answer: the generated ids and each step's top-two logit margin."""
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
        output_scores=True,
        return_dict_in_generate=True,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    tokens = out.sequences[0, len(ids) :].tolist()
    margins = [float(top[0] - top[1]) for top in (s[0].float().topk(2).values for s in out.scores)]
    return tokens, margins


def llamacpp_python() -> Path | None:
    """The interpreter with llama-cpp-python: configured, or the source checkout's `.venv-llamacpp`
    once `make llamacpp` has finished installing it."""
    configured = settings().llamacpp_python
    if configured is not None:
        return configured if configured.exists() else None
    venv = Path(__file__).resolve().parents[4] / ".venv-llamacpp"
    return venv / "bin" / "python" if (venv / ".installed").exists() else None


def _agreement(expected: list[int], actual: list[int], margins: list[float], tie: float) -> tuple[str, bool]:
    for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            kind = "near-tie" if margins[i] < tie else "differs"
            return f"{kind} at token {i} (margin {margins[i]:.3g})", kind == "near-tie"
    if len(expected) != len(actual):
        i = min(len(expected), len(actual))
        return f"differs at token {i} (one answer ended)", False
    return "exact", True


def check_gguf(
    gguf_path: Path,
    reference: Any,
    tokenizer: Any,
    quantization: str,
    *,
    lora_path: Path | None = None,
    label: str | None = None,
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
    prompts = prompt_ids(tokenizer)
    eos = tokenizer.eos_token_id
    expected = [greedy(reference, ids, eos) for _, ids in prompts]
    request = {
        "model": str(gguf_path),
        "lora": str(lora_path) if lora_path else None,
        "prompts": [{"text": text, "ids": ids} for text, ids in prompts],
        "max_tokens": MAX_NEW_TOKENS,
        "eos": eos,
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
    for (text, ids), (tokens, margins), got in zip(prompts, expected, answer["results"], strict=True):
        agrees, ok = _agreement(tokens, got["generated"], margins, TIE_MARGIN.get(quantization, 0.25))
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
