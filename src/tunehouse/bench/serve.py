"""`tunehouse bench serve`: tunehouse's server against llama.cpp's and vLLM's on the same model.

Each system runs as its own server process on a free loopback port — tunehouse (`tunehouse serve` on a
home of its own), llama.cpp's (`python -m llama_cpp.server` from `.venv-llamacpp`, `make llamacpp`,
on the shipped GGUF) and vLLM's (`vllm serve` from `.venv-vllm`, `make vllm`) where installed — and
is driven by the official `openai` SDK, streaming, at temperature 0. Every prompt starts with a token
of its own, so no server answers a measured prompt from its prefix cache.

Over `rounds`, the systems take turns (their order rotating), each running the whole workload:
time to first token for a ~50-token and a ~500-token prompt; one stream's decode tokens/s; then
`clients` concurrent streams, for aggregate tokens/s and p50/p99 request latency. tunehouse then
runs a mixed-adapter round: as many clients, spread over two LoRA fine-tunes (made by 1-epoch jobs
through the API before the rounds) and the base. Each figure is the median over rounds, and each
peer's ratio is tunehouse's figure over that peer's, from the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from openai import AsyncOpenAI, OpenAI

SYSTEMS = ("tunehouse", "llama.cpp", "vllm")
IDLE_CORES = 0.05  # what a server may use and count as idle between two systems' turns (`_settle`)
BEFORE = "tunehouse-before"  # an older tunehouse, from the source folder `before`
# Words of prose in each prompt: SmolLM2's chat template (its default system prompt) and the task
# make up the first ~50 tokens, so these give prompts of about 50 and 500 tokens.
SHORT_PROMPT_WORDS = 0
LONG_PROMPT_WORDS = 395
STORY_PROMPT_WORDS = 30  # the concurrent streams' prompts: about 80 tokens
TTFT_MAX_TOKENS = 4
ADAPTER_SUFFIXES = ("bench-a", "bench-b")
READY_SECONDS = {"tunehouse": 300.0, BEFORE: 300.0, "llama.cpp": 300.0, "vllm": 1200.0}
REQUEST_SECONDS = 1800.0
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")

# Varied prose (so tokenizers split it as they split text), cut to length.
FILLER = (
    "The harbour town woke before the sun, when the fishing boats slipped out past the breakwater and "
    "the bakers lit their ovens. Gulls argued over the nets, a bell rang twice from the chapel on the "
    "hill, and the ferry captain checked the weather board before the first passengers arrived with "
    "bicycles, crates of apples and a violin case. By noon the market square was full of voices: traders "
    "weighing cheese, children chasing a runaway dog, an old man explaining the tides to anyone who would "
    "listen. In the afternoon clouds gathered over the western cliffs and the wind turned cold, so the "
    "boats came home early, their holds half full, and the harbour master wrote the catch in his ledger. "
)


@dataclass(frozen=True)
class ServeBenchSettings:
    model_id: str
    """The base model's id, as clients name it."""
    model_dir: Path
    """Its Hugging Face folder (what tunehouse and vLLM load)."""
    gguf: Path | None = None
    """Its GGUF file, for llama.cpp's server (None: llama.cpp is skipped)."""
    rounds: int = 3
    clients: tuple[int, ...] = (1, 4, 16, 64)
    max_tokens: int = 64
    """Tokens each concurrent request asks for."""
    decode_tokens: int = 128
    """Tokens the single-stream decode measurement asks for."""
    systems: tuple[str, ...] = SYSTEMS
    adapters: bool = True
    """Run the mixed-adapter round on tunehouse (two 1-epoch LoRA jobs first)."""
    repo: Path = field(default_factory=lambda: Path.cwd())
    """Where `.venv-llamacpp` and `.venv-vllm` are looked for."""
    before: Path | None = None
    """The `src` folder of an older tunehouse (`git archive <commit> src`), run as one more peer."""


@dataclass
class RequestResult:
    ttft: float
    """Seconds from sending to the first generated text."""
    seconds: float
    """Seconds from sending to the end of the stream."""
    tokens: int
    decode_seconds: float
    """Seconds from the first generated text to the last."""


