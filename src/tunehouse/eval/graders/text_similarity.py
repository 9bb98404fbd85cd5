"""`text_similarity`: how close the rendered `input` is to the rendered `reference`, from 0 to 1.

Each metric is computed by the library its field keeps: `fuzzy_match` rapidfuzz's `fuzz.ratio`
(normalised Indel similarity), `bleu` sacrebleu's sentence BLEU, `gleu` NLTK's sentence GLEU (on
whitespace tokens), `rouge_1`..`rouge_5` and `rouge_l` rouge-score's F-measure, `meteor` NLTK's
METEOR when the WordNet corpus is installed (it is a download, which tunehouse never makes on its
own), `cosine` the cosine of two embeddings from the endpoint TUNEHOUSE_GRADER_BASE_URL serves
TUNEHOUSE_GRADER_EMBEDDING_MODEL on, when both are configured. A metric that cannot run here is
refused when the grader is validated, saying why.
"""

from __future__ import annotations

from typing import Any

from tunehouse.config import settings
from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.core import GradeFailed, GradeResult, Sample
from tunehouse.eval.graders.fields import check_keys, require_choice, require_str
from tunehouse.eval.graders.template import check_template, render

ROUGE = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", *ROUGE)


def _wordnet_installed() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


def validate(grader: dict[str, Any], param: str) -> dict[str, Any]:
    check_keys(grader, param, required=("type", "name", "input", "reference", "evaluation_metric"))
    require_str(grader, "name", param)
    for key in ("input", "reference"):
        check_template(require_str(grader, key, param), f"{param}.{key}")
    metric = require_choice(grader, "evaluation_metric", param, METRICS)
    if metric == "meteor" and not _wordnet_installed():
        raise InvalidRequest(
            f"{param}.evaluation_metric 'meteor' needs NLTK's WordNet corpus, which is not installed on this "
            "server (tunehouse downloads nothing at run time). Install it with `python -m nltk.downloader "
            f"wordnet`, or use one of {', '.join(m for m in METRICS if m != 'meteor')}.",
            param=f"{param}.evaluation_metric",
        )
    if metric == "cosine":
        config = settings()
        if not (config.grader_base_url and config.grader_embedding_model):
            raise InvalidRequest(
                f"{param}.evaluation_metric 'cosine' needs an embedding model, and none is configured: set "
                "TUNEHOUSE_GRADER_BASE_URL to an OpenAI-compatible endpoint and TUNEHOUSE_GRADER_EMBEDDING_MODEL "
                "to a model it embeds with.",
                param=f"{param}.evaluation_metric",
            )
    return dict(grader)


def similarity(metric: str, text: str, reference: str) -> float:
    """`text` against `reference` by `metric` (any of METRICS but cosine), from 0 to 1."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.ratio(text, reference)) / 100
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([reference.split()], text.split()))
    if metric == "meteor":
        from nltk.translate.meteor_score import single_meteor_score

        return float(single_meteor_score(reference.split(), text.split()))
    from rouge_score.rouge_scorer import RougeScorer

    key = ROUGE[metric]
    return float(RougeScorer([key]).score(reference, text)[key].fmeasure)


def cosine(text: str, reference: str) -> float:
    """The cosine of the two texts' embeddings from the configured endpoint."""
    import numpy as np
    from openai import OpenAI, OpenAIError

    config = settings()
    client = OpenAI(base_url=config.grader_base_url, api_key=config.grader_api_key or "none", max_retries=1)
    try:
        response = client.embeddings.create(
            model=str(config.grader_embedding_model), input=[text, reference], encoding_format="float"
        )
    except OpenAIError as error:
        raise GradeFailed(f"The embedding endpoint failed: {error}", "other_error") from error
    a, b = (np.asarray(entry.embedding, dtype=np.float64) for entry in response.data)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norms if norms else 0.0


def grade(grader: dict[str, Any], *, item: dict[str, Any], sample: Sample, pass_threshold: float | None) -> GradeResult:
    text = render(grader["input"], item=item, sample=sample)
    reference = render(grader["reference"], item=item, sample=sample)
    metric = grader["evaluation_metric"]
    score = cosine(text, reference) if metric == "cosine" else similarity(metric, text, reference)
    threshold = 1.0 if pass_threshold is None else pass_threshold
    return GradeResult(score=score, passed=score >= threshold, details={"input": text, "reference": reference})
