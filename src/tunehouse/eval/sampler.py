"""How a completions run samples a model: through the serving engine, in the worker's process, exactly
as the chat route would answer the same messages (the model's own chat template, its tokens).

A prompt given as a plain string (an `item_reference` to a legacy example's `prompt`) is sent as raw
text, as `/v1/completions` would: a legacy prompt/completion fine-tune was trained on the raw prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunehouse.models.template import render_chat_prompt
from tunehouse.serve.engine import Engine, Generation, SamplingParams

GREEDY_BELOW = 1e-4  # as the chat route reads a tiny temperature: greedy decoding


@dataclass(frozen=True)
class EngineSampler:
    engine: Engine

    def __call__(self, model: str, prompt: list[dict[str, Any]] | str, sampling: dict[str, Any]) -> Generation:
        """One answer of `model` to `prompt` (messages, or raw text); TunehouseError if it cannot answer
        (unknown model, a prompt longer than its context), ServerBusy while the engine stops."""
        handle = self.engine.open(model)
        text = prompt if isinstance(prompt, str) else render_chat_prompt(handle.tokenizer, prompt)
        prompt_ids = handle.encode(text)
        handle.check_prompt(prompt_ids, param="input_messages")
        temperature = float(sampling["temperature"])
        params = SamplingParams(
            max_tokens=int(sampling["max_completion_tokens"]),
            temperature=0.0 if temperature < GREEDY_BELOW else temperature,
            top_p=float(sampling["top_p"]),
            seed=sampling.get("seed"),
        )
        return self.engine.generate(handle, prompt_ids, params)