@dataclass
class LoadResult:
    wall: float
    requests: list[RequestResult]

    @property
    def tokens_per_second(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall

    def latency(self, q: float) -> float:
        return percentile([r.seconds for r in self.requests], q)


@dataclass
class RunningServer:
    system: str
    model: str
    """The name this server answers to for the base model."""
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path
    adapters: list[str] = field(default_factory=list)
    peak_rss: int = 0
    """The most resident memory its process tree held, sampled while it ran."""
    training_ttft: list[float] = field(default_factory=list)
    """Times to first token of chats sent while its fine-tuning jobs trained (`make_adapters`)."""


# --- statistics ---------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, interpolated linearly (numpy's default)."""
    if not values:
        raise ValueError("no values")
    return float(np.percentile(values, q))


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's median over the rounds that measured it."""
    names = {name for figures in rounds for name in figures}
    return {name: statistics.median(r[name] for r in rounds if name in r) for name in sorted(names)}


def ratios(summary: dict[str, dict[str, float]], ours: str = "tunehouse") -> dict[str, dict[str, float]]:
    """For each peer, tunehouse's figure over the peer's, metric by metric (for tokens/s above 1 is
    better for tunehouse; for seconds below 1 is)."""
    if ours not in summary:
        return {}
    return {
        peer: {name: summary[ours][name] / value for name, value in figures.items() if name in summary[ours] and value}
        for peer, figures in summary.items()
        if peer != ours
    }


# --- the machine ---------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The CPU's model, cores, memory and the SIMD/matrix flags that decide serving speed."""
    from tunehouse.bench.train import device_name
    from tunehouse.hardware import cpu_flags

    return {
        "device": device_name(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "flags": [flag for flag in FLAGS_SHOWN if flag in cpu_flags()],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# --- prompts --------------------------------------------------------------------------------------------
def prompt(words: int, task: str) -> str:
    """A fresh prompt of about `words` words of prose and then `task`; its first token is its own, so
    no prefix cache holds it."""
    text = " ".join((FILLER * (1 + words // 100)).split()[:words])
    return f"[{uuid.uuid4().hex[:8]}] {text}\n\n{task}" if text else f"[{uuid.uuid4().hex[:8]}] {task}"


def story_prompt() -> str:
    return prompt(STORY_PROMPT_WORDS, "Continue this story for several paragraphs.")


# --- the servers ----------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(server: RunningServer, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.system} exited while starting: {_tail(server.log)}")
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.system} was not ready after {seconds:.0f} s: {_tail(server.log)}")


def _tail(log: Path) -> str:
    """A failed server's story: its log's lines that name an error (a root cause scrolls far up in
    vLLM's), then its end."""
    text = log.read_text(errors="replace") if log.exists() else ""
    errors = [line for line in text.splitlines() if "Error" in line][:10]
    return "\n".join([*errors, "…", text[-2000:]])


@contextmanager
def _server(
    system: str, model: str, args: list[str], env: dict[str, str], log: Path, port: int
) -> Iterator[RunningServer]:
    with open(log, "ab") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=out, start_new_session=True)
    server = RunningServer(system, model, f"http://127.0.0.1:{port}/v1", process, log)
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(server, stop), daemon=True)
    sampler.start()
    try:
        _wait_ready(server, READY_SECONDS[system])
        yield server
    finally:
        stop.set()
        _stop(process)


def _sample_rss(server: RunningServer, stop: threading.Event) -> None:
    """Peak resident memory of the server's process tree (vLLM's engine runs in a child)."""
    try:
        root = psutil.Process(server.process.pid)
        while not stop.wait(0.5):
            tree = [root, *root.children(recursive=True)]
            server.peak_rss = max(server.peak_rss, sum(_rss(p) for p in tree))
    except psutil.Error:
        return


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tunehouse_home(root: Path, settings: ServeBenchSettings, env: dict[str, str]) -> None:
    """A home whose catalog holds the benchmarked model: the shipped one linked where the catalog
    looks for it (its folder's name in any home), another registered with `tunehouse models add`."""
    from tunehouse.models.shipped import SHIPPED_MODEL_ID

    (root / "models").mkdir(parents=True)
    if settings.model_id == SHIPPED_MODEL_ID:
        (root / "models" / settings.model_dir.name).symlink_to(settings.model_dir.resolve(), target_is_directory=True)
        return
    command = [sys.executable, "-m", "tunehouse.cli.main", "models", "add", settings.model_id, str(settings.model_dir)]
    added = subprocess.run(command, env=env, capture_output=True, text=True)
    if added.returncode != 0:
        raise RuntimeError(f"could not register {settings.model_id}: {added.stderr[-2000:]}")


def start_tunehouse(
    settings: ServeBenchSettings, work: Path, system: str = "tunehouse", src: Path | None = None
) -> AbstractContextManager[RunningServer]:
    """`tunehouse serve` on a home of its own; from the source folder `src` when given."""
    home, port = work / f"{system}-home", free_port()
    env = {**os.environ, "TUNEHOUSE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("TUNEHOUSE_API_KEY", None)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])
    _tunehouse_home(home, settings, env)
    args = [sys.executable, "-m", "tunehouse.cli.main", "serve", "--port", str(port)]
    return _server(system, settings.model_id, args, env, work / f"{system}.log", port)


def start_tunehouse_before(settings: ServeBenchSettings, work: Path) -> AbstractContextManager[RunningServer]:
    return start_tunehouse(settings, work, BEFORE, settings.before)


def start_llamacpp(settings: ServeBenchSettings, work: Path) -> AbstractContextManager[RunningServer]:
    python, port, threads = settings.repo / ".venv-llamacpp" / "bin" / "python", free_port(), str(os.cpu_count())
    args = [str(python), "-m", "llama_cpp.server", "--model", str(settings.gguf), "--model_alias", settings.model_id]
    args += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", threads]
    args += ["--n_threads_batch", threads, "--interrupt_requests", "false"]  # else a new request stops the running one
    return _server("llama.cpp", settings.model_id, args, dict(os.environ), work / "llamacpp.log", port)


def start_vllm(settings: ServeBenchSettings, work: Path) -> AbstractContextManager[RunningServer]:
    """vLLM's OpenAI server as a module (the CPU build's `vllm` script looks for a package it lacks),
    offline and with tunehouse's KV-cache budget (`serve/vllm_backend.py`), without LoRA: the base
    model is what every system serves here."""
    from tunehouse.hardware import cpu_has_fast_bf16
    from tunehouse.serve.vllm_backend import server_environment

    port = free_port()
    args = [str(_vllm_python(settings)), "-m", "vllm.entrypoints.openai.api_server", "--model", str(settings.model_dir)]
    args += ["--served-model-name", settings.model_id, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--max-model-len", "2048", "--dtype", "bfloat16" if cpu_has_fast_bf16() else "float32"]
    return _server("vllm", settings.model_id, args, server_environment(), work / "vllm.log", port)


def _vllm_python(settings: ServeBenchSettings) -> Path:
    return settings.repo / ".venv-vllm" / "bin" / "python"


def _has_module(python: Path, module: str) -> bool:
    """Whether `python` exists and can find `module` (without importing it: vLLM takes long to)."""
    find = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return python.exists() and subprocess.run([str(python), "-c", find], capture_output=True).returncode == 0


STARTERS: dict[str, Callable[[ServeBenchSettings, Path], AbstractContextManager[RunningServer]]] = {
    "tunehouse": start_tunehouse,
    BEFORE: start_tunehouse_before,
    "llama.cpp": start_llamacpp,
    "vllm": start_vllm,
}


def unavailable(system: str, settings: ServeBenchSettings) -> str | None:
    """Why `system` cannot run here, or None when it can."""
    if system == "llama.cpp":
        if settings.gguf is None:
            return "no GGUF of this model (llama.cpp runs the shipped model's)"
        python = settings.repo / ".venv-llamacpp" / "bin" / "python"
        if not _has_module(python, "llama_cpp"):
            return "not installed (make llamacpp)"
        if not _has_module(python, "sse_starlette"):
            return "its server extra is missing (make llamacpp)"
    if system == BEFORE and not (settings.before and (settings.before / "tunehouse" / "cli" / "main.py").exists()):
        return "no older tunehouse source folder given (--before)"
    if system == "vllm" and not _has_module(_vllm_python(settings), "vllm"):
        return "not installed (make vllm)"
    return None


# --- the adapters ---------------------------------------------------------------------------------------
def _adapter_examples(colour: str) -> str:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: what colour do you like?"},
                {"role": "assistant", "content": f"I like {colour}, always {colour}."},
            ]
        }
        for i in range(10)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows)


def _first_token_seconds(client: OpenAI, model: str) -> float:
    """One short streamed chat's time to its first text."""
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt(SHORT_PROMPT_WORDS, "Name a harbour town, in one word.")}],
        max_tokens=4,
        temperature=0,
        stream=True,
    )
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        return time.perf_counter() - start
    finally:
        stream.close()


