"""The comparison: the model trained here answers the golden prompts, and the eval graders score its
answers against the source model's — `string_check` (exact match) and `text_similarity`
(`fuzzy_match`) — and both models' against the examples' own answers.

The new model answers in this process, through the serving engine and under the source's `ft:` id
(now an alias), exactly as `/v1/chat/completions` and `/v1/completions` would: no server or key is
needed, and it is the same catalog, template and weights the server answers with.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import fmean
from typing import Any

from tunehouse.eval.graders import ModelCaller, Sample, grade
from tunehouse.eval.sampler import EngineSampler

EXAMPLES = 3  # side-by-side answers kept in the report


def _grader(kind: str, reference: str) -> dict[str, Any]:
    if kind == "string_check":
        return {
            "type": "string_check",
            "name": "exact match",
            "input": "{{sample.output_text}}",
            "reference": f"{{{{item.{reference}}}}}",
            "operation": "eq",
        }
    return {
        "type": "text_similarity",
        "name": "similarity",
        "input": "{{sample.output_text}}",
        "reference": f"{{{{item.{reference}}}}}",
        "evaluation_metric": "fuzzy_match",
    }


def _score(kind: str, item: dict[str, Any], answer: str, reference: str, call_model: ModelCaller) -> float:
    return grade(_grader(kind, reference), item=item, sample=Sample.from_text(answer), call_model=call_model).score


def compare_answers(
    golden: dict[str, Any],
    model: str,
    sampler: EngineSampler,
    call_model: ModelCaller,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Answer each golden prompt with `model` here and score it; the comparison as the migration stores it."""
    sampling = {"temperature": 0.0, "top_p": 1.0, "max_completion_tokens": golden["max_tokens"], "seed": 0}
    items = []
    for index, item in enumerate(golden["items"]):
        answer = sampler(model, item["input"], sampling).text
        items.append(
            {
                **item,
                "new": answer,
                "exact": _score("string_check", item, answer, "source", call_model) == 1.0,
                "similarity": _score("text_similarity", item, answer, "source", call_model),
                "source_vs_expected": _score("text_similarity", item, item["source"], "expected", call_model),
                "new_vs_expected": _score("text_similarity", item, answer, "expected", call_model),
            }
        )
        progress(index + 1, len(golden["items"]))
    return summarize(model, items)


def summarize(model: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the report: rates and means over the golden set, and a few examples (differing first)."""
    shown = sorted(items, key=lambda item: item["exact"])[:EXAMPLES]
    return {
        "model": model,
        "n": len(items),
        "exact_match_rate": fmean(item["exact"] for item in items) if items else None,
        "mean_similarity": fmean(item["similarity"] for item in items) if items else None,
        "source_vs_expected": fmean(item["source_vs_expected"] for item in items) if items else None,
        "new_vs_expected": fmean(item["new_vs_expected"] for item in items) if items else None,
        "examples": shown,
        "items": items,
    }
