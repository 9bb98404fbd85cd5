"""Text generation for any model id the catalog knows.

Serving resolves a model once per request with `Engine.open`, which hands back a `ModelHandle`: the
tokenizer to render and encode the prompt with, and the weights to generate on. The engine then
generates from token ids, never from text it would have to tokenize again.

Keeps one copy of each base model in memory. LoRA fine-tunes are adapters loaded onto that copy and
switched per request (LRU-evicted past `MAX_ADAPTERS`), so serving many fine-tunes costs adapter
memory, not a model each (PITFALLS 10). Full fine-tunes are separate models, few kept at once.
Generation is serialized with a lock: on a CPU a second concurrent generation only slows both.
Deleting a model never waits for that lock: the model is marked deleted at once, so no generation
starts on it again, and its adapter leaves memory as soon as no generation runs.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from tunehouse.errors import InvalidRequest, ModelLoadError
from tunehouse.hardware import default_device
from tunehouse.models.catalog import ModelInfo, base_of, delete_model, get_model, model_not_found, weights_dir
from tunehouse.serve.stops import cut_at_stop, safe_prefix_length

MAX_ADAPTERS = 16
MAX_FULL_MODELS = 2
DEFAULT_CONTEXT = 2048  # for a config that does not say its context length


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
class LoadedModel:
    """One set of weights in memory, its tokenizer, and the LoRA adapters loaded onto it."""

    model: Any
    tokenizer: Any
    context_length: int
    vocab_size: int  # token ids run from 0 to vocab_size - 1
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # model id -> adapter name


@dataclass(frozen=True)
class ModelHandle:
    """A model id resolved once for one request: what to tokenize with and what to generate on."""

    info: ModelInfo
    weights: LoadedModel
    is_base: bool  # generate with every adapter off

    @property
    def model_id(self) -> str:
        return self.info.id

    @property
    def tokenizer(self) -> Any:
        return self.weights.tokenizer

    def encode(self, text: str) -> list[int]:
        """`text`'s token ids as the model reads them (a chat template already holds its special tokens)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def check_prompt(self, token_ids: list[int], *, param: str) -> None:
        """InvalidRequest naming `param` unless the ids are a prompt this model can continue."""
        if not token_ids:
            raise InvalidRequest(f"Invalid '{param}': it is empty; give at least one token.", param=param)
        vocab = self.weights.vocab_size
        bad = next((t for t in token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequest(
                f"Invalid '{param}': token id {bad} is not in this model's vocabulary (0 to {vocab - 1}).",
                param=param,
            )
        context = self.weights.context_length
        if len(token_ids) >= context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens; the prompt has {len(token_ids)}.",
                param=param,
                code="context_length_exceeded",
            )


class _StopCriteria(StoppingCriteria):
    """Ends generation at a stop sequence or when the client went away."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: list[str], cancelled: threading.Event) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = stops
        self.cancelled = cancelled

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = self.cancelled.is_set()
        if self.stops and not done:
            text = self.tokenizer.decode(input_ids[0, self.prompt_len :], skip_special_tokens=True)
            done = cut_at_stop(text, self.stops)[1]
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _RejectBrokenLogits(LogitsProcessor):
    """Fails the request when the model's logits hold NaN or +inf: no token can be drawn from them."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if (scores.isnan() | scores.isposinf()).any():
            raise ModelLoadError(
                f"The model '{self.model_id}' computes NaN or infinite logits: its weights are broken.", param="model"
            )
        return scores


class _TextCollector:
    """A minimal streamer: decodes the new tokens and hands out text deltas to a queue."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
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


def _adapter_name(model_id: str) -> str:
    return "a" + hashlib.sha1(model_id.encode()).hexdigest()[:16]


class Engine:
    def __init__(self) -> None:
        self._generating = threading.Lock()  # one generation at a time; adapters change only under it
        self._loading = threading.Lock()  # one model read from disk at a time, so none is read twice
        self._registry = threading.Lock()  # the three collections below; held for a lookup or an update only
        self._bases: dict[str, LoadedModel] = {}
        self._full: OrderedDict[str, LoadedModel] = OrderedDict()
        self._deleted: set[str] = set()
        self.device = default_device()

    # --- resolving a model id to weights in memory ---------------------------------------------------
    def open(self, model_id: str) -> ModelHandle:
        """Resolve `model_id` for one request, loading its weights on first use.

        ModelNotFound if the catalog does not know it (or it was deleted), ModelLoadError if its
        weights do not load. A LoRA adapter is loaded onto its base when it first generates.
        """
        info = get_model(model_id)
        weights = self._weights(info)
        if model_id in self._deleted:
            raise model_not_found(model_id)
        return ModelHandle(info=info, weights=weights, is_base=info.kind == "base")

    def _weights(self, info: ModelInfo) -> LoadedModel:
        """The weights `info` generates on (its base model's for an adapter), loaded on first use."""
        if info.adapter:
            info = base_of(info)
        cache = self._bases if info.kind == "base" else self._full
        loaded = self._cached(cache, info.id)
        if loaded is None:
            with self._loading:
                loaded = self._cached(cache, info.id)  # another request may have loaded it meanwhile
                if loaded is None:
                    path = weights_dir(info) if info.kind == "base" else info.path
                    loaded = self._load_folder(info.id, str(path))
                    with self._registry:
                        if info.id in self._deleted:  # deleted while it loaded
                            raise model_not_found(info.id)
                        cache[info.id] = loaded
                        if len(self._full) > MAX_FULL_MODELS:  # requests holding it keep it until they end
                            self._full.popitem(last=False)
        return loaded

    def _cached(self, cache: dict[str, LoadedModel], model_id: str) -> LoadedModel | None:
        with self._registry:
            loaded = cache.get(model_id)
            if loaded is not None and cache is self._full:
                self._full.move_to_end(model_id)  # the least recently used full model leaves first
            return loaded

    def _load_folder(self, model_id: str, path: str) -> LoadedModel:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            model = model.to(self.device).eval()
        except Exception as exc:  # whatever a broken folder raises, it is the model's fault, not the request's
            raise ModelLoadError(f"The model '{model_id}' could not be loaded: {exc}", param="model") from exc
        context = getattr(model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT
        vocab = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
        return LoadedModel(model=model, tokenizer=tokenizer, context_length=context, vocab_size=vocab)

    def _activate_adapter(self, loaded: LoadedModel, model: ModelInfo) -> None:
        """Switch `model`'s adapter on, loading it first if needed; under the generation lock."""
        from peft import PeftModel

        name = _adapter_name(model.id)
        if model.id not in loaded.adapters:
            try:
                if isinstance(loaded.model, PeftModel):
                    loaded.model.load_adapter(str(model.path), adapter_name=name)
                else:
                    loaded.model = PeftModel.from_pretrained(loaded.model, str(model.path), adapter_name=name).eval()
            except Exception as exc:  # a missing or broken adapter folder
                raise ModelLoadError(f"The model '{model.id}' could not be loaded: {exc}", param="model") from exc
            loaded.adapters[model.id] = name
            if len(loaded.adapters) > MAX_ADAPTERS:
                self._drop_adapter(loaded, next(iter(loaded.adapters)))
        loaded.adapters.move_to_end(model.id)
        loaded.model.set_adapter(name)

    def _drop_adapter(self, loaded: LoadedModel, model_id: str) -> None:
        """Remove an adapter from memory; under the generation lock."""
        loaded.model.delete_adapter(loaded.adapters.pop(model_id))
        if not loaded.adapters:  # PEFT cannot disable its last adapter once deleted: unwrap the base
            loaded.model = loaded.model.unload()

    def _unload_deleted(self) -> None:
        """Drop the adapters of deleted models; under the generation lock."""
        with self._registry:
            bases, deleted = list(self._bases.values()), set(self._deleted)
        for loaded in bases:
            for model_id in [m for m in loaded.adapters if m in deleted]:
                self._drop_adapter(loaded, model_id)

    def forget(self, model_id: str) -> None:
        """Take a deleted model out of service now, without waiting for a running generation.

        No generation starts on it after this returns; one already running finishes with the weights
        it holds, and its adapter is unloaded when that generation ends.
        """
        with self._registry:
            self._deleted.add(model_id)
            self._full.pop(model_id, None)
        if self._generating.acquire(blocking=False):
            try:
                self._unload_deleted()
            finally:
                self._generating.release()

    def delete(self, model_id: str) -> None:
        """Delete a fine-tuned model: its catalog entry and files, and its weights in memory."""
        delete_model(model_id)
        self.forget(model_id)

    # --- generation --------------------------------------------------------------------------------
    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the engine for one generation, then unload what was deleted while it ran."""
        with self._generating:
            try:
                yield
            finally:
                self._unload_deleted()

    def _run(
        self,
        handle: ModelHandle,
        prompt_ids: list[int],
        params: SamplingParams,
        streamer: Any,
        cancelled: threading.Event,
    ) -> Generation:
        if handle.model_id in self._deleted:
            raise model_not_found(handle.model_id)
        if handle.info.adapter:
            self._activate_adapter(handle.weights, handle.info)
        model, tokenizer = handle.weights.model, handle.tokenizer
        prompt_len = len(prompt_ids)
        max_tokens = min(params.max_tokens, handle.weights.context_length - prompt_len)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)  # (1, T)
        stopper = _StopCriteria(tokenizer, prompt_len, params.stop, cancelled)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_tokens,
            "do_sample": sample,
            "logits_processor": LogitsProcessorList([_RejectBrokenLogits(handle.model_id)]),
            "stopping_criteria": StoppingCriteriaList([stopper]),
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "streamer": streamer,
        }
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        adapters_off = (
            model.disable_adapter() if handle.is_base and hasattr(model, "disable_adapter") else nullcontext()
        )
        with torch.inference_mode(), adapters_off:
            output = model.generate(input_ids=input_ids, **kwargs)
        new_tokens = output[0, prompt_len:].tolist()
        text, hit_stop = cut_at_stop(tokenizer.decode(new_tokens, skip_special_tokens=True), params.stop)
        ended_by_eos = bool(new_tokens) and new_tokens[-1] == tokenizer.eos_token_id
        finish = "stop" if (hit_stop or ended_by_eos or len(new_tokens) < max_tokens) else "length"
        return Generation(text=text, finish_reason=finish, prompt_tokens=prompt_len, completion_tokens=len(new_tokens))

    def generate(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """Continue `prompt_ids` (checked with `handle.check_prompt`); `max_tokens` is cut to the context."""
        with self._exclusive():
            return self._run(handle, prompt_ids, params, None, threading.Event())

    def stream(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams) -> Iterator[str | Generation]:
        """Yields text deltas (stop sequences withheld), then the final Generation.

        Closing the iterator early (the client went away) stops the generation at its next token.
        """
        cancelled = threading.Event()
        collector = _TextCollector(handle.tokenizer)
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                with self._exclusive():
                    outcome["result"] = self._run(handle, prompt_ids, params, collector, cancelled)
            except BaseException as exc:  # surfaced to the consumer below
                outcome["error"] = exc
            finally:
                collector.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
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
            cancelled.set()  # the worker releases the engine at its next token, without anyone waiting
