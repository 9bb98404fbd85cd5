"""The `ollama` format: the GGUF beside a Modelfile whose TEMPLATE reproduces the chat template.

Ollama templates are Go templates, and a Jinja chat template cannot be translated in general. Most
chat templates wrap each message the same way, though: `HEAD(role) + content + TAIL`, with the role
spelled inside the head (ChatML: `<|im_start|>user\\n … <|im_end|>\\n`). That shape is read off the
tokenizer's own template by rendering marker messages, a default system prompt (one the template
adds when a conversation has none) becomes the Modelfile's `SYSTEM` (Ollama adds it on the same
condition), and the result is checked: rendering sample conversations the Ollama way must give the
tokenizer's text exactly, or the export is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tunehouse.errors import ExportRefused

MARK = "f3a9c2"  # marker text no template rewrites
SYSTEM, USER, ASSISTANT, USER2 = (f"{role}{MARK}" for role in ("SYSTEM", "USER", "ASSISTANT", "USERTWO"))


@dataclass(frozen=True)
class MessageShape:
    """How the chat template renders a conversation: `prefix`, then per message
    `head + role + sep + content + tail`, then `head + "assistant" + sep` to prompt a reply."""

    prefix: str
    head: str
    sep: str
    tail: str
    default_system: str | None

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt Ollama builds from `messages` with this Modelfile (SYSTEM added as Ollama does)."""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        turns = "".join(f"{self.head}{m['role']}{self.sep}{m['content']}{self.tail}" for m in messages)
        return f"{self.prefix}{turns}{self.head}assistant{self.sep}"


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def _refuse(detail: str) -> ExportRefused:
    return ExportRefused(
        f"The chat template cannot be written as an Ollama TEMPLATE: {detail}. "
        "Export with --format gguf (the template is in the GGUF's metadata) and write the Modelfile by hand.",
        param="format",
    )


def message_shape(tokenizer: Any) -> MessageShape:
    """Read the per-message shape off the tokenizer's chat template; ExportRefused if it has none."""
    if not getattr(tokenizer, "chat_template", None):
        raise ExportRefused("The model's tokenizer has no chat template.", param="format")
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    try:
        prompt = _render(tokenizer, conversation)
        replied = _render(tokenizer, [*conversation, {"role": "assistant", "content": ASSISTANT}], False)
        no_system = _render(tokenizer, [{"role": "user", "content": USER}])
    except Exception as exc:  # a template that raises on these roles is not one we can translate
        raise _refuse(f"it fails on a system/user/assistant conversation ({exc})") from exc
    if any(text.count(marker) != 1 for text, marker in ((prompt, SYSTEM), (prompt, USER), (replied, ASSISTANT))):
        raise _refuse("it does not render each message's content once")
    tail = replied[replied.index(ASSISTANT) + len(ASSISTANT) :]
    between = prompt[prompt.index(SYSTEM) + len(SYSTEM) : prompt.index(USER)]
    after_user = prompt[prompt.index(USER) + len(USER) :]
    if not (tail and between.startswith(tail) and after_user.startswith(tail)):
        raise _refuse("messages do not end with one shared closing text")
    user_head, assistant_head = between[len(tail) :], after_user[len(tail) :]
    if user_head.count("user") != 1:
        raise _refuse("the role name is not spelled once in each message's opening text")
    head, sep = user_head.split("user")
    before_system = prompt[: prompt.index(SYSTEM)]
    if assistant_head != f"{head}assistant{sep}" or not before_system.endswith(f"{head}system{sep}"):
        raise _refuse("system, user and assistant messages do not open the same way")
    shape = MessageShape(before_system[: -len(f"{head}system{sep}")], head, sep, tail, None)
    if no_system != shape.render([{"role": "user", "content": USER}]):
        shape = MessageShape(shape.prefix, head, sep, tail, _default_system(shape, no_system))
    _check(tokenizer, shape)
    return shape


def _default_system(shape: MessageShape, rendered: str) -> str:
    """The system prompt the template adds to a conversation that has none."""
    opening = f"{shape.prefix}{shape.head}system{shape.sep}"
    closing = f"{shape.tail}{shape.head}user{shape.sep}{USER}{shape.tail}{shape.head}assistant{shape.sep}"
    if not (rendered.startswith(opening) and rendered.endswith(closing)):
        raise _refuse("a conversation without a system message renders in a shape of its own")
    return rendered[len(opening) : -len(closing)]


SAMPLES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?\nThanks."},
    ],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Goodbye"},
    ],
]


def _check(tokenizer: Any, shape: MessageShape) -> None:
    for messages in SAMPLES:
        if _render(tokenizer, messages) != shape.render(messages):
            raise _refuse(f"rendering {json.dumps(messages)[:120]} the Ollama way gives other text")


def _go_literal(text: str) -> str:
    """`text` as literal template output; text containing `{{` goes through a Go string constant."""
    return text if "{{" not in text else "{{ " + json.dumps(text) + " }}"


def go_template(shape: MessageShape) -> str:
    """The TEMPLATE: Ollama passes every message, system ones included, in `.Messages`."""
    head, sep, tail = (_go_literal(t) for t in (shape.head, shape.sep, shape.tail))
    return (
        f"{_go_literal(shape.prefix)}{{{{ range .Messages }}}}{head}{{{{ .Role }}}}{sep}{{{{ .Content }}}}{tail}"
        f"{{{{ end }}}}{head}assistant{sep}"
    )


def stop_sequences(tokenizer: Any, shape: MessageShape) -> list[str]:
    """The special tokens in the message wrapping plus EOS, in order of appearance: where a reply ends."""
    wrapping = shape.head + shape.sep + shape.tail
    specials = {str(t) for t in tokenizer.all_special_tokens} | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }
    found = sorted((wrapping.index(t), t) for t in specials if t and t in wrapping)
    stops = [t for _, t in found]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(str(tokenizer.eos_token))
    return stops


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise _refuse(f'the {what} contains """, which a Modelfile value cannot hold')
    return f'"""{text}"""'


def modelfile(tokenizer: Any, gguf_name: str, model_id: str) -> str:
    """The Modelfile text for `gguf_name` (a path relative to the Modelfile)."""
    shape = message_shape(tokenizer)
    lines = [
        f"# Ollama Modelfile for {model_id}, written by tunehouse.",
        f"# Create the model with: ollama create {ollama_name(model_id)} -f Modelfile",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_triple_quoted(go_template(shape), 'chat template')}",
    ]
    if shape.default_system is not None:
        lines.append(f"SYSTEM {_triple_quoted(shape.default_system, 'default system prompt')}")
    for stop in stop_sequences(tokenizer, shape):
        if '"' in stop or "\n" in stop:
            raise _refuse(f"the stop sequence {stop!r} cannot be written as a quoted PARAMETER")
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def ollama_name(model_id: str) -> str:
    """A name Ollama accepts for the model (lowercase letters, digits, `.`, `_` and `-`)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", model_id.lower()).strip("-._")
    return slug[:80] or "tunehouse-model"
