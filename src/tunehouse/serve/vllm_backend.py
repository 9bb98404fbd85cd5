"""Serving on vLLM (`TUNEHOUSE_SERVE_BACKEND=vllm`), for hardware that outgrows the built-in engine.

`VllmEngine` has the built-in `Engine`'s public interface (`open`, `prepare`, `generate_async`,
`stream_async`, `generate`, `stream`, `delete`, `forget`, `close`), so the API, the eval runner and the
graders serve through it unchanged: tunehouse still resolves the model, renders the chat template,
tokenizes, checks the prompt and shapes the reply, usage and errors; vLLM only continues token ids
(its completions endpoint takes a prompt of ids) and batches them continuously.

Each set of weights (a base model, or a full fine-tune) gets its own vLLM server, started on the first
request for it, on a loopback port, with LoRA enabled and runtime adapter loading on. A LoRA fine-tune
is loaded into its weights' server by its `ft:` id on first use (`/v1/load_lora_adapter`), so a job
that finishes later serves with no restart, and unloaded when the model is deleted. Adapters vLLM
cannot serve (DoRA, trained biases, whole-module copies such as `lm_head` in PEFT's `modules_to_save`,
a rank above TUNEHOUSE_VLLM_MAX_LORA_RANK) are refused before they reach it, and so is what only the
built-in engine computes: the prompt's log-probabilities (`echo`) and structured output
(`response_format`, forced tools). Generated tokens' log-probabilities come from vLLM, named by id
and spelled by tunehouse as the built-in engine spells them.

The servers are children of this process: they stop with `close` and, should this process die
without closing, with it (the kernel's parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
from safetensors import safe_open

from tunehouse.config import Settings, settings
from tunehouse.errors import (
    InvalidRequest,
    InvalidValue,
    ModelLoadError,
    ServerBusy,
    ServingBackendUnavailable,
    TunehouseError,
)
from tunehouse.models.catalog import ModelInfo, delete_model, get_model, model_not_found, weights_dir, weights_of
from tunehouse.models.export.adapter import LORA_MARKERS
from tunehouse.models.export.source import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tunehouse.serve import metrics
from tunehouse.serve.engine import (
    DEFAULT_CONTEXT,
    Generation,
    LoadedModel,
    ModelHandle,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from tunehouse.serve.logprobs import TextSpans, TokenLogprob, TokenSpelling, within_text

CHECKOUT_VENV = Path(__file__).resolve().parents[3] / ".venv-vllm"
"""Where `make vllm` installs vLLM, in a source checkout."""
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The `--max-lora-rank` values vLLM accepts."""
CPU_KV_CACHE_GIB = 2  # the KV cache of vLLM's CPU build, unless VLLM_CPU_KVCACHE_SPACE says otherwise
MAX_LORAS = 4  # adapters in one batch (`--max-loras`); TUNEHOUSE_VLLM_ARGS may say otherwise
PREPARE_THREADS = 4  # requests resolving their model at once (the first for a model waits for its server)
POLL_S = 1.0  # how often a starting server is asked whether it is ready
STOP_GRACE_S = 10.0  # how long a server has to stop after SIGTERM before it is killed
REQUEST_TIMEOUT = httpx.Timeout(None, connect=10.0)  # a generation may take as long as it takes
LOG_TAIL_CHARS = 2000
PR_SET_PDEATHSIG = 1
P = ParamSpec("P")
T = TypeVar("T")


# --- what a server is started with ---------------------------------------------------------------------
def vllm_python(config: Settings | None = None) -> Path:
    """The interpreter with vLLM: configured, or the checkout's `.venv-vllm` once `make vllm` finished."""
    config = config or settings()
    if config.vllm_python is not None:
        return config.vllm_python
    if (CHECKOUT_VENV / ".installed").exists():
        return CHECKOUT_VENV / "bin" / "python"
    raise ServingBackendUnavailable(
        "TUNEHOUSE_SERVE_BACKEND=vllm, but no vLLM is installed: run `make vllm` in the tunehouse checkout "
        "(vLLM's CPU build, in .venv-vllm), or point TUNEHOUSE_VLLM_PYTHON at a Python that has vLLM."
    )


