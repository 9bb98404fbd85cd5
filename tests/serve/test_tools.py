"""Tools in the prompt and tool calls read out of a reply as it streams."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CACHE, SHIPPED_FOLDER
from tunehouse.serve.tools import CallReader, Tool, ToolCall, hermes_messages, render_prompt, split_reply

LOOKUP = Tool("lookup", "Find a word.", {"type": "object", "properties": {"word": {"enum": ["a", "b"]}}})
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Look up a."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"word": "a"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "found"},
]
# Qwen2.5's way of rendering tools, shortened: a template that takes `tools` renders them itself
TOOL_TEMPLATE = """{%- if tools %}<|im_start|>system
{{ messages[0].content }}

# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and tools %}
{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(CACHE / "models" / SHIPPED_FOLDER)


def test_a_template_that_takes_tools_renders_them_itself(tokenizer) -> None:  # type: ignore[no-untyped-def]
    tokenizer.chat_template, plain = TOOL_TEMPLATE, tokenizer.chat_template
    try:
        prompt = render_prompt(tokenizer, HISTORY, [LOOKUP])
    finally:
        tokenizer.chat_template = plain
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>")
    assert json.dumps(LOOKUP.to_openai()["function"]["parameters"]) in prompt
    assert (
        '<tool_call>\n{"name": "lookup", "arguments": {"word": "a"}}\n</tool_call>' in prompt
    )  # arguments as an object
    assert prompt.endswith("<tool_response>\nfound\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_a_template_without_tools_gets_the_hermes_convention(tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = render_prompt(tokenizer, HISTORY, [LOOKUP])
    assert "<tools>\n" + json.dumps(LOOKUP.to_openai(), ensure_ascii=False) + "\n</tools>" in prompt
    assert prompt.endswith(
        "<|im_start|>user\n<tool_response>\nfound\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_calls_are_read_as_the_reply_streams_in() -> None:
    reply = 'Let me look. <tool_call>\n{"name": "lookup", "arguments": {"word": "a"}}\n</tool_call>'
    reader = CallReader([LOOKUP])
    parts = [part for char in reply for part in reader.feed(char)] + reader.finish()
    assert "".join(p for p in parts if isinstance(p, str)) == "Let me look. "
    assert [p for p in parts if isinstance(p, ToolCall)] == [ToolCall("lookup", '{"word": "a"}')]
    assert split_reply(reply, [LOOKUP]) == ("Let me look.", [ToolCall("lookup", '{"word": "a"}')])


def test_a_call_to_an_unknown_tool_or_unparsable_stays_content() -> None:
    for reply in ('<tool_call>{"name": "other", "arguments": {}}</tool_call>', "<tool_call>{oops</tool_call>"):
        assert split_reply(reply, [LOOKUP]) == (reply, [])
    assert split_reply("a < b <tool", [LOOKUP]) == ("a < b <tool", [])


def test_calls_and_results_render_in_the_hermes_convention() -> None:
    rendered = hermes_messages(HISTORY, [LOOKUP])
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert rendered[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "lookup"' in rendered[0]["content"]
    assert rendered[2]["content"] == '<tool_call>\n{"name": "lookup", "arguments": {"word": "a"}}\n</tool_call>'
    assert rendered[3]["content"] == "<tool_response>\nfound\n</tool_response>"


def test_a_tool_result_after_a_user_message_of_content_parts_follows_it() -> None:
    parts = [{"type": "text", "text": "look"}]
    messages = [{"role": "user", "content": parts}, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    out = hermes_messages(messages, [])
    assert out == [
        {"role": "user", "content": parts},
        {"role": "user", "content": "<tool_response>\n42\n</tool_response>"},
    ]
