"""Log-probabilities in-process on the tiny model: the values a plain transformers forward pass gives on
the same tokens, for generated and prompt tokens, with and without an adapter; a prompt scored without
generating; a stream's records the same as the whole answer's; token spellings and text spans."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import TINY_ID
from tests.serve.conftest import FT_ID
from tests.serve.test_engine import record_generate
from tunehouse.serve.engine import Engine, Generation, SamplingParams, ScoredPrompt, TextDelta
from tunehouse.serve.logprobs import TextSpans, TokenLogprob, TokenSpelling

TOLERANCE = 1e-4
PROMPT = "The capital of France is"


def forward_logprobs(model: Any, token_ids: list[int]) -> torch.Tensor:
    """(T-1, V): row i is the log-distribution of token i+1, from one plain forward pass."""
    with torch.inference_mode():
        return model(torch.tensor([token_ids])).logits[0, :-1].float().log_softmax(-1)


def assert_records_match(records: list[TokenLogprob], expected: torch.Tensor, token_ids: list[int], top: int) -> None:
    """Each record's logprob and alternatives are those of `expected` (rows aligned with `token_ids`)."""
    assert [r.token_id for r in records] == token_ids
    for record, row in zip(records, expected, strict=True):
        assert record.logprob is not None and abs(record.logprob - row[record.token_id].item()) < TOLERANCE
        values, ids = row.topk(top)
        assert [token for token, _ in record.top] == ids.tolist()
        assert all(abs(got - want) < TOLERANCE for (_, got), want in zip(record.top, values.tolist(), strict=True))


