"""Structured replies through the openai SDK: `response_format` JSON that always matches its schema,
tool calls that round-trip through the SDK's types (streamed too), and a 400 for what tunehouse
does not honour. The tiny model's weights are random, so only the grammar keeps its replies valid."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.conftest import SHIPPED_ID, TINY_ID

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "member": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3},
    },
    "required": ["name", "age", "member", "tags"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now."}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_json_schema_replies_always_match_their_schema(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY_ID,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        n=4,
        temperature=1.0,
        max_tokens=200,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop"  # the grammar ended it, not the token limit
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_json_object_gives_an_object(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=SHIPPED_ID,
        messages=[{"role": "user", "content": 'What is the capital of France? Answer as {"capital": ...}'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=60,
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_the_shipped_model_fills_a_schema(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 30}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=SHIPPED_ID,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        temperature=0,
        max_tokens=30,
    )
    answer = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(answer, schema)
    assert "Paris" in answer["capital"]


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"dependentSchemas": {"a": {}}}}},
            "response_format",
        ),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name"),
        ({"type": "yaml"}, "response_format.type"),
    ],
)
def test_a_format_tunehouse_cannot_enforce_is_refused(client: OpenAI, response_format: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY_ID, messages=ASK, response_format=response_format, max_tokens=4)
    assert caught.value.body["param"] == param  # type: ignore[index]


def _arguments(call: Any, tool: dict[str, Any]) -> dict[str, Any]:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, tool["function"].get("parameters", {}))
    return arguments


def test_a_required_tool_call_round_trips_through_the_sdk(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY_ID, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=80
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
    tool = {"get_weather": WEATHER, "get_time": CLOCK}[calls[0].function.name]
    _arguments(calls[0], tool)

    history = [*ASK, choice.message.model_dump(exclude_none=True)]
    history.append({"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature": 21}'})
    follow_up = client.chat.completions.create(model=TINY_ID, messages=history, tools=[WEATHER, CLOCK], max_tokens=8)
    assert follow_up.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert follow_up.usage.prompt_tokens > reply.usage.prompt_tokens  # the call and its result were rendered


def test_a_named_function_is_the_one_called(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY_ID,
        messages=ASK,
        tools=[CLOCK, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=1.0,
        max_tokens=80,
    )
    call = (reply.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"
    assert set(_arguments(call, WEATHER)) == {"city", "unit"}


def test_a_streamed_tool_call_comes_as_openai_streams_it(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=TINY_ID,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=80,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    first, rest = pieces[0], pieces[1:]
    assert first.index == 0 and first.id and first.id.startswith("call_") and first.type == "function"
    assert first.function and first.function.name == "get_weather"
    assert all(p.index == 0 and p.id is None for p in rest)
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens > 0


def test_legacy_functions_answer_with_function_call(client: OpenAI) -> None:
    reply = client.chat.completions.create(  # type: ignore[call-overload]
        model=TINY_ID,
        messages=ASK,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
        max_tokens=80,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call" and not choice.message.tool_calls
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER["function"]["parameters"])


def test_tool_choice_none_offers_no_tools(client: OpenAI) -> None:
    offered = client.chat.completions.create(model=TINY_ID, messages=ASK, tools=[WEATHER], max_tokens=1)
    withheld = client.chat.completions.create(
        model=TINY_ID, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=1
    )
    plain = client.chat.completions.create(model=TINY_ID, messages=ASK, max_tokens=1)
    assert withheld.usage.prompt_tokens == plain.usage.prompt_tokens < offered.usage.prompt_tokens


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools given
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": "get_weather"}}, "tool_choice"),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
        (
            {"tools": [CLOCK, {"type": "function", "function": {"name": "f", "parameters": {"type": "strnig"}}}]},
            "tools[1].function.parameters",
        ),
    ],
)
def test_bad_tools_are_refused_naming_the_field(client: OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY_ID, messages=ASK, max_tokens=4, extra_body=extra)
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_a_malformed_tool_call_in_the_history_is_refused(client: OpenAI) -> None:
    history = [*ASK, {"role": "assistant", "tool_calls": [{"id": "call_1", "function": "get_weather"}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY_ID, messages=history, max_tokens=4)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "messages[1].tool_calls"  # type: ignore[index]


def test_legacy_functions_stream_a_function_call_for_each_choice(client: OpenAI) -> None:
    stream = client.chat.completions.create(  # type: ignore[call-overload]
        model=TINY_ID,
        messages=ASK,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
        n=2,
        max_tokens=80,
        stream=True,
    )
    arguments: dict[int, str] = {0: "", 1: ""}
    names: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            call = choice.delta.function_call
            if call is not None:
                names.setdefault(choice.index, call.name or "")
                arguments[choice.index] += call.arguments or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert names == {0: "get_weather", 1: "get_weather"} and finish == {0: "function_call", 1: "function_call"}
    for text in arguments.values():
        jsonschema.validate(json.loads(text), WEATHER["function"]["parameters"])