def lora_rank_room(max_rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds adapters of rank `max_rank`."""
    room = next((rank for rank in LORA_RANKS if rank >= max_rank), None)
    if room is None or max_rank < 1:
        raise InvalidValue(
            f"TUNEHOUSE_VLLM_MAX_LORA_RANK={max_rank}: vLLM serves LoRA ranks from 1 to {LORA_RANKS[-1]}."
        )
    return room


def server_command(python: Path, folder: Path, name: str, port: int, config: Settings) -> list[str]:
    """The command line of a vLLM server for the weights in `folder`, served as `name`.

    Run as a module rather than the `vllm` script: the CPU build's script looks for a package named
    `vllm` and finds only `vllm-cpu`. Arguments that come later win, so TUNEHOUSE_VLLM_ARGS
    (`--tensor-parallel-size 2`, `--dtype float32`, `--max-loras 8`) overrides tunehouse's.
    """
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(lora_rank_room(config.vllm_max_lora_rank)),
        "--max-loras",
        str(MAX_LORAS),
        *config.vllm_args,
    ]


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a vLLM server runs in: offline (the weights are a local folder; nothing is fetched
    from a hub) and with adapters loadable while it runs."""
    env = dict(os.environ if base is None else base)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    # vLLM's CPU build otherwise reserves 92% of the machine's memory and refuses to start when less is
    # free; GPUs ignore it. The user's own value wins.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    return env


def check_adapter(info: ModelInfo, max_rank: int) -> None:
    """ModelLoadError naming the model unless its adapter folder is one vLLM's LoRA can serve."""
    config_path, weights_path = info.path / ADAPTER_CONFIG, info.path / ADAPTER_WEIGHTS
    try:
        config = json.loads(config_path.read_text())
        with safe_open(str(weights_path), "pt") as tensors:
            names = list(tensors.keys())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"The model '{info.id}' could not be loaded: {exc}", param="model") from exc
    rank = max([int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())])
    whole = sorted({name.split(".weight")[0] for name in names if not any(m in name for m in LORA_MARKERS)})
    problems = [
        problem
        for problem, present in (
            (f"PEFT type {config.get('peft_type')}", config.get("peft_type", "LORA") != "LORA"),
            ("DoRA (use_dora)", bool(config.get("use_dora"))),
            (f"trained biases (bias={config.get('bias')})", config.get("bias", "none") != "none"),
            (f"whole trained modules besides its LoRA matrices ({', '.join(whole[:4])})", bool(whole)),
            (
                f"rank {rank}, above TUNEHOUSE_VLLM_MAX_LORA_RANK={max_rank} (raise it, up to {LORA_RANKS[-1]})",
                rank > max_rank,
            ),
        )
        if present
    ]
    if problems:
        raise ModelLoadError(
            f"The model '{info.id}' cannot be served by vLLM: its adapter has {'; '.join(problems)}. "
            "Serve it with tunehouse's built-in engine (unset TUNEHOUSE_SERVE_BACKEND), or export it with "
            "`tunehouse models export --format merged` and register the merged folder as a base model.",
            param="model",
        )


# --- one vLLM server ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it (its supervisor) ends."""
    with suppress(OSError):  # not Linux: `close` still stops it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class VllmServer:
    """A vLLM server for one set of weights, and the adapters loaded into it."""

    name: str  # the weights' model id, which vLLM serves them as
    folder: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes]
    loaded: LoadedModel | None = None  # the tokenizer and limits tunehouse checks prompts with
    adapters: set[str] = field(default_factory=set)  # model ids loaded as LoRA adapters
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to its process group (vLLM runs its engine in child processes), SIGKILL if it lingers."""
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def launch_server(weights: ModelInfo, folder: Path, config: Settings) -> VllmServer:
    """Start a vLLM server for `weights` from a supervisor thread that lives as long as the process does,
    so the server is ended with this process however it ends."""
    python = vllm_python(config)
    port = _free_port()
    logs = config.home / "vllm"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / (weights.id.replace("/", "--").replace(":", "_") + ".log")
    command = server_command(python, folder, weights.id, port, config)
    started: Future[subprocess.Popen[bytes]] = Future()

    def supervise() -> None:
        try:
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    command,
                    env=server_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, which `stop` signals whole
                    preexec_fn=_die_with_parent,
                )
        except OSError as exc:
            started.set_exception(exc)
            return
        started.set_result(process)
        process.wait()

    threading.Thread(target=supervise, name=f"tunehouse-vllm-{port}", daemon=True).start()
    try:
        process = started.result()
    except OSError as exc:
        raise ServingBackendUnavailable(f"vLLM could not be started ({' '.join(command)}): {exc}") from exc
    return VllmServer(name=weights.id, folder=folder, port=port, log=log, process=process)


def wait_until_ready(server: VllmServer, timeout_s: float, closed: threading.Event) -> None:
    """Poll the server's `/health` until it answers; ServingBackendUnavailable (and the server stopped)
    if it exits, takes longer than `timeout_s`, or the engine closes meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not server.alive():
            raise ServingBackendUnavailable(
                f"The vLLM server for '{server.name}' exited with status {server.process.returncode} while it "
                f"started (log: {server.log}):\n{server.log_tail()}"
            )
        if closed.is_set() or time.monotonic() > deadline:
            server.stop()
            why = "the server is shutting down" if closed.is_set() else f"it was not ready after {timeout_s:.0f} s"
            raise ServingBackendUnavailable(
                f"The vLLM server for '{server.name}' did not start: {why} (TUNEHOUSE_VLLM_START_TIMEOUT_S; "
                f"log: {server.log})."
            )
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        closed.wait(POLL_S)