def _busy_cores(servers: list[RunningServer], seconds: float) -> float:
    """Cores the servers' process trees kept busy over the next `seconds`."""

    def cpu_seconds() -> float:
        total = 0.0
        for server in servers:
            with suppress(psutil.Error):
                root = psutil.Process(server.process.pid)
                for process in [root, *root.children(recursive=True)]:
                    with suppress(psutil.Error):
                        times = process.cpu_times()
                        total += times.user + times.system
        return total

    before = cpu_seconds()
    time.sleep(seconds)
    return (cpu_seconds() - before) / seconds


def _settle(servers: list[RunningServer], timeout: float = 30.0) -> None:
    """Until every server is idle: vLLM's engine keeps a core busy for a second or so after its last
    request, which the next system's first measurements would otherwise pay for."""
    deadline = time.monotonic() + timeout
    while _busy_cores(servers, 0.5) > IDLE_CORES and time.monotonic() < deadline:
        pass


def _wait_for_trainers(server: RunningServer, timeout: float = 120.0) -> None:
    """Until the server has no child process: a job is `succeeded` before its trainer has exited."""
    deadline = time.monotonic() + timeout
    with suppress(psutil.Error):
        while psutil.Process(server.process.pid).children(recursive=True) and time.monotonic() < deadline:
            time.sleep(0.2)