@pytest.fixture(scope="module")
def plain_model(tiny_model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def test_generated_tokens_carry_the_model_s_own_log_probabilities(engine: Engine, plain_model: Any) -> None:
    handle = engine.open(TINY_ID)
    prompt = handle.encode(PROMPT)
    result = engine.generate(handle, prompt, SamplingParams(max_tokens=6, temperature=0, logprobs=3))
    assert result.logprobs is not None and result.prompt_logprobs is None
    generated = [r.token_id for r in result.logprobs]
    assert handle.tokenizer.decode(generated, skip_special_tokens=True) == result.text
    expected = forward_logprobs(plain_model, prompt + generated)[len(prompt) - 1 :]
    assert_records_match(result.logprobs, expected, generated, top=3)
    assert all(r.top[0][0] == r.token_id for r in result.logprobs)  # greedy: each is the most likely


def test_sampled_tokens_report_the_distribution_before_temperature(engine: Engine, plain_model: Any) -> None:
    handle = engine.open(TINY_ID)
    prompt = handle.encode(PROMPT)
    params = SamplingParams(max_tokens=5, temperature=1.7, top_p=0.9, seed=3, logprobs=2)
    result = engine.generate(handle, prompt, params)
    assert result.logprobs is not None
    generated = [r.token_id for r in result.logprobs]
    assert_records_match(
        result.logprobs, forward_logprobs(plain_model, prompt + generated)[len(prompt) - 1 :], generated, top=2
    )


def test_a_prompt_is_scored_without_generating_when_max_tokens_is_0(
    engine: Engine, plain_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = engine.open(TINY_ID)
    calls = record_generate(monkeypatch, handle.weights.model)
    prompt = handle.encode(PROMPT)
    result = engine.generate(handle, prompt, SamplingParams(max_tokens=0, logprobs=1, prompt_logprobs=True))
    assert calls == []
    assert (result.text, result.completion_tokens, result.logprobs) == ("", 0, [])
    assert result.prompt_logprobs is not None
    first, *rest = result.prompt_logprobs
    assert (first.token_id, first.logprob, first.top, first.span) == (prompt[0], None, [], (0, len("The")))
    assert_records_match(rest, forward_logprobs(plain_model, prompt), prompt[1:], top=1)
    assert [PROMPT[slice(*r.span)] for r in result.prompt_logprobs] == [handle.decode([t]) for t in prompt]


def test_scoring_the_prompt_first_leaves_the_generation_unchanged(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    prompt = handle.encode(PROMPT)
    plain = engine.generate(handle, prompt, SamplingParams(max_tokens=8, temperature=0, logprobs=0))
    scored = engine.generate(
        handle, prompt, SamplingParams(max_tokens=8, temperature=0, logprobs=0, prompt_logprobs=True)
    )
    assert scored.text == plain.text and scored.prompt_logprobs is not None
    assert plain.logprobs is not None and scored.logprobs is not None
    assert [r.token_id for r in scored.logprobs] == [r.token_id for r in plain.logprobs]
    for a, b in zip(scored.logprobs, plain.logprobs, strict=True):
        assert a.logprob is not None and b.logprob is not None and abs(a.logprob - b.logprob) < TOLERANCE
    assert all(r.top == [] for r in scored.logprobs)  # logprobs=0: the chosen token's only


def test_a_fine_tune_s_log_probabilities_come_from_its_adapter(
    engine: Engine, plain_model: Any, lora_dir: Path
) -> None:
    from peft import PeftModel

    tuned_model = PeftModel.from_pretrained(plain_model, str(lora_dir)).eval()
    handle = engine.open(FT_ID)
    prompt = handle.encode(PROMPT)
    params = SamplingParams(max_tokens=4, temperature=0, logprobs=2, prompt_logprobs=True)
    tuned = engine.generate(handle, prompt, params)
    base = engine.generate(engine.open(TINY_ID), prompt, params)  # the same weights with the adapter off
    assert tuned.logprobs is not None and tuned.prompt_logprobs is not None and base.prompt_logprobs is not None
    generated = [r.token_id for r in tuned.logprobs]
    expected = forward_logprobs(tuned_model, prompt + generated)
    assert_records_match(tuned.prompt_logprobs[1:], expected[: len(prompt) - 1], prompt[1:], top=2)
    assert_records_match(tuned.logprobs, expected[len(prompt) - 1 :], generated, top=2)
    assert abs(tuned.prompt_logprobs[1].logprob - base.prompt_logprobs[1].logprob) > TOLERANCE  # type: ignore[operator]  # both set: checked above


def test_a_stream_hands_out_the_same_records_as_the_whole_answer(engine: Engine) -> None:
    handle = engine.open(TINY_ID)
    prompt = handle.encode(PROMPT)
    plain = SamplingParams(max_tokens=12, temperature=0, logprobs=2, prompt_logprobs=True)
    uncut = engine.generate(handle, prompt, plain).text
    assert len(uncut) > 4
    cut = replace(plain, prompt_logprobs=False, stop=[uncut[2:4]])  # a stop sequence inside the text
    for params in (plain, cut):
        whole = engine.generate(handle, prompt, params)
        assert whole.logprobs and (
            whole.text == uncut or (len(whole.text) < len(uncut) and whole.finish_reason == "stop")
        )

        async def collect(params: SamplingParams = params) -> list[Any]:
            return [item async for _, item in engine.stream_async(handle, [prompt], params)]

        items = asyncio.run(collect())
        deltas = [item for item in items if isinstance(item, TextDelta)]
        final = items[-1]
        assert isinstance(final, Generation) and final.text == whole.text == "".join(d.text for d in deltas)
        assert [r for d in deltas for r in d.logprobs] == whole.logprobs == final.logprobs
        scored = [item for item in items if isinstance(item, ScoredPrompt)]
        if params.prompt_logprobs:
            assert items[0] == ScoredPrompt(whole.prompt_logprobs or [])
        else:
            assert scored == []


@pytest.fixture(scope="module")
def spelling(tiny_model_dir: Path) -> TokenSpelling:
    return TokenSpelling(AutoTokenizer.from_pretrained(str(tiny_model_dir)))


def test_tokens_are_spelled_in_bytes_and_fragments_of_characters_as_openai_shows_them(
    spelling: TokenSpelling, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = "héllo 日本 😀<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(spelling.bytes_of(t) for t in ids) == text.encode()
    texts = [spelling.text_of(t) for t in ids]
    assert "h" in texts and "<|im_end|>" in texts
    fragments = [t for t in texts if t.startswith("bytes:")]
    assert fragments and all(len(f.removeprefix("bytes:")) % 4 == 0 for f in fragments)  # \xNN each
    assert spelling.text_of(ids[texts.index(fragments[0])]) == fragments[0]


def test_spans_give_each_token_its_characters_and_a_shared_character_to_all_its_tokens(
    spelling: TokenSpelling, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = "héllo 日本 😀"
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    spans = TextSpans(spelling)
    got = [spans.add(t) for t in ids]
    # h|é|llo| 日-1st byte|2nd|3rd|本| 😀-3 bytes|4th: the three tokens of 日 share its span
    assert [text[slice(*span)] for span in got[:-1]] == ["h", "é", "llo", " 日", "日", "日", "本", " 😀", "😀"]
    assert [span[0] for span in got[:-1]] == [0, 1, 2, 5, 6, 6, 7, 8, 9]
    assert got[-1] == (len(text), len(text))  # a special token takes no room in generated text
    with_special = TextSpans(spelling, with_special=True)
    assert [with_special.add(t) for t in ids][-1] == (len(text), len(text) + len("<|im_end|>"))
