"""Log-probabilities on the wire: the engine's token records in the legacy completions shape
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) and in the chat shape
(`content: [{token, logprob, bytes, top_logprobs}]`), as OpenAI's schemas describe them."""

from __future__ import annotations

import math

from pydantic import BaseModel

from tunehouse.serve.logprobs import TokenLogprob, TokenSpelling

UNLIKELY = -9999.0
"""OpenAI's stand-in for a log-probability too small to show; JSON has no -Infinity."""


def _wire(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else UNLIKELY


class CompletionLogprobs(BaseModel):
    """A legacy completion choice's tokens: each one's text, log-probability, the most likely tokens at
    its position (the token itself among them), and its offset in the choice's text. A prompt's first
    token (with `echo`) has no log-probability and no alternatives: null, as OpenAI sends."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


def completion_logprobs(spelling: TokenSpelling, *parts: tuple[list[TokenLogprob], int]) -> CompletionLogprobs:
    """The legacy shape of `parts`, each a run of records and the offset of its text in the choice's
    text (an echoed prompt at 0, then the completion after it)."""
    shaped = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for records, offset in parts:
        for record in records:
            shaped.tokens.append(spelling.text_of(record.token_id))
            shaped.text_offset.append(offset + record.span[0])
            if record.logprob is None:
                shaped.token_logprobs.append(None)
                shaped.top_logprobs.append(None)
                continue
            shaped.token_logprobs.append(_wire(record.logprob))
            top = {spelling.text_of(token_id): _wire(logprob) for token_id, logprob in record.top}
            top.setdefault(spelling.text_of(record.token_id), _wire(record.logprob))
            shaped.top_logprobs.append(top)
    return shaped


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """A chat choice's (or a stream chunk's) content tokens; tunehouse never refuses, so no refusal."""

    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


def _top(spelling: TokenSpelling, token_id: int, logprob: float) -> TopLogprob:
    return TopLogprob(token=spelling.text_of(token_id), logprob=_wire(logprob), bytes=list(spelling.bytes_of(token_id)))


def chat_logprobs(spelling: TokenSpelling, records: list[TokenLogprob]) -> ChatLogprobs:
    """The chat shape of a reply's records: its content's tokens, so not the end-of-turn token that the
    legacy shape lists (none of them is a prompt's first token, without a log-probability)."""
    content = []
    for record in records:
        if record.token_id in spelling.special_ids:
            continue
        token = _top(spelling, record.token_id, record.logprob if record.logprob is not None else -math.inf)
        alternatives = [_top(spelling, token_id, logprob) for token_id, logprob in record.top]
        content.append(ChatTokenLogprob(**token.model_dump(), top_logprobs=alternatives))
    return ChatLogprobs(content=content)
