"""A chat template rendered by string concatenation, learned from the model's own Jinja template.

Rendering a Jinja template costs ~70 µs a call, and `encode_chat_example` renders twice per
assistant turn: 1 GB of chat data would spend minutes in Jinja alone. Most chat templates (ChatML,
SmolLM2, Zephyr, ...) wrap each message in a fixed prefix and suffix that depend only on its role,
with a fixed head before the first message. We learn those strings by rendering probe
conversations, then check the learned renderer against the real template on a battery of
conversations; any template it cannot reproduce exactly is not learned, and callers keep Jinja.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SLOT = "\ue000"  # private-use characters no template treats specially
_ANCHOR = [{"role": "system", "content": "\ue001"}]
ROLES = ("system", "user", "assistant", "tool", "function")

_PROBE_TEXTS = ("Hi there.", "  padded\n\nlines  ", "{{ not jinja }} <b>x</b>", "é ü 中文 🙂", "\n", "x")
_PROBE_ROLES = (
    ("user", "assistant"),
    ("system", "user", "assistant"),
    ("user", "assistant", "user", "assistant"),
    ("system", "user", "assistant", "tool", "assistant"),
    ("system", "system", "user", "assistant", "function", "assistant"),
)


@dataclass(frozen=True)
class FastTemplate:
    """`render(messages, add_generation_prompt)` equal to the tokenizer's `apply_chat_template`."""

    heads: dict[str, str]  # text before the first message, by the first message's role
    affixes: dict[str, tuple[str, str]]  # (prefix, suffix) around each message's content, by role
    generation_prompt: str

    def supports(self, messages: list[dict[str, str]]) -> bool:
        return bool(messages) and all(m["role"] in self.affixes for m in messages)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """Messages must be `normalize_messages` output whose roles `supports` accepts."""
        if not messages:
            raise ValueError("Cannot apply chat template to an empty conversation.")
        parts = [self.heads[messages[0]["role"]]]
        for message in messages:
            prefix, suffix = self.affixes[message["role"]]
            parts += (prefix, message["content"], suffix)
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)


def _jinja(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _learn(tokenizer: Any) -> FastTemplate | None:
    base = _jinja(tokenizer, _ANCHOR)
    with_prompt = _jinja(tokenizer, _ANCHOR, True)
    if not with_prompt.startswith(base):
        return None
    heads: dict[str, str] = {}
    affixes: dict[str, tuple[str, str]] = {}
    for role in ROLES:
        try:
            text = _jinja(tokenizer, [*_ANCHOR, {"role": role, "content": _SLOT}])
            alone = _jinja(tokenizer, [{"role": role, "content": _SLOT}])
        except Exception:  # noqa: BLE001 - a template may reject a role; conversations with it keep Jinja
            continue
        block = text[len(base) :]
        prefix, found, suffix = block.partition(_SLOT)
        if not text.startswith(base) or not found or _SLOT in suffix or not alone.endswith(block):
            return None
        affixes[role] = (prefix, suffix)
        heads[role] = alone[: len(alone) - len(block)]
    if "assistant" not in affixes:
        return None
    return FastTemplate(heads, affixes, with_prompt[len(base) :])


def _probes(template: FastTemplate) -> list[list[dict[str, str]]]:
    conversations = []
    for shift, roles in enumerate(_PROBE_ROLES):
        if all(role in template.affixes for role in roles):
            texts = [_PROBE_TEXTS[(shift + i) % len(_PROBE_TEXTS)] for i in range(len(roles))]
            conversations.append([{"role": r, "content": t} for r, t in zip(roles, texts, strict=True)])
    return conversations


def agrees(template: FastTemplate, tokenizer: Any, conversations: list[list[dict[str, str]]]) -> bool:
    """True when the learned template renders every prefix of every conversation as Jinja does."""
    for conversation in conversations:
        if not template.supports(conversation):
            continue
        for end in range(1, len(conversation) + 1):
            for generation in (False, True):
                try:
                    expected = _jinja(tokenizer, conversation[:end], generation)
                except Exception:  # noqa: BLE001 - Jinja rejecting it means we must not guess either
                    return False
                if template.render(conversation[:end], generation) != expected:
                    return False
    return True


def learn_fast_template(tokenizer: Any) -> FastTemplate | None:
    """The tokenizer's chat template as concatenation, or None when that would not be exact."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        template = _learn(tokenizer)
    except Exception:  # noqa: BLE001 - any template failure means: keep using Jinja
        return None
    if template is None or not agrees(template, tokenizer, _probes(template)):
        return None
    return template