def _loaded_model(folder: Path, max_model_len: int | None) -> LoadedModel:
    """What tunehouse renders and checks prompts with: the weights' own tokenizer and limits."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config") or config
    context = max_model_len or text.get("max_position_embeddings") or DEFAULT_CONTEXT
    vocab = min(len(tokenizer), int(text.get("vocab_size") or len(tokenizer)))
    return LoadedModel(
        hf=None, tokenizer=tokenizer, context_length=context, vocab_size=vocab, spelling=TokenSpelling(tokenizer)
    )


# --- requests -------------------------------------------------------------------------------------------
def check_sampling(params: SamplingParams) -> None:
    """InvalidRequest naming the parameter for what only the built-in engine computes."""
    if params.prompt_logprobs:
        raise InvalidRequest(
            "The prompt's log-probabilities ('echo' with 'logprobs') are not served by the vLLM backend "
            "(TUNEHOUSE_SERVE_BACKEND=vllm); ask without 'echo', or use tunehouse's built-in engine.",
            param="echo",
        )
    if params.constraint is not None:
        raise InvalidRequest(
            "Structured output ('response_format' json_object/json_schema, or a forced tool call) is not served "
            "by the vLLM backend (TUNEHOUSE_SERVE_BACKEND=vllm); use tunehouse's built-in engine for it.",
            param="response_format",
        )


def completion_body(
    served: str, prompt_ids: list[int], params: SamplingParams, max_tokens: int, seed: int | None, stream: bool
) -> dict[str, Any]:
    """vLLM's `/v1/completions` request that continues `prompt_ids` as the built-in engine would."""
    body: dict[str, Any] = {
        "model": served,
        "prompt": prompt_ids,
        "max_tokens": max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "skip_special_tokens": True,
    }
    optional = {
        "stop": params.stop or None,
        "seed": seed,
        "presence_penalty": params.presence_penalty or None,
        "frequency_penalty": params.frequency_penalty or None,
        "logit_bias": {str(token): bias for token, bias in params.logit_bias.items()} or None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if params.logprobs is not None:  # tokens named by id (`token_id:N`), which tunehouse spells itself
        body.update(logprobs=params.logprobs, return_tokens_as_token_ids=True)
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _token_id(token: str) -> int:
    return int(token.removeprefix("token_id:"))


def token_records(logprobs: dict[str, Any] | None, spans: TextSpans, top: int) -> list[TokenLogprob]:
    """tunehouse's records of the tokens in one vLLM `logprobs` answer (ids as `token_id:N`), their
    spans continuing `spans`; each token's `top` most likely alternatives, most likely first."""
    if not logprobs:
        return []
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    records = []
    for token, logprob, alternatives in zip(logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True):
        token_id = _token_id(token)
        ranked = sorted(((_token_id(t), float(lp)) for t, lp in (alternatives or {}).items()), key=lambda p: -p[1])
        records.append(TokenLogprob(token_id, float(logprob), ranked[:top], spans.add(token_id)))
    return records


def _error_from(server: VllmServer, status: int, text: str) -> TunehouseError:
    """vLLM's error answer as tunehouse's: its 4xx is the request's fault, anything else the backend's."""
    try:
        payload = json.loads(text)
        error = payload.get("error", payload)
        message = str(error.get("message") if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        message = text.strip() or f"HTTP {status}"
    if 400 <= status < 500:
        return InvalidRequest(f"vLLM refused the request: {message}")
    return ServingBackendUnavailable(
        f"The vLLM server for '{server.name}' failed ({status}): {message} (log: {server.log})."
    )


def _unreachable(server: VllmServer, exc: Exception) -> ServingBackendUnavailable:
    state = "is running" if server.alive() else f"exited with status {server.process.returncode}"
    return ServingBackendUnavailable(
        f"The vLLM server for '{server.name}' did not answer ({exc}); it {state} (log: {server.log})."
    )


@dataclass(frozen=True)
class _Call:
    """One choice's request to a server, and how to read its answer."""

    server: VllmServer
    body: dict[str, Any]
    prompt_tokens: int
    spelling: TokenSpelling

    @property
    def top(self) -> int | None:
        """Alternatives each token reports; None: no log-probabilities asked."""
        top: int | None = self.body.get("logprobs")
        return top

    def result(self, data: dict[str, Any], records: list[TokenLogprob] | None = None) -> Generation:
        """The Generation of vLLM's answer `data` (or of a stream's, with the records it carried)."""
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        text = choice.get("text") or ""
        logprobs = None
        if self.top is not None:
            logprobs = records if records is not None else token_records(choice.get("logprobs"), self.spans(), self.top)
            if isinstance(choice.get("stop_reason"), str):  # cut at a stop sequence: what began before it
                logprobs = within_text(logprobs, len(text))
        return Generation(
            text=text,
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=int(usage.get("completion_tokens") or 0),
            logprobs=logprobs,
        )

    def spans(self) -> TextSpans:
        return TextSpans(self.spelling)


def _event(line: str) -> dict[str, Any] | None:
    """A server-sent event line's JSON; None for the rest (blank lines, `[DONE]`)."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    return None if data == "[DONE]" else dict(json.loads(data))


class _StreamState:
    """A streamed choice: its text so far, finish reason and usage, from vLLM's chunks."""

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: object = None
        self.completion_tokens = 0
        self.records: list[TokenLogprob] = []
        self._spans = call.spans()

    def read(self, chunk: dict[str, Any]) -> TextDelta | None:
        if "error" in chunk:
            raise _error_from(self.call.server, 500, json.dumps(chunk))
        if chunk.get("usage"):
            self.completion_tokens = int(chunk["usage"].get("completion_tokens") or 0)
        for choice in chunk.get("choices") or []:
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            self.stop_reason = choice.get("stop_reason") or self.stop_reason
            records = []
            if self.call.top is not None:
                records = token_records(choice.get("logprobs"), self._spans, self.call.top)
                self.records += records
            text = choice.get("text") or ""
            self.text += text
            if text or records:
                return TextDelta(text, records)
        return None

    def generation(self) -> Generation:
        choice = {"text": self.text, "finish_reason": self.finish_reason, "stop_reason": self.stop_reason}
        usage = {"completion_tokens": self.completion_tokens}
        return self.call.result({"choices": [choice], "usage": usage}, self.records)


# --- the engine -----------------------------------------------------------------------------------------
class VllmEngine:
    """The serving engine's interface, generating on vLLM servers this engine starts and stops."""

    def __init__(self, max_queued: int | None = None) -> None:
        self.config = settings()
        self.max_queued = self.config.max_queued_generations if max_queued is None else max_queued
        vllm_python(self.config)  # a missing vLLM or a bad setting fails at start-up, not at a request
        lora_rank_room(self.config.vllm_max_lora_rank)
        self._registry = threading.Lock()  # the collections below, and `_active`
        self._servers: dict[str, VllmServer] = {}  # weights' model id -> its server
        self._starting: dict[str, threading.Lock] = {}  # weights' model id -> held while its server starts
        self._deleted: set[str] = set()
        self._active = 0  # requests preparing or generating
        self._closed = threading.Event()
        self._preparers = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="tunehouse-vllm-prepare")

    # --- resolving a model id ---------------------------------------------------------------------------
    def open(self, model_id: str) -> ModelHandle:
        """Resolve `model_id` for one request: start its weights' vLLM server on first use (this waits
        until the server is ready) and load its LoRA adapter there on first use."""
        info = get_model(model_id)
        if info.id in self._deleted:
            raise model_not_found(model_id)
        if info.adapter:
            check_adapter(info, self.config.vllm_max_lora_rank)
        server = self._server(weights_of(info))
        if info.adapter:
            self._load_adapter(server, info)
        assert server.loaded is not None  # set before the server is registered
        return ModelHandle(info=info, weights=server.loaded, is_base=info.kind == "base")

    def _server(self, weights: ModelInfo) -> VllmServer:
        with self._registry:
            starting = self._starting.setdefault(weights.id, threading.Lock())
        with starting:  # one start per set of weights; other requests for it wait for that one
            with self._registry:
                server = self._servers.get(weights.id)
            if server is not None and server.alive():
                return server
            if self._closed.is_set():
                raise ServerBusy("The server is shutting down; retry once it is back.")
            folder = weights_dir(weights) if weights.kind == "base" else weights.path
            server = launch_server(weights, folder, self.config)
            try:
                wait_until_ready(server, self.config.vllm_start_timeout_s, self._closed)
                server.loaded = _loaded_model(folder, self._max_model_len(server))
            except BaseException:
                server.stop()
                raise
            with self._registry:
                self._servers[weights.id] = server
            return server

    @staticmethod
    def _max_model_len(server: VllmServer) -> int | None:
        """The context vLLM serves the weights with (it may be cut below the config's, e.g. by memory)."""
        try:
            models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
            return next((int(m["max_model_len"]) for m in models if m.get("max_model_len")), None)
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def _load_adapter(self, server: VllmServer, info: ModelInfo) -> None:
        with server.lock:
            if info.id in server.adapters:
                return
            try:
                answer = httpx.post(
                    f"{server.url}/v1/load_lora_adapter",
                    json={"lora_name": info.id, "lora_path": str(info.path)},
                    timeout=REQUEST_TIMEOUT,
                )
            except httpx.HTTPError as exc:
                raise _unreachable(server, exc) from exc
            if answer.status_code != 200 and "already" not in answer.text:
                raise ModelLoadError(
                    f"The model '{info.id}' could not be loaded by vLLM: {_error_from(server, 400, answer.text)}",
                    param="model",
                )
            server.adapters.add(info.id)
            metrics.count_adapter_load()

    def forget(self, model_id: str) -> None:
        """Take a deleted model out of service: no request starts on it again, and its adapter leaves
        every vLLM server it was loaded into (requests already running there finish)."""
        with self._registry:
            self._deleted.add(model_id)
            servers = list(self._servers.values())
        for server in servers:
            with server.lock:
                if model_id not in server.adapters or not server.alive():
                    continue
                server.adapters.discard(model_id)
                with suppress(httpx.HTTPError):  # it stopped answering: started again, it has no adapters
                    httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": model_id}, timeout=60)

    def delete(self, model_id: str) -> None:
        """Delete a fine-tuned model: its catalog entry and files, and its adapter in vLLM."""
        delete_model(model_id)
        self.forget(model_id)

    # --- the line -----------------------------------------------------------------------------------------
    @contextmanager
    def _in_line(self) -> Iterator[None]:
        """Count a request while it prepares or generates; ServerBusy past `max_queued` of them."""
        with self._registry:
            if self._closed.is_set():
                raise ServerBusy("The server is shutting down; retry once it is back.")
            if self._active >= self.max_queued:
                raise ServerBusy(
                    f"The server is busy: {self._active} requests are already waiting for the model. Retry in a moment."
                )
            self._active += 1
        try:
            yield
        finally:
            with self._registry:
                self._active -= 1

    async def prepare(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args)` (resolving a model, which may start its server, and tokenizing) on the engine's own
        threads, in the caller's context, holding neither the event loop nor other routes' threads."""
        with self._in_line():
            call = partial(contextvars.copy_context().run, fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._preparers, call)

    def close(self, timeout: float = STOP_GRACE_S) -> None:
        """Stop every vLLM server this engine started; nothing new is accepted."""
        self._closed.set()
        self._preparers.shutdown(wait=False, cancel_futures=True)
        with self._registry:
            servers = list(self._servers.values())
        for server in servers:
            server.stop()

    def _calls(
        self, handle: ModelHandle, prompts: list[list[int]], params: SamplingParams, stream: bool
    ) -> list[_Call]:
        """One request to vLLM per choice; a seed gives choice i the seed `seed + i`, so `n` choices differ
        and each reproduces."""
        check_sampling(params)
        if handle.model_id in self._deleted:
            raise model_not_found(handle.model_id)
        server = self._servers.get(weights_of(handle.info).id)
        if server is None or not server.alive():
            raise ServingBackendUnavailable(
                f"The vLLM server for '{handle.model_id}' is not running"
                + ("" if server is None else f" (log: {server.log}):\n{server.log_tail()}")
            )
        calls = []
        for index, prompt_ids in enumerate(prompts):
            max_tokens = min(params.max_tokens, handle.weights.context_length - len(prompt_ids))
            seed = None if params.seed is None else params.seed + index
            body = completion_body(handle.model_id, prompt_ids, params, max_tokens, seed, stream)
            calls.append(_Call(server, body, len(prompt_ids), handle.spelling))
        return calls

    # --- generation ----------------------------------------------------------------------------------------
    async def generate_async(
        self, handle: ModelHandle, prompts: list[list[int]], params: SamplingParams
    ) -> list[Generation]:
        """Each prompt's Generation; vLLM batches the choices with whatever else it runs."""
        with self._in_line():
            calls = self._calls(handle, prompts, params, stream=False)
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
                return list(await asyncio.gather(*(self._complete_async(client, call) for call in calls)))

    @staticmethod
    async def _complete_async(client: httpx.AsyncClient, call: _Call) -> Generation:
        if call.body["max_tokens"] <= 0:
            return call.result({"choices": [{"finish_reason": "length"}]})
        try:
            answer = await client.post(f"{call.server.url}/v1/completions", json=call.body)
        except httpx.HTTPError as exc:
            raise _unreachable(call.server, exc) from exc
        if answer.status_code != 200:
            raise _error_from(call.server, answer.status_code, answer.text)
        return call.result(answer.json())

    async def stream_async(
        self, handle: ModelHandle, prompts: list[list[int]], params: SamplingParams
    ) -> AsyncGenerator[StreamEvent, None]:
        """Each prompt's text deltas, then its Generation, choice after choice. Closing the iterator (the
        client went away) closes the connection to vLLM, which aborts the generation."""
        with self._in_line():
            calls = self._calls(handle, prompts, params, stream=True)
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
                for index, call in enumerate(calls):
                    state = _StreamState(call)
                    if call.body["max_tokens"] > 0:
                        try:
                            async with client.stream(
                                "POST", f"{call.server.url}/v1/completions", json=call.body
                            ) as answer:
                                if answer.status_code != 200:
                                    raise _error_from(call.server, answer.status_code, (await answer.aread()).decode())
                                async for line in answer.aiter_lines():
                                    chunk = _event(line)
                                    if chunk is not None and (delta := state.read(chunk)) is not None:
                                        yield index, delta
                        except httpx.HTTPError as exc:
                            raise _unreachable(call.server, exc) from exc
                    yield index, state.generation()

    def generate(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams) -> Generation:
        """Continue `prompt_ids` from a thread (the eval runner, graders), waiting for the answer."""
        with self._in_line():
            (call,) = self._calls(handle, [prompt_ids], params, stream=False)
            if call.body["max_tokens"] <= 0:
                return call.result({"choices": [{"finish_reason": "length"}]})
            try:
                answer = httpx.post(f"{call.server.url}/v1/completions", json=call.body, timeout=REQUEST_TIMEOUT)
            except httpx.HTTPError as exc:
                raise _unreachable(call.server, exc) from exc
            if answer.status_code != 200:
                raise _error_from(call.server, answer.status_code, answer.text)
            return call.result(answer.json())

    def stream(
        self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams
    ) -> Iterator[TextDelta | Generation]:
        """Text deltas, then the final Generation, from a thread."""
        with self._in_line():
            (call,) = self._calls(handle, [prompt_ids], params, stream=True)
            state = _StreamState(call)
            if call.body["max_tokens"] > 0:
                try:
                    with httpx.stream(
                        "POST", f"{call.server.url}/v1/completions", json=call.body, timeout=REQUEST_TIMEOUT
                    ) as answer:
                        if answer.status_code != 200:
                            raise _error_from(call.server, answer.status_code, answer.read().decode())
                        for line in answer.iter_lines():
                            chunk = _event(line)
                            if chunk is not None and (delta := state.read(chunk)) is not None:
                                yield delta
                except httpx.HTTPError as exc:
                    raise _unreachable(call.server, exc) from exc
            yield state.generation()
