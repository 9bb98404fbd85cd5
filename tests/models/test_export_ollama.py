"""The `ollama` format: a Modelfile that parses under Ollama's documented grammar, whose TEMPLATE
renders conversations exactly as the model's chat template does, and that stops where the model does.

Ollama's Modelfile reference: `# comment` lines and `INSTRUCTION arguments`, instructions FROM
(required), PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE, REQUIRES, case-insensitive;
values bare, "quoted" or \"\"\"triple-quoted\"\"\" across lines. TEMPLATE is a Go template over
`.Messages` (each with `.Role` and `.Content`, system messages included) and `.System`; Ollama
prepends the Modelfile's SYSTEM as a system message when a conversation does not start with one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.models.conftest import LORA_ID
from tunehouse.models.export import export_model
from tunehouse.models.export.ollama import SAMPLES, go_template, message_shape

INSTRUCTIONS = {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"}
PARAMETERS = {
    "num_ctx", "repeat_last_n", "repeat_penalty", "temperature", "seed", "stop",
    "num_predict", "draft_num_predict", "top_k", "top_p", "min_p",
}  # fmt: skip
MESSAGE_ROLES = {"system", "user", "assistant"}


def _value(rest: str, lines: list[str], i: int) -> tuple[str, int]:
    """A bare, "quoted" or \"\"\"triple-quoted\"\"\" value starting at `rest`; returns it and the next line."""
    if rest.startswith('"""'):
        text, i = rest[3:], i + 1
        while '"""' not in text:
            if i >= len(lines):
                raise AssertionError('unterminated """ value')
            text, i = text + "\n" + lines[i], i + 1
        value, after = text.split('"""', 1)
        assert not after.strip(), f"text after closing quotes: {after!r}"
        return value, i
    if rest.startswith('"'):
        match = re.fullmatch(r'"((?:[^"\\]|\\.)*)"', rest)
        assert match, f"unterminated quoted value: {rest!r}"
        return match.group(1), i + 1
    assert rest, "an instruction without arguments"
    return rest, i + 1


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs; AssertionError on anything the documented grammar does not allow."""
    lines, i, parsed = text.split("\n"), 0, []
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        word, _, rest = line.partition(" ")
        instruction = word.upper()
        assert instruction in INSTRUCTIONS, f"unknown instruction {word!r}"
        start = lines[i][lines[i].index(word) + len(word) :].lstrip()
        value, i = _value(start, lines, i)
        if instruction == "PARAMETER":
            name, _, raw = value.partition(" ")
            assert name in PARAMETERS, f"unknown parameter {name!r}"
            value = name + " " + _value(raw.strip(), [raw.strip()], 0)[0]
        if instruction == "MESSAGE":
            assert value.split(" ", 1)[0] in MESSAGE_ROLES
        parsed.append((instruction, value))
    assert sum(1 for k, _ in parsed if k == "FROM") >= 1, "FROM is required"
    return parsed


ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go(template: str, values: dict[str, Any]) -> str:
    """Go text/template for the subset a chat TEMPLATE uses: `range`, `if`, `end`, fields, strings."""
    tokens: list[tuple[str, str]] = []
    position = 0
    for match in ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim":
            text = text.lstrip()
            tokens.pop()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        if match.group(3):
            tokens.append(("trim", ""))
        position = match.end()
    tail = template[position:]
    tokens.append(("text", tail.lstrip() if tokens and tokens[-1][0] == "trim" else tail))
    tokens = [t for t in tokens if t[0] != "trim"]

    def field(expr: str, scope: dict[str, Any]) -> Any:
        if expr.startswith('"'):
            return expr[1:-1].encode().decode("unicode_escape")
        assert re.fullmatch(r"\.[A-Z][A-Za-z]*", expr), f"unsupported expression {expr!r}"
        assert expr[1:] in scope, f"unknown variable {expr}"
        return scope[expr[1:]]

    def block(i: int, scope: dict[str, Any]) -> tuple[str, int]:
        out = ""
        while i < len(tokens):
            kind, body = tokens[i]
            if kind == "text":
                out, i = out + body, i + 1
            elif body == "end":
                return out, i + 1
            elif body.startswith("range "):
                items = field(body[6:], scope)
                inner_end = i + 1
                for item in items:
                    text, inner_end = block(i + 1, {**scope, **item})
                    out += text
                if not items:
                    _, inner_end = block(i + 1, scope)
                i = inner_end
            elif body.startswith("if "):
                text, i_next = block(i + 1, scope)
                out, i = out + (text if field(body[3:], scope) else ""), i_next
            else:
                out, i = out + str(field(body, scope)), i + 1
        return out, i

    rendered, end = block(0, values)
    assert end == len(tokens), "unbalanced {{ end }}"
    return rendered


def ollama_prompt(parsed: list[tuple[str, str]], messages: list[dict[str, str]]) -> str:
    """What Ollama sends the model for a chat with `messages` under this Modelfile."""
    values = dict(parsed)
    system = values.get("SYSTEM")
    if system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    go_messages = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    joined = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return render_go(values["TEMPLATE"], {"Messages": go_messages, "System": joined})


def test_the_modelfile_parses_renders_the_chat_template_and_names_the_stops(home: Path, tmp_path: Path) -> None:
    from tunehouse.models.catalog import load_tokenizer

    out = tmp_path / "ollama"
    report = export_model(LORA_ID, "ollama", out, verify=False)

    parsed = parse_modelfile((out / "Modelfile").read_text())
    values = dict(parsed)
    assert values["FROM"] == "./model.gguf" and (out / "model.gguf").stat().st_size > 0
    stops = [v.split(" ", 1)[1] for k, v in parsed if k == "PARAMETER" and v.startswith("stop ")]
    assert stops == ["<|im_start|>", "<|im_end|>"]
    tokenizer = load_tokenizer(LORA_ID)
    assert tokenizer.eos_token in stops
    assert values["SYSTEM"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    for messages in SAMPLES:
        assert ollama_prompt(parsed, messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    assert report.commands["ollama"] == "ollama create ft-tiny-llama-tunehouse-lora-ftjob-export0001 -f Modelfile"


LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_a_llama3_style_template_is_read_with_its_prefix_and_no_default_system(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = LLAMA3_STYLE

    shape = message_shape(tokenizer)

    assert (shape.prefix, shape.head, shape.sep, shape.tail) == (
        tokenizer.bos_token,
        "<|start_header_id|>",
        "<|end_header_id|>\n\n",
        "<|eot_id|>",
    )
    assert shape.default_system is None
    template = go_template(shape)
    for messages in SAMPLES:
        go_messages = [{"Role": m["role"], "Content": m["content"]} for m in messages]
        assert render_go(template, {"Messages": go_messages, "System": ""}) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('FROM ./m.gguf\nTEMPLATE """never closed\n', "unterminated"),
        ("FROM ./m.gguf\nPARAMETER colour red\n", "unknown parameter"),
        ("PARAMETER stop x\n", "FROM is required"),
        ("FROM ./m.gguf\nSAY hello\n", "unknown instruction"),
    ],
)
def test_the_modelfile_checker_itself_rejects_what_the_grammar_does_not_allow(text: str, problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        parse_modelfile(text)
