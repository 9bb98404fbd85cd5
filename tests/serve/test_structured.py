"""Grammar constraints: what the engine may write under a JSON schema or a tool call grammar."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from tests.conftest import TINY_ID
from tunehouse.errors import InvalidRequest
from tunehouse.serve.engine import Engine, SamplingParams
from tunehouse.serve.structured import grammar_constraint, json_schema_grammar, lark_grammar
from tunehouse.serve.tools import Tool, call_grammar_lark

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": -5, "maximum": 5}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
LOOKUP = Tool("lookup", "Find a word.", {"type": "object", "properties": {"word": {"enum": ["a", "b"]}}})


def test_the_engine_writes_only_what_the_schema_allows(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    factory = grammar_constraint(handle.tokenizer, json_schema_grammar(SCHEMA, param="response_format"))
    for seed in range(3):
        params = SamplingParams(max_tokens=40, temperature=1.0, seed=seed, constraint=factory)
        result = engine.generate(handle, handle.encode("hello"), params)
        assert result.finish_reason == "stop"
        jsonschema.validate(json.loads(result.text), SCHEMA)


def test_ids_past_the_tokenizer_s_vocabulary_are_never_allowed() -> None:
    from transformers import AutoTokenizer

    from tests.conftest import CACHE, SHIPPED_FOLDER

    tokenizer = AutoTokenizer.from_pretrained(CACHE / "models" / SHIPPED_FOLDER)
    constraint = grammar_constraint(tokenizer, json_schema_grammar(SCHEMA, param="x"))()
    logits = torch.zeros(len(tokenizer) + 64)  # an embedding padded past the tokenizer
    constraint.mask(logits)
    allowed = torch.isfinite(logits).nonzero().flatten().tolist()
    assert allowed and max(allowed) < len(tokenizer)
    assert all(tokenizer.decode([i]).startswith("{") for i in allowed)


def test_a_schema_that_cannot_be_enforced_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        json_schema_grammar({"type": "string", "format": "no-such-format"}, param="response_format")
    assert caught.value.param == "response_format" and "no-such-format" in caught.value.message


def _allowed(grammar: str, text: str) -> bool:
    """Whether the grammar lets SmolLM2's tokens of `text` be written, one after the other."""
    from transformers import AutoTokenizer

    from tests.conftest import CACHE, SHIPPED_FOLDER

    tokenizer = AutoTokenizer.from_pretrained(CACHE / "models" / SHIPPED_FOLDER)
    constraint = grammar_constraint(tokenizer, grammar)()
    for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]:
        logits = torch.zeros(len(tokenizer))
        constraint.mask(logits)
        if not torch.isfinite(logits[token_id]):
            return False
        constraint.accept(token_id)
    return True


CALL = '<tool_call>\n{"name": "lookup", "arguments": {"word": "a"}}\n</tool_call>'


def test_a_forced_call_is_a_call_of_an_offered_tool_with_its_arguments() -> None:
    forced = lark_grammar(call_grammar_lark([LOOKUP, Tool("noop")]), param="tools")
    assert _allowed(forced, CALL)
    assert not _allowed(forced, "Sure! " + CALL)
    assert not _allowed(forced, CALL.replace('"a"', '"c"'))  # not in the parameter's enum
    assert not _allowed(forced, CALL.replace("lookup", "other"))
    either = lark_grammar(call_grammar_lark([LOOKUP], reply=SCHEMA), param="tools")
    assert _allowed(either, CALL) and _allowed(either, '{"ok": true, "n": 3}')


def test_with_tools_offered_any_text_goes_but_a_call_must_be_well_formed() -> None:
    auto = lark_grammar(call_grammar_lark([LOOKUP], free_text=True), param="tools")
    assert _allowed(auto, "Plain words, no call. {not json}")
    assert _allowed(auto, "Let me look. " + CALL + "\nDone.")
    assert not _allowed(auto, "Let me look. " + CALL.replace('"a"', '"zzz"'))
