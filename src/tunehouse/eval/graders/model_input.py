"""What score_model and label_model share: their templated `input` messages, the call to the model,
and the reply with its token usage.

Messages are OpenAI's EvalItem: a `role` and a `content` that is a string, an `input_text` or
`output_text` part, or a list of them; each text may hold templates. The graders here are text
only: an image or audio part is refused when the grader is validated.
"""

from __future__ import annotations

from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.core import GradeFailed, ModelCaller, ModelReply, Sample
from tunehouse.eval.graders.fields import check_keys, optional_number, require_choice, require_object
from tunehouse.eval.graders.template import check_template, render

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")


def _check_part(part: Any, param: str) -> None:
    if isinstance(part, str):
        check_template(part, param)
        return
    part = require_object(part, param)
    kind = part.get("type")
    if kind not in TEXT_PARTS:
        raise InvalidRequest(
            f"{param}.type is {kind!r}: tunehouse's model graders take text only ({', '.join(TEXT_PARTS)}).",
            param=f"{param}.type",
        )
    if not isinstance(part.get("text"), str):
        raise InvalidRequest(f"{param}.text must be a string.", param=f"{param}.text")
    check_template(part["text"], f"{param}.text")


def validate_messages(grader: dict[str, Any], param: str) -> None:
    messages = grader.get("input")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(f"{param}.input must be a non-empty list of messages.", param=f"{param}.input")
    for index, message in enumerate(messages):
        where = f"{param}.input[{index}]"
        message = require_object(message, where)
        check_keys(message, where, required=("role", "content"), optional=("type",))
        require_choice(message, "role", where, ROLES)
        if message.get("type", "message") != "message":
            raise InvalidRequest(f"{where}.type must be 'message'.", param=f"{where}.type")
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        for number, part in enumerate(parts):
            _check_part(part, f"{where}.content[{number}]" if isinstance(content, list) else f"{where}.content")


def validate_sampling(grader: dict[str, Any], param: str) -> None:
    sampling = grader.get("sampling_params")
    if sampling is None:
        return
    where = f"{param}.sampling_params"
    sampling = require_object(sampling, where)
    check_keys(
        sampling,
        where,
        required=(),
        optional=("seed", "top_p", "temperature", "max_completions_tokens", "reasoning_effort"),
    )
    optional_number(sampling, "temperature", where, minimum=0, maximum=2)  # OpenAI's bounds
    optional_number(sampling, "top_p", where, minimum=0, maximum=1)
    for key in ("seed", "max_completions_tokens"):
        value = sampling.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequest(f"{where}.{key} must be an integer.", param=f"{where}.{key}")
    if sampling.get("max_completions_tokens") is not None and sampling["max_completions_tokens"] < 1:
        raise InvalidRequest(
            f"{where}.max_completions_tokens must be at least 1.", param=f"{where}.max_completions_tokens"
        )


def render_messages(grader: dict[str, Any], *, item: dict[str, Any], sample: Sample) -> list[dict[str, Any]]:
    """The grader's messages with their templates filled in, each content one string."""
    messages = []
    for message in grader["input"]:
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        texts = [render(part if isinstance(part, str) else part["text"], item=item, sample=sample) for part in parts]
        messages.append({"role": message["role"], "content": "\n".join(texts)})
    return messages


def ask(grader: dict[str, Any], call_model: ModelCaller, messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The model's reply and what to report of it (model, reply, usage); a model that cannot answer
    is the item's `model_grader_server_error`."""
    sampling = grader.get("sampling_params") or {}
    wanted = {
        "temperature": sampling.get("temperature"),
        "top_p": sampling.get("top_p"),
        "seed": sampling.get("seed"),
        "max_tokens": sampling.get("max_completions_tokens"),
    }
    try:
        reply = call_model(grader["model"], messages, {k: v for k, v in wanted.items() if v is not None})
    except Exception as error:  # any failure of the model or its endpoint is this item's error, not the server's
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        raise GradeFailed(
            f"The grader model {grader['model']!r} did not answer: {message}",
            "model_grader_server_error",
            {"model": grader["model"]},
        ) from error
    if not isinstance(reply, ModelReply):
        reply = ModelReply(text=str(reply))
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    return reply.text, {"model": grader["model"], "reply": reply.text, "usage": usage}
