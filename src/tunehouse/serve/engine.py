"""Text generation for any model id the catalog knows: a continuous-batching engine.

Serving resolves a model once per request with `Engine.open`, which hands back a `ModelHandle`: the
tokenizer to render and encode the prompt with, and the weights to generate on. The engine then
generates from token ids, never from text it would have to tokenize again.

One scheduler thread runs every generation. At each step it admits waiting requests into the running
batch and drops those that finished, were cancelled or whose client hung up; it packs one token of
every decoding sequence and chunks of prompts still prefilling (at most `STEP_TOKENS` in all, so a long
prompt does not stall running streams) into one batched forward pass per model (`serve/batch/`), then
draws each row's token with that row's own sampling (temperature, top-p, its own seeded generator,
penalties, logit bias and constraint). Each sequence has its own KV cache, freed when it ends.

Keeps one copy of each base model in memory. LoRA fine-tunes are adapters read onto that copy on
their first request (a job that just finished serves with no restart) and evicted least recently
used past `MAX_ADAPTERS` or `ADAPTER_BUDGET_BYTES`; rows for different adapters of one base share a
step, each adding its own low-rank update (PITFALLS 10). Full fine-tunes are separate models, few kept
at once, under the same scheduler. Prompt blocks are kept in a prefix cache per model and adapter, so
a system prompt sent with every request, or the `n` choices of one request, is computed once
(`Generation.cached_tokens`); the `n` choices of a prompt share its prefill outright.

The batched forward pass covers Llama-family models (`serve/batch/llama.py`) in bf16 where the hardware
computes it fast, fp32 elsewhere; such a model is read in that dtype only. Other architectures,
adapters it cannot batch (DoRA, adapted embeddings), and requests for log-probabilities
(`SamplingParams.logprobs`, `prompt_logprobs`: their records are the fp32 model's own) run on the
Hugging Face `generate` path, whose fp32 model is read on the first such request (`LoadedModel.model`),
one at a time on the same thread between steps (`serve/logprobs.py` records them; with `prompt_logprobs` the prompt is first
scored in one forward pass whose cache the generation continues from; `max_tokens=0` scores without
generating).

Requests wait in one bounded line. A request first resolves its model and tokenizes its prompt on
the engine's preparation threads (`prepare`), then joins the scheduler (`submit`); neither stage ever
holds the threads that serve other routes. Past `max_queued` waiting requests
(TUNEHOUSE_MAX_QUEUED_GENERATIONS) a new one is refused with ServerBusy (429). A caller that gives
up drops its request from the line, or ends its sequences at the next step; `close` does that to
every request when the server stops. While a child process (a training job) runs beside the server,
the engine computes on TUNEHOUSE_SERVE_THREADS cores, the trainer on the rest; otherwise on all.

Deleting a model never waits for a generation: the model is marked deleted at once, so no
generation starts on it again; running ones finish on the weights they hold.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import hashlib
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import cache, partial
from typing import Any, ParamSpec, TypeVar, cast

import psutil
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from tunehouse.config import settings
from tunehouse.errors import InvalidRequest, ModelLoadError, ServerBusy
from tunehouse.hardware import bf16_supported, default_device
from tunehouse.models.catalog import ModelInfo, delete_model, get_model, model_not_found, weights_dir, weights_of
from tunehouse.serve import metrics
from tunehouse.serve.batch.kv import BLOCK, PrefixCache, SequenceCache
from tunehouse.serve.batch.llama import BatchedLlama, Row, supports
from tunehouse.serve.batch.lora import LoraWeights, UnsupportedAdapter, load_lora
from tunehouse.serve.batch.sampling import BrokenLogits, RowSampler
from tunehouse.serve.constraint import ConstraintFactory, TokenConstraint, adjust_logits
from tunehouse.serve.logprobs import LogprobRecorder, TokenLogprob, TokenSpelling, prompt_logprobs, within_text
from tunehouse.serve.stops import cut_at_stop, safe_prefix_length

MAX_ADAPTERS = 16
ADAPTER_BUDGET_BYTES = 256 * 2**20  # LoRA weights kept per base model, least recently used out first
PREFIX_CACHE_BYTES = 128 * 2**20  # prompt blocks kept per model for requests that share a prefix
KV_CACHE_BYTES = 512 * 2**20  # running sequences' caches: no new request is admitted past this
MAX_BATCH = 32  # sequences in the running batch
STEP_TOKENS = 256  # tokens one step computes: every decoding sequence's next, then prompt chunks
THREADS_CHECK_S = 1.0  # how often the scheduler looks for a training child to leave cores to
MAX_FULL_MODELS = 2
DEFAULT_CONTEXT = 2048  # for a config that does not say its context length
PREPARE_THREADS = 2  # requests resolving their model and tokenizing at once; the rest wait without a thread
P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class SamplingParams:
    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None
    """Record each generated token's log-probability with this many most likely alternatives; None: don't."""
    prompt_logprobs: bool = False
    """Record the prompt's tokens too (legacy `echo`), with `logprobs` alternatives each."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    constraint: ConstraintFactory | None = None
    """Makes each choice's TokenConstraint (structured output); None: any token may follow."""

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias or self.constraint)


@dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache (or the choice it shares a prompt with)."""
    logprobs: list[TokenLogprob] | None = None
    """The generated tokens (an end-of-sequence one too, as OpenAI's; those after a stop sequence's
    start cut off), when `logprobs` was asked."""
    prompt_logprobs: list[TokenLogprob] | None = None
    """Every prompt token, the first without a log-probability, when `prompt_logprobs` was asked."""


@dataclass(frozen=True)
class TextDelta:
    """A piece of a streamed choice's text and the records of the tokens it completes (when asked)."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class ScoredPrompt:
    """A streamed choice's prompt records (`prompt_logprobs`), handed out before its first delta."""

    logprobs: list[TokenLogprob]


@dataclass
class LoadedModel:
    """One set of weights in memory, its tokenizer, and the LoRA adapters loaded onto it."""

    hf: Any  # the Hugging Face model generate's path runs on; None until a request needs it (see `model`)
    tokenizer: Any
    context_length: int
    vocab_size: int  # token ids run from 0 to vocab_size - 1
    spelling: TokenSpelling
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # model id -> PEFT adapter name
    batched: BatchedLlama | None = None  # the batched forward pass; None: generate's path only
    loras: OrderedDict[str, LoraWeights] = field(default_factory=OrderedDict)  # model id -> batched adapter
    prefix: PrefixCache = field(default_factory=lambda: PrefixCache(PREFIX_CACHE_BYTES))
    folder: str = ""  # where the weights are read from
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def model(self) -> Any:
        """The Hugging Face model in float32. Where the batched pass serves a model, this is read from
        the folder only when a request first takes generate's path (logprobs, a DoRA adapter), so a
        server that never needs it never holds a float32 copy of the weights beside the batched one."""
        if self.hf is None:
            try:
                self.hf = _read_model(self.folder, torch.float32, self.device)
            except Exception as exc:  # the folder changed or went since the batched weights were read
                raise ModelLoadError(f"The model at {self.folder} could not be loaded: {exc}", param="model") from exc
        return self.hf

    @model.setter
    def model(self, value: Any) -> None:
        self.hf = value


