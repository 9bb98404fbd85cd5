"""Structured output: the tokens a reply may take, held to a grammar by llguidance.

A request's JSON schema (`response_format`), any JSON object (`json_object`) or a forced tool call is
compiled once, when the request is prepared, so a schema llguidance cannot enforce is refused with a
400 naming the field before any generation. Each choice then walks its own `GrammarConstraint`,
the engine's `TokenConstraint`: before each token the scores of every token the grammar does not
allow are set to -inf, and once the grammar is complete (or the end-of-sequence token it allowed was
drawn) the generation ends. So a reply that ends by itself always parses and matches its schema;
one cut short by `max_tokens` (`finish_reason: "length"`) may not, as with OpenAI.

llguidance computes a token mask in tens of microseconds on the CPU, from the tokenizer's own
vocabulary (a fast Hugging Face tokenizer), and takes JSON schemas and Lark grammars; it needs no
compiler and no GPU.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import numpy as np
import torch

from tunehouse.errors import InvalidRequest
from tunehouse.serve.constraint import ConstraintFactory

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

log = logging.getLogger(__name__)

JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How the JSON is spaced: as `json.dumps` writes it, one way only, so a model cannot pad it with
whitespace forever."""

ANY_OBJECT: dict[str, Any] = {"type": "object"}
NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


@lru_cache(maxsize=8)
def _grammar_tokenizer(tokenizer: Any) -> llguidance.LLTokenizer:
    """llguidance's view of a Hugging Face tokenizer (about a second to build: cached per tokenizer)."""
    return llguidance.hf.from_tokenizer(tokenizer, eos_token=tokenizer.eos_token_id)


def json_schema_grammar(schema: dict[str, Any], *, param: str) -> str:
    """A grammar for JSON matching `schema`; InvalidRequest naming `param` where it cannot be enforced."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"Invalid '{param}': {exc}", param=param) from None
    return checked(grammar, param=param)


def lark_grammar(lark: str, *, param: str) -> str:
    """A grammar from Lark text (llguidance's dialect: `%json {…}` embeds a JSON schema)."""
    return checked(llguidance.LLMatcher.grammar_from_lark(lark), param=param)


def checked(grammar: str, *, param: str) -> str:
    """`grammar` if llguidance can enforce it; else InvalidRequest naming `param` and the reason."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        reason = messages[0] if messages else "it cannot be compiled"
        raise InvalidRequest(f"Invalid '{param}': tunehouse cannot enforce it: {reason}", param=param)
    return grammar


class GrammarConstraint:
    """One choice's walk through a grammar (the engine's TokenConstraint)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        self.vocab_size = tokenizer.vocab_size
        self.eos = tokenizer.eos_token

    def mask(self, logits: torch.Tensor) -> None:
        """Only the tokens the grammar allows next keep their scores (the logits row may be wider than
        the tokenizer's vocabulary: ids past it are never allowed)."""
        if self.matcher.is_error():  # nothing valid can follow: end the reply
            refused = np.ones(logits.shape[0], dtype=bool)
            refused[self.eos] = False
        else:
            bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            refused = np.unpackbits(bits, bitorder="little") == 0
        width = min(logits.shape[0], self.vocab_size, refused.shape[0])
        logits[width:] = float("-inf")
        if logits.device.type == "cpu" and logits.dtype in NUMPY_FLOATS:
            np.putmask(logits[:width].numpy(), refused[:width], -np.inf)  # a tenth of torch's time on a busy CPU
        else:
            logits[:width].masked_fill_(torch.from_numpy(refused[:width]).to(logits.device), float("-inf"))

    def accept(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            log.warning("structured output: token %d broke the grammar: %s", token_id, self.matcher.get_error())

    def is_done(self) -> bool:
        return self.matcher.is_stopped()


def grammar_constraint(tokenizer: Any, grammar: str) -> ConstraintFactory:
    """The factory a request's SamplingParams carry: a fresh GrammarConstraint per choice."""
    grammar_tokenizer = _grammar_tokenizer(tokenizer)
    return lambda: GrammarConstraint(grammar_tokenizer, grammar)
