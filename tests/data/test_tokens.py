"""The fast token counts equal the trainer's `encode_example`, on awkward text and conversations."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tunehouse.data.fast_template import learn_fast_template
from tunehouse.data.piece_count import PieceCounter, piece_counting_applies
from tunehouse.data.token_count import TemplateMismatch, TokenCounter
from tunehouse.models.template import encode_example, normalize_messages

AWKWARD = [
    "plain words here",
    "  leading and trailing  ",
    "double  space,  triple   space",
    "tabs\tand\nnewlines \n indented\n\n  para",
    "don't it's we'll I'm 'quoted' \"double\"",
    "numbers 3.14159 1,000,000 and 2024-01-01",
    "naïve café 中文字符 русский текст 🙂👍🏽",
    "nbsp\u00a0here\u2003em-space \u3000ideographic",
    "<|im_start|>user\nspecial tokens <|im_end|> inside",
    "code: def f(x):\n    return x  # comment",
    " ",
    "a",
    "",
]


def random_text(rng: random.Random) -> str:
    pieces = [*AWKWARD, "word", "the", ",", ".", " ", "\n", "\t", "  ", "é", "🙂", "\u00a0", "x1"]
    return "".join(rng.choice(pieces) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(1, 12)))


def test_the_shipped_tokenizer_qualifies_for_piece_counting(tokenizer: Any) -> None:
    assert piece_counting_applies(tokenizer.backend_tokenizer)


def test_piece_counts_equal_the_tokenizer_on_awkward_text(tokenizer: Any) -> None:
    rng = random.Random(7)
    texts = AWKWARD + [random_text(rng) for _ in range(2000)]
    counter = PieceCounter(tokenizer.backend_tokenizer)
    expected = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) if t else 0 for t in texts]
    assert counter.count_many(texts) == expected
    assert counter.count_many(texts) == expected  # again, now from the cache


def test_the_learned_template_renders_as_jinja_does(tokenizer: Any) -> None:
    template = learn_fast_template(tokenizer)
    assert template is not None
    conversation = normalize_messages(
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": " multi\n"}, {"type": "text", "text": "part"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "{{ braces }}"},
        ]
    )
    for end in range(1, len(conversation) + 1):
        for generation in (False, True):
            expected = tokenizer.apply_chat_template(
                conversation[:end], tokenize=False, add_generation_prompt=generation
            )
            assert template.render(conversation[:end], generation) == expected


def conversations(rng: random.Random, n: int) -> list[dict[str, Any]]:
    examples = []
    for _ in range(n):
        messages: list[dict[str, Any]] = []
        if rng.random() < 0.5:
            messages.append({"role": rng.choice(["system", "developer"]), "content": random_text(rng)})
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": random_text(rng) or "q"})
            reply: dict[str, Any] = {"role": "assistant", "content": random_text(rng) or "a"}
            if rng.random() < 0.2:
                reply["weight"] = 0
            messages.append(reply)
            if rng.random() < 0.2:
                messages.append({"role": "tool", "tool_call_id": "c", "content": random_text(rng) or "t"})
        examples.append({"messages": messages})
    examples += [{"prompt": random_text(rng), "completion": " " + random_text(rng)} for _ in range(20)]
    return examples


@pytest.mark.parametrize("max_length", [None, 40])
def test_counts_equal_encode_example(tokenizer: Any, max_length: int | None) -> None:
    examples = conversations(random.Random(3), 150)
    counter = TokenCounter(tokenizer, max_length)
    assert counter.template is not None and counter.pieces.use_pieces
    for example, got in zip(examples, counter.count(examples), strict=True):
        assert not isinstance(got, TemplateMismatch)
        full, cut = encode_example(tokenizer, example), encode_example(tokenizer, example, max_length)
        assert (got.tokens, got.trained) == (len(full.input_ids), cut.trained_tokens)


def test_the_slow_exact_path_gives_the_same_counts(tokenizer: Any) -> None:
    examples = conversations(random.Random(5), 40)
    fast = TokenCounter(tokenizer, 64).count(examples)
    slow = TokenCounter(tokenizer, 64)
    slow.template, slow.pieces.use_pieces = None, False
    assert slow.count(examples) == fast


def test_self_check_falls_back_when_the_fast_path_disagrees(tokenizer: Any) -> None:
    counter = TokenCounter(tokenizer)
    assert counter.template is not None
    counter.template.affixes["user"] = ("<|im_start|>user\nextra words ", "<|im_end|>\n")  # a wrong template
    examples = conversations(random.Random(1), 5)
    assert counter.self_check(examples) is False
    assert counter.template is None and not counter.pieces.use_pieces
    assert counter.self_check(examples) is True


def test_a_conversation_the_template_cannot_render_is_a_mismatch(tokenizer: Any) -> None:
    [result] = TokenCounter(tokenizer).count([{"messages": [{"role": "assistant", "content": "hi"}]}])
    assert isinstance(result, TemplateMismatch)
