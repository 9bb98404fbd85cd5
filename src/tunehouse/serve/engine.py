"""Text generation for any model id the catalog knows.

Keeps one copy of each base model in memory. LoRA fine-tunes are adapters loaded onto that copy and
switched per request (LRU-evicted past `MAX_ADAPTERS`), so serving many fine-tunes costs adapter
memory, not a model each (PITFALLS 10). Full fine-tunes are separate models, few kept at once.
Generation is serialized with a lock: on a CPU a second concurrent generation only slows both.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from tunehouse.errors import InvalidRequest
from tunehouse.hardware import default_device
from tunehouse.models.catalog import ModelInfo, base_of, get_model, weights_dir
from tunehouse.serve.stops import cut_at_stop, safe_prefix_length

MAX_ADAPTERS = 16
MAX_FULL_MODELS = 2


@dataclass
class SamplingParams:
    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # model id -> adapter name


class _StopCriteria(StoppingCriteria):
    """Ends generation at a stop sequence or when the client went away; counts generated tokens."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: list[str], cancelled: threading.Event) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = stops
        self.cancelled = cancelled
        self.generated = 0
        self.hit_stop = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.generated = input_ids.shape[1] - self.prompt_len
        done = self.cancelled.is_set()
        if self.stops and not done:
            text = self.tokenizer.decode(input_ids[0, self.prompt_len :], skip_special_tokens=True)
            self.hit_stop = cut_at_stop(text, self.stops)[1]
            done = self.hit_stop
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _TextCollector:
    """A minimal streamer: decodes the new tokens and hands out text deltas to a queue."""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        import queue

        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.token_ids: list[int] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._sent = 0
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate() first puts the prompt
            self._seen_prompt = True
            return
        self.token_ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return
        self.queue.put(text[self._sent :])
        self._sent = len(text)

    def end(self) -> None:
        self.queue.put(None)


class Engine:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bases: dict[str, _Loaded] = {}
        self._full: OrderedDict[str, _Loaded] = OrderedDict()
        self.device = default_device()

    # --- resolving a model id to weights in memory ---------------------------------------------------
    def _load_folder(self, path: str) -> _Loaded:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        return _Loaded(model=model, tokenizer=tokenizer)

    def _base(self, base: ModelInfo) -> _Loaded:
        if base.id not in self._bases:
            self._bases[base.id] = self._load_folder(str(weights_dir(base)))
        return self._bases[base.id]

    def _activate_adapter(self, loaded: _Loaded, model: ModelInfo) -> None:
        from peft import PeftModel

        name = "a" + hashlib.sha1(model.id.encode()).hexdigest()[:16]
        if model.id not in loaded.adapters:
            if isinstance(loaded.model, PeftModel):
                loaded.model.load_adapter(str(model.path), adapter_name=name)
            else:
                loaded.model = PeftModel.from_pretrained(loaded.model, str(model.path), adapter_name=name).eval()
            loaded.adapters[model.id] = name
            if len(loaded.adapters) > MAX_ADAPTERS:
                _, evicted = loaded.adapters.popitem(last=False)
                loaded.model.delete_adapter(evicted)
        loaded.adapters.move_to_end(model.id)
        loaded.model.set_adapter(name)

    def _prepare(self, model_id: str) -> tuple[_Loaded, bool]:
        """The loaded weights for `model_id` and whether adapters must be disabled (a base model)."""
        model = get_model(model_id)
        if model.kind == "base":
            return self._base(model), True
        if model.adapter:
            loaded = self._base(base_of(model))
            self._activate_adapter(loaded, model)
            return loaded, False
        if model_id not in self._full:
            self._full[model_id] = self._load_folder(str(model.path))
            if len(self._full) > MAX_FULL_MODELS:
                self._full.popitem(last=False)
        self._full.move_to_end(model_id)
        return self._full[model_id], False

    def tokenizer_for(self, model_id: str) -> Any:
        with self._lock:
            return self._prepare(model_id)[0].tokenizer

    def forget(self, model_id: str) -> None:
        """Drop a deleted model's adapter or weights from memory."""
        with self._lock:
            self._full.pop(model_id, None)
            for loaded in self._bases.values():
                name = loaded.adapters.pop(model_id, None)
                if name is not None:
                    loaded.model.delete_adapter(name)

    # --- generation --------------------------------------------------------------------------------
    def _run(
        self, model_id: str, prompt: str, params: SamplingParams, streamer: Any, cancelled: threading.Event
    ) -> Generation:
        loaded, is_base = self._prepare(model_id)
        tokenizer = loaded.tokenizer
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        prompt_len = encoded["input_ids"].shape[1]
        context = getattr(loaded.model.config, "max_position_embeddings", None) or 2048
        if prompt_len >= context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens; the prompt has {prompt_len}.",
                param="messages",
                code="context_length_exceeded",
            )
        params = replace(params, max_tokens=min(params.max_tokens, context - prompt_len))
        stopper = _StopCriteria(tokenizer, prompt_len, params.stop, cancelled)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": sample,
            "stopping_criteria": StoppingCriteriaList([stopper]),
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "streamer": streamer,
        }
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            if is_base and hasattr(loaded.model, "disable_adapter"):
                with loaded.model.disable_adapter():
                    output = loaded.model.generate(**encoded, **kwargs)
            else:
                output = loaded.model.generate(**encoded, **kwargs)
        new_tokens = output[0, prompt_len:].tolist()
        text, hit_stop = cut_at_stop(tokenizer.decode(new_tokens, skip_special_tokens=True), params.stop)
        ended_by_eos = bool(new_tokens) and new_tokens[-1] == tokenizer.eos_token_id
        finish = "stop" if (hit_stop or ended_by_eos or len(new_tokens) < params.max_tokens) else "length"
        return Generation(text=text, finish_reason=finish, prompt_tokens=prompt_len, completion_tokens=len(new_tokens))

    def generate(self, model_id: str, prompt: str, params: SamplingParams) -> Generation:
        with self._lock:
            return self._run(model_id, prompt, params, None, threading.Event())

    def stream(self, model_id: str, prompt: str, params: SamplingParams) -> Iterator[str | Generation]:
        """Yields text deltas (stop sequences withheld), then the final Generation."""
        cancelled = threading.Event()
        self._lock.acquire()
        try:
            tokenizer = self._prepare(model_id)[0].tokenizer
            collector = _TextCollector(tokenizer, 0)
            outcome: dict[str, Any] = {}

            def work() -> None:
                try:
                    outcome["result"] = self._run(model_id, prompt, params, collector, cancelled)
                except BaseException as exc:  # surfaced to the consumer below
                    outcome["error"] = exc
                finally:
                    collector.end()

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            text, emitted = "", 0
            while (delta := collector.queue.get()) is not None:
                text += delta
                visible, hit = cut_at_stop(text, params.stop)
                limit = len(visible) if hit else safe_prefix_length(visible, params.stop)
                if limit > emitted:
                    yield visible[emitted:limit]
                    emitted = limit
            thread.join()
            if "error" in outcome:
                raise outcome["error"]
            final: Generation = outcome["result"]
            if len(final.text) > emitted:
                yield final.text[emitted:]
            yield final
        finally:
            cancelled.set()
            self._lock.release()


_engine: Engine | None = None


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        _engine = Engine()
    return _engine