def _read_model(folder: str, dtype: torch.dtype, device: torch.device) -> Any:
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.to(device).eval()


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

    @property
    def spelling(self) -> TokenSpelling:
        return self.weights.spelling

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

    def __init__(
        self,
        tokenizer: Any,
        prompt_len: int,
        stops: list[str],
        cancelled: threading.Event,
        request: _RequestLogits | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = stops
        self.cancelled = cancelled
        self.request = request

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = self.cancelled.is_set() or (self.request is not None and self.request.done(input_ids))
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
            raise _broken_weights(self.model_id)
        return scores


class _RequestLogits(LogitsProcessor):
    """A request's logit bias, penalties and constraint (`serve/constraint.py`), on a one-row batch."""

    def __init__(self, params: SamplingParams, prompt_len: int) -> None:
        self.params = params
        self.prompt_len = prompt_len
        self.constraint: TokenConstraint | None = params.constraint() if params.constraint else None
        self._accepted = 0  # generated tokens the constraint has been told of

    def sync(self, input_ids: torch.Tensor) -> list[int]:
        """The tokens generated so far, each told to the constraint once."""
        generated = input_ids[0, self.prompt_len :].tolist()
        if self.constraint is not None:
            for token_id in generated[self._accepted :]:
                self.constraint.accept(token_id)
        self._accepted = len(generated)
        return generated

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = self.sync(input_ids)
        p = self.params
        adjust_logits(
            scores[0],
            generated,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            logit_bias=p.logit_bias,
            constraint=self.constraint,
        )
        return scores

    def done(self, input_ids: torch.Tensor) -> bool:
        """True once the constraint's grammar is complete with the tokens drawn so far."""
        self.sync(input_ids)
        return self.constraint is not None and self.constraint.is_done()


def _broken_weights(model_id: str) -> ModelLoadError:
    return ModelLoadError(
        f"The model '{model_id}' computes NaN or infinite logits: its weights are broken.", param="model"
    )


class _TextCollector:
    """The streamer `generate()` drives: decodes the new tokens and emits text deltas, holding back
    what may still turn out to be the start of a stop sequence. With a recorder, each delta carries the
    records of the tokens whose text it completes."""

    def __init__(self, tokenizer: Any, stops: list[str], emit: Callable[[TextDelta | ScoredPrompt], None]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.emit = emit
        self.recorder: LogprobRecorder | None = None
        self.token_ids: list[int] = []
        self._emitted = 0
        self._seen_prompt = False
        self._unsent: list[TokenLogprob] = []  # taken from the recorder, not sent yet
        self._sent = 0

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate() first puts the prompt
            self._seen_prompt = True
            return
        self.add(value.reshape(-1).tolist())

    def add(self, new_ids: list[int]) -> None:
        """Take newly generated tokens and emit what text of theirs is safe to show."""
        self.token_ids += new_ids
        if self.recorder is not None:
            self._unsent += [self.recorder.take(token_id) for token_id in new_ids]
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return
        visible, hit = cut_at_stop(text, self.stops)
        self._send(visible, len(visible) if hit else safe_prefix_length(visible, self.stops))

    def end(self) -> None:
        pass

    def finish(self, result: Generation) -> None:
        """Emit the rest of the final text (what was held back for a stop sequence that never came) and
        the records of the generation's tokens not sent yet, so the stream's records are the result's."""
        records, self._unsent = (result.logprobs or [])[self._sent :], []
        self._send(result.text, len(result.text), records)

    def _send(self, text: str, limit: int, records: list[TokenLogprob] | None = None) -> None:
        if records is None:  # the tokens whose text is all out once `limit` characters are
            done = 0
            while (
                done < len(self._unsent) and self._unsent[done].span[1] <= limit and self._unsent[done].span[0] < limit
            ):
                done += 1
            records, self._unsent = self._unsent[:done], self._unsent[done:]
        if limit > self._emitted or records:
            self.emit(TextDelta(text[self._emitted : limit], records))
            self._emitted = max(limit, self._emitted)
            self._sent += len(records)


StreamEvent = tuple[int, "TextDelta | ScoredPrompt | Generation"]
"""(choice index, its scored prompt, a text delta or its final Generation), as a stream hands them out."""


@dataclass(eq=False)  # compared by identity: a queue removes this very item
class _Work:
    """One request's generations, in line for the generation thread: its prompts run back to back."""

    handle: ModelHandle
    prompts: list[list[int]]  # one per choice
    params: SamplingParams
    sink: Callable[[StreamEvent | None], None] | None  # deltas and Generations as they come; None at the end
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[list[Generation]] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    results: dict[int, Generation] = field(default_factory=dict)  # choice index -> its Generation, as each ends
    shown: int = 0  # choices whose events are all handed out: a stream gives out one choice after another
    held: dict[int, list[StreamEvent]] = field(default_factory=dict)  # later choices' events, until their turn


@dataclass(eq=False)
class _Sequence:
    """One choice of a request in the running batch."""

    work: _Work
    index: int
    loaded: LoadedModel
    prompt: list[int]
    max_tokens: int
    sampler: RowSampler
    salt: str  # the prefix cache's key for the weights that compute it: its adapter's model id, or ""
    lora: LoraWeights | None
    cache: SequenceCache | None = None  # None until it starts prefilling (a twin: until its leader's prefill ends)
    leader: _Sequence | None = None  # an earlier choice with the same prompt, whose prefill this one copies
    collector: _TextCollector | None = None
    cached_tokens: int = 0
    last_token_at: float = 0.0

    @property
    def decoding(self) -> bool:
        return self.cache is not None and self.cache.length >= len(self.prompt)


_NOT_BATCHED = object()  # `Engine._lora`: this adapter runs on generate's path


def _on_own_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args)` on a thread that ends with it. A thread that runs PyTorch's parallel operations keeps
    its own OpenMP workers until it ends, and while any thread but the scheduler keeps some, libgomp
    counts more workers than cores and puts every worker to sleep between operations: the scheduler's
    steps then take a third longer (BENCHMARKS.md). Loading weights is such work."""
    outcome: list[Any] = []
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome.append((True, context.run(fn, *args, **kwargs)))
        except BaseException as exc:  # handed to the caller, as a direct call would raise it
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="tunehouse-load")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc, where the process runs on it (musl and others have no malloc_trim)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def _return_freed_memory() -> None:
    """Hand the memory the batch freed back to the system, once the batch is empty. Caches and
    activations of every size come and go with each request; glibc keeps what they freed for reuse,
    and a server's RSS crept up by some 100 MB each 16-client round of `tunehouse bench serve`."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _adapter_name(model_id: str) -> str:
    return "a" + hashlib.sha1(model_id.encode()).hexdigest()[:16]


class Engine:
    def __init__(self, max_queued: int | None = None) -> None:
        self.max_queued = settings().max_queued_generations if max_queued is None else max_queued
        self._generating = threading.Lock()  # one generation at a time; adapters change only under it
        self._loading = threading.Lock()  # one model read from disk at a time, so none is read twice
        self._registry = threading.Lock()  # the three collections below; held for a lookup or an update only
        self._bases: dict[str, LoadedModel] = {}
        self._full: OrderedDict[str, LoadedModel] = OrderedDict()
        self._deleted: set[str] = set()
        self.device = default_device()
        # The line of requests: preparing (model resolved, prompt tokenized) on a few threads of their own,
        # then waiting for the one generation thread. Guarded by `_line_changed`.
        self._line_changed = threading.Condition()
        self._preparing = 0
        self._waiting: deque[_Work] = deque()
        self._running: set[_Work] = set()  # admitted, not done
        self._closed = False
        self._threads = 0  # torch threads the scheduler computes with (`_use_threads`)
        self._threads_checked = -THREADS_CHECK_S
        self.dtype = torch.bfloat16 if bf16_supported(self.device) else torch.float32  # the batched pass's
        self._generator_thread: threading.Thread | None = None
        self._preparers = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="tunehouse-prepare")

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
        """The weights `info` generates on (for an adapter, those it was trained on), loaded on first use."""
        info = weights_of(info)
        cache = self._bases if info.kind == "base" else self._full
        loaded = self._cached(cache, info.id)
        if loaded is None:
            with self._loading:
                loaded = self._cached(cache, info.id)  # another request may have loaded it meanwhile
                if loaded is None:
                    path = weights_dir(info) if info.kind == "base" else info.path
                    loaded = _on_own_thread(self._load_folder, info.id, str(path))
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
            batchable = supports(AutoConfig.from_pretrained(path))
            # A model the batched pass serves is read in its dtype (no float32 copy; see LoadedModel.model)
            model = _read_model(path, self.dtype if batchable else torch.float32, self.device)
        except Exception as exc:  # whatever a broken folder raises, it is the model's fault, not the request's
            raise ModelLoadError(f"The model '{model_id}' could not be loaded: {exc}", param="model") from exc
        context = getattr(model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT
        vocab = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
        spelling = TokenSpelling(tokenizer)
        batched = BatchedLlama(model, self.dtype, path) if batchable else None
        return LoadedModel(
            hf=None if batchable else model,
            tokenizer=tokenizer,
            context_length=context,
            vocab_size=vocab,
            spelling=spelling,
            batched=batched,
            folder=path,
            device=self.device,
        )

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
            for loaded in self._bases.values():
                loaded.loras.pop(model_id, None)  # running sequences keep theirs until they end
        if self._generating.acquire(blocking=False):
            try:
                self._unload_deleted()
            finally:
                self._generating.release()

    def delete(self, model_id: str) -> None:
        """Delete a fine-tuned model: its catalog entry and files, and its weights in memory."""
        delete_model(model_id)
        self.forget(model_id)

    # --- the line: preparation, then the generation thread -----------------------------------------
    async def prepare(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args)` — resolving a model, rendering and tokenizing a prompt — on the engine's own
        preparation threads, so a model that loads or a long prompt that tokenizes holds neither the
        event loop nor the threads that serve other routes.

        ServerBusy when `max_queued` requests already wait (preparing, or for the generation thread).
        """
        with self._line_changed:
            self._check_room(self._preparing + len(self._waiting))
            self._preparing += 1
        try:
            # In the caller's context: resolving a model sees only the request's project (`store/projects.py`).
            call = partial(contextvars.copy_context().run, fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._preparers, call)
        finally:
            with self._line_changed:
                self._preparing -= 1

    def submit(
        self,
        handle: ModelHandle,
        prompts: list[list[int]],
        params: SamplingParams,
        sink: Callable[[StreamEvent | None], None] | None = None,
    ) -> _Work:
        """Put one request's generations in line for the generation thread: `prompts` (one per choice)
        run back to back, the first with `params.seed`, the next ones continuing its random state.

        `sink`, when given, receives each choice's text deltas and its Generation on the generation
        thread, then None. ServerBusy when `max_queued` generations already wait.
        """
        work = _Work(handle, prompts, params, sink)
        with self._line_changed:
            self._check_room(len(self._waiting))
            self._waiting.append(work)
            if self._generator_thread is None:
                # A daemon: a generation never keeps a stopping server alive (close() also stops it).
                self._generator_thread = threading.Thread(target=self._serve, name="tunehouse-generate", daemon=True)
                self._generator_thread.start()
            self._line_changed.notify()
        return work

    def _check_room(self, in_line: int) -> None:
        """ServerBusy unless one more request may wait; under `_line_changed`."""
        if self._closed:
            raise ServerBusy("The server is shutting down; retry once it is back.")
        if in_line >= self.max_queued:
            raise ServerBusy(
                f"The server is busy: {in_line} requests are already waiting for the model. Retry in a moment."
            )

    def cancel(self, work: _Work) -> None:
        """Give up on `work`: if it still waits it never runs; if it runs it stops at its next token."""
        work.cancelled.set()
        with self._line_changed:
            waiting = work in self._waiting
            if waiting:
                self._waiting.remove(work)
        if waiting:
            work.future.cancel()
            self._emit(work, None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop generating, for a server that stops: what waits is dropped, the running generations end
        at their next step, and nothing new is accepted."""
        with self._line_changed:
            self._closed = True
            dropped, self._waiting = list(self._waiting), deque()
            running = list(self._running)
            self._line_changed.notify_all()
        for work in dropped:
            work.cancelled.set()
            work.future.cancel()
            self._emit(work, None)
        for work in running:
            work.cancelled.set()
        self._preparers.shutdown(wait=False, cancel_futures=True)
        if self._generator_thread is not None:
            self._generator_thread.join(timeout)

    @torch.inference_mode()  # caches, logits and what constraints mask: no autograd anywhere
    def _serve(self) -> None:
        """The scheduler thread: admits waiting requests at every step, runs one step of every model
        with sequences in the batch, and hands out what each sequence drew."""
        running: list[_Sequence] = []
        while True:
            with self._line_changed:
                while not self._waiting and not running and not self._closed:
                    self._line_changed.wait()
                if self._closed:
                    admitted: list[_Work] = []
                else:
                    admitted = self._admit(running)
                closed = self._closed
                metrics.set_queue(len(self._running), len(self._waiting))
            if closed:
                for sequence in running:
                    self._end(sequence, running, stopped=True)
                return
            for work in admitted:
                self._start(work, running)
            self._use_threads()
            for loaded in {id(s.loaded): s.loaded for s in running}.values():
                self._step(loaded, [s for s in running if s.loaded is loaded], running)
            in_use = sum(s.cache.nbytes for s in running if s.cache is not None)
            metrics.set_kv_cache_usage(min(1.0, in_use / KV_CACHE_BYTES))
            if not running:
                self._unload_deleted_now()
                _return_freed_memory()

    def _admit(self, running: list[_Sequence]) -> list[_Work]:
        """The waiting requests that join the batch now, in the order they came; under `_line_changed`."""
        admitted: list[_Work] = []
        seats = MAX_BATCH - len(running)
        in_use = sum(s.cache.nbytes for s in running if s.cache is not None)
        while self._waiting and (not running and not admitted or (seats > 0 and in_use < KV_CACHE_BYTES)):
            work = self._waiting.popleft()
            self._running.add(work)
            admitted.append(work)
            seats -= len(work.prompts)
        return admitted

    def _start(self, work: _Work, running: list[_Sequence]) -> None:
        """Put `work`'s choices into the batch, or run it whole on generate's path (see the module doc)."""
        if work.cancelled.is_set() or not work.future.set_running_or_notify_cancel():
            work.future.cancel()  # its caller gave up while it waited, or the engine closed: it never runs
            self._finish_work(work)
            return
        handle, params = work.handle, work.params
        try:
            if handle.model_id in self._deleted:
                raise model_not_found(handle.model_id)
            lora = self._lora(handle) if handle.info.adapter else None
        except Exception as exc:
            work.future.set_exception(exc)
            self._finish_work(work)
            return
        loaded = handle.weights
        if loaded.batched is None or lora is _NOT_BATCHED or params.logprobs is not None or params.prompt_logprobs:
            self._perform(work)
            with self._line_changed:
                self._running.discard(work)
            return
        salt = handle.model_id if isinstance(lora, LoraWeights) else ""
        leaders: dict[tuple[int, ...], _Sequence] = {}
        for index, prompt in enumerate(work.prompts):
            seed = None if params.seed is None else params.seed + index
            sampler = RowSampler(
                temperature=params.temperature,
                top_p=params.top_p,
                seed=seed,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                logit_bias=params.logit_bias,
                constraint=params.constraint,
            )
            sequence = _Sequence(
                work=work,
                index=index,
                loaded=loaded,
                prompt=prompt,
                max_tokens=min(params.max_tokens, loaded.context_length - len(prompt)),
                sampler=sampler,
                salt=salt,
                lora=lora if isinstance(lora, LoraWeights) else None,
                leader=leaders.get(tuple(prompt)),
            )
            if work.sink is not None:
                sequence.collector = _TextCollector(
                    handle.tokenizer, params.stop, partial(self._emit_choice, work, index)
                )
            if sequence.max_tokens <= 0:
                self._end(sequence, running)
                continue
            if sequence.leader is None:
                leaders[tuple(prompt)] = sequence
                sequence.cache = loaded.batched.new_cache()
                sequence.cached_tokens = loaded.prefix.restore(prompt, salt, sequence.cache)
            running.append(sequence)

    def _step(self, loaded: LoadedModel, sequences: list[_Sequence], running: list[_Sequence]) -> None:
        """One forward pass of `loaded` over its sequences' next tokens and prompt chunks, then a draw for
        every sequence whose prompt is all in."""
        assert loaded.batched is not None
        budget = STEP_TOKENS
        planned: list[tuple[_Sequence, Row]] = []
        for sequence in sequences:
            if sequence.work.cancelled.is_set():
                self._end(sequence, running, stopped=True)
            elif sequence.decoding:
                assert sequence.cache is not None
                planned.append((sequence, Row([sequence.sampler.generated[-1]], sequence.cache, sequence.lora)))
                budget -= 1
        for sequence in sequences:
            if budget <= 0:
                break
            if sequence.cache is None or sequence.decoding or sequence.work.cancelled.is_set():
                continue
            done = sequence.cache.length
            end = len(sequence.prompt)
            if done + budget < end:
                end = (done + budget) // BLOCK * BLOCK  # whole blocks: see `BatchedLlama._attend`
            if end <= done:
                break
            chunk = sequence.prompt[done:end]
            planned.append((sequence, Row(chunk, sequence.cache, sequence.lora)))
            budget -= len(chunk)
        if not planned:
            return
        planned.sort(key=lambda item: 0 if item[1].lora is None else id(item[1].lora))  # one group per adapter
        try:
            logits = loaded.batched.forward([row for _, row in planned])
        except Exception as exc:  # nothing this step computed can be trusted: its requests fail
            for sequence, _ in planned:
                self._fail(sequence.work, exc, running)
            return
        top, best = logits.max(-1)  # one pass: a row's max is NaN or +inf where any of its logits is
        broken, argmax = (top.isnan() | top.isposinf()).tolist(), best.tolist()
        for index, ((sequence, _), row_logits) in enumerate(zip(planned, logits, strict=True)):
            if sequence.work.future.done() or not sequence.decoding:
                continue  # failed with a companion choice, or still prefilling
            checked = (broken[index], argmax[index])
            if not sequence.sampler.generated:
                self._prefilled(sequence, row_logits, running, checked)
            self._draw(sequence, row_logits, running, checked)

    def _prefilled(
        self, sequence: _Sequence, logits: torch.Tensor, running: list[_Sequence], checked: tuple[bool, int]
    ) -> None:
        """`sequence`'s prompt is all in its cache: keep its blocks, and start its twins from a copy."""
        assert sequence.cache is not None
        sequence.loaded.prefix.store(sequence.prompt, sequence.salt, sequence.cache)
        metrics.count_tokens(len(sequence.prompt) - sequence.cached_tokens, 0)
        for twin in [s for s in running if s.leader is sequence]:
            twin.leader, twin.cache = None, sequence.cache.fork()
            twin.cached_tokens = len(twin.prompt)
            self._draw(twin, logits.clone(), running, checked)

    def _draw(
        self, sequence: _Sequence, logits: torch.Tensor, running: list[_Sequence], checked: tuple[bool, int]
    ) -> None:
        """Draw `sequence`'s next token, hand out its text, and end it if it is done. `checked`: whether
        `logits` are broken, and their argmax (see `RowSampler.draw`)."""
        try:
            token = sequence.sampler.draw(logits, checked)
        except BrokenLogits:
            self._fail(sequence.work, _broken_weights(sequence.work.handle.model_id), running)
            return
        except Exception as exc:  # a constraint that failed: the request fails, not the batch
            self._fail(sequence.work, exc, running)
            return
        now = time.monotonic()
        if len(sequence.sampler.generated) == 1:
            metrics.observe_first_token(now - sequence.work.arrived)
        else:
            metrics.observe_inter_token(now - sequence.last_token_at)
        sequence.last_token_at = now
        if sequence.collector is not None:
            sequence.collector.add([token])
        tokenizer, stops = sequence.work.handle.tokenizer, sequence.work.params.stop
        generated = sequence.sampler.generated
        ended = (
            token == tokenizer.eos_token_id
            or len(generated) >= sequence.max_tokens
            or sequence.sampler.done
            or (bool(stops) and cut_at_stop(tokenizer.decode(generated, skip_special_tokens=True), stops)[1])
        )
        if ended:
            self._end(sequence, running)

    def _end(self, sequence: _Sequence, running: list[_Sequence], *, stopped: bool = False) -> None:
        """Take `sequence` out of the batch (its cache goes with it) and give its choice its Generation."""
        if sequence in running:
            running.remove(sequence)
        sequence.cache = None
        work = sequence.work
        if work.future.done():
            return
        tokenizer, params = work.handle.tokenizer, work.params
        tokens = sequence.sampler.generated
        text, hit_stop = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
        ended_by_eos = bool(tokens) and tokens[-1] == tokenizer.eos_token_id
        finish = (
            "stop"
            if hit_stop or ended_by_eos or sequence.sampler.done or len(tokens) < sequence.max_tokens
            else "length"
        )
        result = Generation(
            text=text,
            finish_reason=finish,
            prompt_tokens=len(sequence.prompt),
            completion_tokens=len(tokens),
            cached_tokens=sequence.cached_tokens,
        )
        if sequence.collector is not None:
            sequence.collector.finish(result)
        self._emit_choice(work, sequence.index, result)
        metrics.count_tokens(0, len(tokens))
        metrics.observe_request(time.monotonic() - work.arrived, "abort" if stopped else finish)
        work.results[sequence.index] = result
        if len(work.results) == len(work.prompts):
            work.future.set_result([work.results[i] for i in range(len(work.prompts))])
            self._finish_work(work)

    def _fail(self, work: _Work, exc: BaseException, running: list[_Sequence]) -> None:
        """End every choice of `work` with `exc`, which its caller raises."""
        for sequence in [s for s in running if s.work is work]:
            running.remove(sequence)
            sequence.cache = None
        if not work.future.done():
            work.future.set_exception(exc)
            self._finish_work(work)

    def _finish_work(self, work: _Work) -> None:
        self._emit(work, None)
        with self._line_changed:
            self._running.discard(work)

    def _use_threads(self) -> None:
        """Compute on every core, or on TUNEHOUSE_SERVE_THREADS while a child process (a trainer) runs."""
        now = time.monotonic()
        if now < self._threads_checked + THREADS_CHECK_S:
            return
        self._threads_checked = now
        training = bool(psutil.Process().children())
        wanted = min(max(1, settings().serve_threads), _cores()) if training else _cores()
        if wanted != self._threads:
            torch.set_num_threads(wanted)
            self._threads = wanted

    def _lora(self, handle: ModelHandle) -> LoraWeights | object:
        """The batched weights of `handle`'s adapter, read on first use; `_NOT_BATCHED` for an adapter the
        batched pass cannot apply (or a model without one). ModelLoadError for a missing or broken folder."""
        loaded, model_id = handle.weights, handle.model_id
        if loaded.batched is None:
            return _NOT_BATCHED
        with self._registry:
            lora = loaded.loras.get(model_id)
            if lora is not None:
                loaded.loras.move_to_end(model_id)
                return lora
        try:
            lora = load_lora(handle.info.path, loaded.batched.dtype, loaded.batched.device)
        except UnsupportedAdapter:
            return _NOT_BATCHED
        except Exception as exc:  # a missing or broken adapter folder
            raise ModelLoadError(f"The model '{model_id}' could not be loaded: {exc}", param="model") from exc
        metrics.count_adapter_load()
        with self._registry:
            loaded.loras[model_id] = lora
            while len(loaded.loras) > MAX_ADAPTERS or (
                len(loaded.loras) > 1 and sum(a.nbytes for a in loaded.loras.values()) > ADAPTER_BUDGET_BYTES
            ):
                loaded.loras.popitem(last=False)  # sequences that use it keep it until they end
        return lora

    def _unload_deleted_now(self) -> None:
        """Drop PEFT adapters of deleted models, when no generate-path generation runs."""
        if self._deleted and self._generating.acquire(blocking=False):
            try:
                self._unload_deleted()
            finally:
                self._generating.release()

    def _perform(self, work: _Work) -> None:
        results: list[Generation] = []
        try:
            with self._exclusive():
                for index, prompt_ids in enumerate(work.prompts):
                    if work.cancelled.is_set():
                        break
                    params = work.params if index == 0 else replace(work.params, seed=None)
                    collector = None
                    if work.sink is not None:
                        collector = _TextCollector(
                            work.handle.tokenizer, params.stop, partial(self._emit_text, work, index)
                        )
                    result = self._run(work.handle, prompt_ids, params, collector, work.cancelled)
                    if collector is not None:
                        collector.finish(result)
                    self._emit(work, (index, result))
                    results.append(result)
        except BaseException as exc:  # the caller raises it
            work.future.set_exception(exc)
        else:
            work.future.set_result(results)
        self._emit(work, None)

    @classmethod
    def _emit_text(cls, work: _Work, index: int, delta: TextDelta | ScoredPrompt) -> None:
        cls._emit(work, (index, delta))

    @classmethod
    def _emit_choice(cls, work: _Work, index: int, item: TextDelta | ScoredPrompt | Generation) -> None:
        """Hand out a batched choice's event in turn: a later choice's events wait until the earlier ones end."""
        if work.sink is None:
            return
        if index != work.shown:
            work.held.setdefault(index, []).append((index, item))
            return
        cls._emit(work, (index, item))
        while isinstance(item, Generation):
            work.shown += 1
            events = work.held.pop(work.shown, [])
            for event in events:
                cls._emit(work, event)
            item = events[-1][1] if events else None  # type: ignore[assignment]

    @staticmethod
    def _emit(work: _Work, event: StreamEvent | None) -> None:
        if work.sink is None:
            return
        try:
            work.sink(event)
        except Exception:  # nobody can read on (the event loop is gone): stop at the next token
            work.cancelled.set()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the engine for one request's generations, then unload what was deleted while they ran."""
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
        collector: _TextCollector | None,
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
        request = _RequestLogits(params, prompt_len) if params.adjusts_logits else None
        stopper = _StopCriteria(tokenizer, prompt_len, params.stop, cancelled, request)
        processors: list[LogitsProcessor] = [_RejectBrokenLogits(handle.model_id)]
        if request is not None:
            processors.append(request)
        recorder = None
        if params.logprobs is not None:
            recorder = LogprobRecorder(handle.spelling, params.logprobs, handle.weights.vocab_size)
            processors.append(recorder)
            if collector is not None:
                collector.recorder = recorder
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": max_tokens,
            "do_sample": sample,
            "logits_processor": LogitsProcessorList(processors),
            "stopping_criteria": StoppingCriteriaList([stopper]),
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "streamer": collector,
        }
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        adapters_off = (
            model.disable_adapter() if handle.is_base and hasattr(model, "disable_adapter") else nullcontext()
        )
        scored = None
        new_tokens: list[int] = []
        with torch.inference_mode(), adapters_off:
            if params.prompt_logprobs:
                scored, cache = self._score_prompt(handle, model, input_ids, params.logprobs or 0)
                if collector is not None:
                    collector.emit(ScoredPrompt(scored))
                if cache is not None:
                    kwargs["cache"] = cache  # generation reads only the last prompt token
            if max_tokens > 0:
                output = model.generate(input_ids=input_ids, **kwargs)
                new_tokens = output[0, prompt_len:].tolist()
        text, hit_stop = cut_at_stop(tokenizer.decode(new_tokens, skip_special_tokens=True), params.stop)
        ended_by_eos = bool(new_tokens) and new_tokens[-1] == tokenizer.eos_token_id
        finish = "stop" if (hit_stop or ended_by_eos or len(new_tokens) < max_tokens) else "length"
        logprobs = None
        if recorder is not None:
            if new_tokens:
                recorder.finish(new_tokens[-1])
            logprobs = within_text(recorder.records, len(text)) if hit_stop else recorder.records
        return Generation(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_len,
            completion_tokens=len(new_tokens),
            logprobs=logprobs,
            prompt_logprobs=scored,
        )

    def _score_prompt(
        self, handle: ModelHandle, model: Any, input_ids: torch.Tensor, top: int
    ) -> tuple[list[TokenLogprob], Any]:
        """The prompt's records from one forward pass over all its tokens but the last, and that pass's
        cache (None for a one-token prompt) for generation to continue from; under inference mode."""
        prompt_ids = input_ids[0].tolist()
        if len(prompt_ids) == 1:
            return prompt_logprobs(input_ids.new_empty((0, 0)), prompt_ids, handle.spelling, top, 0), None
        output = model(input_ids=input_ids[:, :-1], use_cache=True)
        logits = output.logits[0]  # (T-1, V)
        if (logits.isnan() | logits.isposinf()).any():
            raise _broken_weights(handle.model_id)
        records = prompt_logprobs(logits, prompt_ids, handle.spelling, top, handle.weights.vocab_size)
        return records, output.cache

    # --- generation: awaited on an event loop, or called from a thread ---------------------------------
    async def generate_async(
        self, handle: ModelHandle, prompts: list[list[int]], params: SamplingParams
    ) -> list[Generation]:
        """Each prompt's Generation (see `submit`), awaited without holding a thread. Cancelling the
        awaiting task drops them if they still wait, or stops the running one at its next token."""
        work = self.submit(handle, prompts, params)
        try:
            return await asyncio.wrap_future(work.future)
        finally:
            self.cancel(work)  # a no-op once they are done

    async def stream_async(
        self, handle: ModelHandle, prompts: list[list[int]], params: SamplingParams
    ) -> AsyncGenerator[StreamEvent, None]:
        """Each prompt's text deltas (stop sequences withheld), then its Generation, in order, as the
        generation thread makes them. Closing the iterator early (the client went away) drops the work
        if it still waits, or stops it at its next token."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent | None] = asyncio.Queue()

        def sink(event: StreamEvent | None) -> None:  # on the generation thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        work = self.submit(handle, prompts, params, sink=sink)
        try:
            while (event := await events.get()) is not None:
                yield event
            _outcome(work)
        finally:
            self.cancel(work)

    def generate(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """Continue `prompt_ids` (checked with `handle.check_prompt`); `max_tokens` is cut to the context.
        Waits for its turn on the generation thread."""
        work = self.submit(handle, [prompt_ids], params)
        try:
            return _outcome(work, wait=True)[0]
        finally:
            self.cancel(work)

    def stream(
        self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams
    ) -> Iterator[TextDelta | ScoredPrompt | Generation]:
        """Yields the scored prompt (when asked), text deltas (stop sequences withheld), then the final Generation.

        Closing the iterator early (the client went away) stops the generation at its next token.
        """
        events: queue.Queue[StreamEvent | None] = queue.Queue()
        work = self.submit(handle, [prompt_ids], params, sink=events.put)
        try:
            while (event := events.get()) is not None:
                yield event[1]
            _outcome(work)
        finally:
            self.cancel(work)


def _outcome(work: _Work, *, wait: bool = False) -> list[Generation]:
    """`work`'s Generations, or what its generation raised; ServerBusy if the engine closed first."""
    try:
        return work.future.result(timeout=None if wait else 0)
    except CancelledError:
        raise ServerBusy("The server is shutting down; retry once it is back.") from None