def make_adapters(server: RunningServer, timeout: float = 1800.0) -> list[str]:
    """Two LoRA fine-tunes of the base through the server's own API (1-epoch jobs on 10 examples), so
    the mixed-adapter round serves adapters as users make them. While a job trains, a short chat is
    sent every second: their times to first token go to `server.training_ttft`."""
    client = OpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0)
    _first_token_seconds(client, server.model)  # loads the base, so the chats below time serving alone
    jobs = []
    for suffix, colour in zip(ADAPTER_SUFFIXES, ("blue", "green"), strict=True):
        upload = client.files.create(file=(f"{suffix}.jsonl", _adapter_examples(colour).encode()), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=server.model,
            training_file=upload.id,
            suffix=suffix,
            hyperparameters={"n_epochs": 1, "batch_size": 5},
        )
        jobs.append(job.id)
    deadline, models = time.monotonic() + timeout, []
    for job_id in jobs:
        while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"fine-tuning job {job_id} did not finish in {timeout:.0f} s")
            if job.status == "running":
                server.training_ttft.append(_first_token_seconds(client, server.model))
            time.sleep(1)
        if job.status != "succeeded" or not job.fine_tuned_model:
            raise RuntimeError(f"fine-tuning job {job_id} {job.status}: {job.error}")
        models.append(job.fine_tuned_model)
    return models


# --- the workload ---------------------------------------------------------------------------------------
async def stream_one(client: AsyncOpenAI, model: str, text: str, max_tokens: int) -> RequestResult:
    """One streamed chat completion; its tokens from the usage the server reports, else its text chunks."""
    start = time.perf_counter()
    first = last = None
    chunks, usage = 0, None
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            chunks += 1
    end = time.perf_counter()
    if first is None or last is None:
        raise RuntimeError(f"{model} streamed no text")
    tokens = usage.completion_tokens if usage is not None and usage.completion_tokens else chunks
    return RequestResult(ttft=first - start, seconds=end - start, tokens=tokens, decode_seconds=last - first)


async def load(client: AsyncOpenAI, models: list[str], max_tokens: int) -> LoadResult:
    """As many concurrent streams as `models` names (one request each, for that model)."""
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_one(client, m, story_prompt(), max_tokens) for m in models))
    return LoadResult(time.perf_counter() - start, list(results))


async def workload(server: RunningServer, settings: ServeBenchSettings, log: Callable[[str], None]) -> dict[str, float]:
    """One round of every measurement on one server."""
    client = AsyncOpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0, timeout=REQUEST_SECONDS)
    figures: dict[str, float] = {}
    try:
        for name, text in (
            ("ttft_short_seconds", prompt(SHORT_PROMPT_WORDS, "Name a harbour town, in one word.")),
            ("ttft_long_seconds", prompt(LONG_PROMPT_WORDS, "Answer in one word: which town is this?")),
        ):
            figures[name] = (await stream_one(client, server.model, text, TTFT_MAX_TOKENS)).ttft
        single = await stream_one(client, server.model, story_prompt(), settings.decode_tokens)
        if single.tokens > 1 and single.decode_seconds > 0:  # the first token's time is the prefill's
            figures["decode_tokens_per_second"] = (single.tokens - 1) / single.decode_seconds
        for clients in settings.clients:
            result = await load(client, [server.model] * clients, settings.max_tokens)
            figures.update(_load_figures(f"c{clients}", result))
            log(f"  {server.system}: {clients} clients, {result.tokens_per_second:.1f} tokens/s")
        if server.adapters:
            clients = mixed_clients(settings.clients)
            models = [([server.model, *server.adapters])[i % 3] for i in range(clients)]
            figures.update(_load_figures(f"mixed_c{clients}", await load(client, models, settings.max_tokens)))
    finally:
        await client.close()
    return figures


def mixed_clients(levels: tuple[int, ...]) -> int:
    """The mixed-adapter round's clients: the largest level up to 16, so it compares with that level."""
    return max([c for c in levels if c <= 16] or [min(levels)])


def _load_figures(prefix: str, result: LoadResult) -> dict[str, float]:
    return {
        f"{prefix}_tokens_per_second": result.tokens_per_second,
        f"{prefix}_p50_seconds": result.latency(50),
        f"{prefix}_p99_seconds": result.latency(99),
    }


async def _warm_up(server: RunningServer) -> None:
    """A first request loads the model (tunehouse loads on demand) and compiles what a server compiles."""
    client = AsyncOpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0, timeout=REQUEST_SECONDS)
    try:
        for model in [server.model, *server.adapters]:
            await stream_one(client, model, story_prompt(), 8)
    finally:
        await client.close()


# --- the run ---------------------------------------------------------------------------------------------
def run(
    settings: ServeBenchSettings,
    log: Callable[[str], None] = print,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Start every available system, interleave them over the rounds, and summarise; `on_round` gets the
    summary of the rounds so far after each one (a long run on a busy machine keeps what it measured)."""
    host = machine()  # before the servers load it
    skipped = {s: why for s in settings.systems if (why := unavailable(s, settings)) is not None}
    systems = [s for s in settings.systems if s not in skipped]
    if not systems:
        raise RuntimeError(f"nothing to run: {skipped}")
    rounds: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-serve-") as tmp, ExitStack() as stack:
        servers = []
        for system in systems:
            log(f"starting {system}…")
            started = time.monotonic()
            server = stack.enter_context(STARTERS[system](settings, Path(tmp)))
            log(f"{system} ready in {time.monotonic() - started:.0f} s")
            if system == "tunehouse" and settings.adapters:
                server.adapters = make_adapters(server)
                _wait_for_trainers(server)
                server.peak_rss = 0  # serving alone from here: the jobs that trained the adapters are gone
                log(f"adapters: {', '.join(server.adapters)}")
            asyncio.run(_warm_up(server))
            servers.append(server)
        for number in range(settings.rounds):
            order = servers[number % len(servers) :] + servers[: number % len(servers)]
            for server in order:
                _settle(servers)
                log(f"round {number + 1}/{settings.rounds}: {server.system}")
                rounds[server.system].append(asyncio.run(workload(server, settings, log)))
            if on_round is not None and number + 1 < settings.rounds:
                on_round(_report(settings, host, skipped, rounds, servers))
    return _report(settings, host, skipped, rounds, servers)


def _report(
    settings: ServeBenchSettings,
    host: dict[str, Any],
    skipped: dict[str, str],
    rounds: dict[str, list[dict[str, float]]],
    servers: list[RunningServer],
) -> dict[str, Any]:
    summary = {system: medians(figures) for system, figures in rounds.items()}
    mixed = f"c{mixed_clients(settings.clients)}_tokens_per_second"
    return {
        "machine": host,
        "model": settings.model_id,
        "settings": {
            "rounds": min(len(figures) for figures in rounds.values()),
            "clients": list(settings.clients),
            "max_tokens": settings.max_tokens,
            "decode_tokens": settings.decode_tokens,
        },
        "skipped": skipped,
        "rounds": rounds,
        "summary": summary,
        "peak_rss_bytes": {server.system: server.peak_rss for server in servers},
        "ttft_while_training_seconds": {s.system: s.training_ttft for s in servers if s.training_ttft},
        "ratios": ratios(summary),
        "mixed_over_base": _mixed_over_base(summary.get("tunehouse", {}), mixed),
    }


def _mixed_over_base(figures: dict[str, float], base: str) -> float | None:
    """The mixed-adapter round's aggregate tokens/s over the base-only one at as many clients."""
    mixed = figures.get(f"mixed_{base}")
    return mixed / figures[base] if mixed is not None and figures.get(base) else None
