"""Benchmark: the server under load — its memory while large bodies arrive, how fast `/v1/models`
answers while chats wait and after event followers hang up, and how long SIGTERM takes.

    .venv/bin/python bench/load_bench.py                         # this tree's server
    .venv/bin/python bench/load_bench.py --src /tmp/before/src   # another checkout's (`git archive`)

Every scenario runs a fresh `tunehouse serve --no-worker` on 127.0.0.1 with a temporary
TUNEHOUSE_HOME (without a worker a job stays where it was put, so followers have a job that never
ends). The chats go to `tiny-long`, a 2-layer random Llama (SmolLM2's tokenizer) whose context is
raised to 64k: greedy, it never meets its end-of-turn token, so `max_tokens=10**9` keeps the engine
busy for minutes unless the request is stopped.

- **upload**: a 600 MB fine-tuning JSONL as multipart, streamed from a generator (chunked, no
  Content-Length, so the server reads the bytes), with TUNEHOUSE_MAX_FILE_BYTES at its 512 MB
  default (refused with 413) and at 700 MB (stored). Also the slowest `/v1/models` meanwhile.
- **chat body**: 32 MB of chat JSON, streamed the same way, against the 8 MB request limit (413).
- **queued chats**: 64 chats sent on raw sockets that never read; `/v1/models` timed meanwhile; then
  they hang up, and a 2-token chat is timed (how long the abandoned ones still hold the engine).
- **followers**: 64 `GET /fine-tunes/{id}/events?stream=true` that read the first event and hang
  up; then `/v1/models` and the job's cancel are timed, and the server's threads are counted.
- **SIGTERM**: while a long chat generates, seconds from the signal until the process has exited.

Peak RSS is the server process's, sampled every 5 ms with psutil.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FOLDER = "HuggingFaceTB--SmolLM2-135M-Instruct"
LONG_ID = "tiny-long"
MB = 1024 * 1024
QUEUED = 64
REQUEST_TIMEOUT = 15.0  # a `/v1/models` that takes longer counts as timed out


class Server:
    """`tunehouse serve --no-worker` on a free loopback port, with its own home."""

    def __init__(self, home: Path, src: Path | None, env: dict[str, str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TUNEHOUSE_HOME": str(home), "PYTHONUNBUFFERED": "1", **env}
        self.env.pop("TUNEHOUSE_API_KEY", None)
        if src is not None:
            self.env["PYTHONPATH"] = str(src)
        self.log = home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "tunehouse.cli.main", *args], env=self.env, check=True, capture_output=True
        )

    def __enter__(self) -> Server:
        with open(self.log, "ab") as log:
            command = [sys.executable, "-m", "tunehouse.cli.main", "serve", "--port", str(self.port), "--no-worker"]
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def ps(self) -> psutil.Process:
        assert self.process is not None
        return psutil.Process(self.process.pid)


class PeakRss:
    """The process's largest RSS while the block runs."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.before = self.peak = process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def prepare_models(work: Path) -> tuple[Path, Path]:
    """The tiny random Llama and its 64k-context copy, built from the shipped model's tokenizer."""
    from tunehouse.models.random_init import build_random_llama
    from tunehouse.models.shipped import materialize_shipped_model

    shipped = materialize_shipped_model(REPO / ".cache" / "models" / SHIPPED_FOLDER)
    tiny = build_random_llama("tiny", shipped, work / "tiny")
    long = work / "tiny-long"
    shutil.copytree(tiny, long)
    config = json.loads((long / "config.json").read_text())
    config["max_position_embeddings"] = 65_536
    (long / "config.json").write_text(json.dumps(config))
    return shipped, long


def new_server(work: Path, name: str, src: Path | None, shipped: Path, long: Path, **env: str) -> Server:
    home = work / name
    (home / "models").mkdir(parents=True)
    (home / "models" / SHIPPED_FOLDER).symlink_to(shipped, target_is_directory=True)
    server = Server(home, src, env)
    server.cli("models", "add", LONG_ID, str(long))
    return server


def percentiles(times: list[float], timeouts: int) -> dict[str, float | int]:
    ordered = sorted(times)
    if not ordered:
        return {"n": 0, "timeouts": timeouts}
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "timeouts": timeouts,
    }


def time_models(url: str, n: int = 200, budget: float = 60.0) -> dict[str, float | int]:
    """`/v1/models` n times in a row on one keep-alive client (as the SDK sends them), within `budget` s."""
    times, timeouts, deadline = [], 0, time.time() + budget
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        for _ in range(n):
            if time.time() > deadline:
                break
            started = time.perf_counter()
            try:
                client.get("/v1/models").raise_for_status()
                times.append(time.perf_counter() - started)
            except httpx.TimeoutException:
                timeouts += 1
    return percentiles(times, timeouts)


def multipart_upload(size: int, boundary: str) -> Iterator[bytes]:
    """A fine-tuning JSONL of `size` bytes as a multipart body, 1 MB at a time."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    line = b'{"messages": [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Blue."}]}\n'
    chunk = line * (MB // len(line))
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        sent += len(piece)
        yield piece
    yield f"\r\n--{boundary}--\r\n".encode()


def upload(server: Server, size: int) -> dict[str, object]:
    boundary = "tunehousebenchboundary"
    slowest: list[float] = []
    done = threading.Event()

    def watch_models() -> None:  # how the other routes fare meanwhile
        while not done.is_set():
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{server.url}/v1/models", timeout=60)
            slowest.append(time.perf_counter() - started)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_models, daemon=True)
    with PeakRss(server.ps) as rss:
        watcher.start()
        started = time.perf_counter()
        try:
            response = httpx.post(
                f"{server.url}/v1/files",
                content=multipart_upload(size, boundary),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                timeout=600,
            )
            status: object = response.status_code
        except httpx.HTTPError as exc:  # the server may close the connection while the client still sends
            status = type(exc).__name__
        seconds = time.perf_counter() - started
        done.set()
        watcher.join()
    return {
        "status": status,
        "seconds": round(seconds, 1),
        "rss_before_mb": round(rss.before / MB),
        "rss_peak_mb": round(rss.peak / MB),
        "models_max_ms_meanwhile": round(max(slowest, default=0) * 1000),
    }


def chat_body(server: Server, size: int) -> dict[str, object]:
    head = b'{"model": "' + LONG_ID.encode() + b'", "messages": [{"role": "user", "content": "'
    tail = b'"}]}'

    def body() -> Iterator[bytes]:
        yield head
        left = size - len(head) - len(tail)
        while left > 0:
            piece = min(left, MB)
            left -= piece
            yield b"x" * piece
        yield tail

    with PeakRss(server.ps) as rss:
        try:
            response = httpx.post(
                f"{server.url}/v1/chat/completions",
                content=body(),
                headers={"content-type": "application/json"},
                timeout=120,
            )
            status: object = response.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
    return {"status": status, "rss_before_mb": round(rss.before / MB), "rss_peak_mb": round(rss.peak / MB)}


def hanging_chat(server: Server) -> socket.socket:
    """A chat that would generate for minutes, on a raw socket that never reads its answer."""
    body = json.dumps(
        {"model": LONG_ID, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 10**9, "temperature": 0}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(head + body)
    return sock


def short_chat(server: Server, timeout: float = 120) -> float | str:
    """Seconds a 2-token chat takes to answer."""
    started = time.perf_counter()
    try:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": LONG_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=timeout,
        )
    except httpx.TimeoutException:
        return f"timed out (>{timeout:.0f} s)"
    return round(time.perf_counter() - started, 2) if response.status_code == 200 else f"HTTP {response.status_code}"


def queued_chats(server: Server) -> dict[str, object]:
    short_chat(server)  # the model is loaded
    idle = time_models(server.url)
    chats = [hanging_chat(server) for _ in range(QUEUED)]
    time.sleep(2)
    busy = time_models(server.url)
    threads = server.ps.num_threads()
    for chat in chats:
        chat.close()
    time.sleep(0.5)
    return {"idle": idle, "queued": busy, "threads_while_queued": threads, "next_chat_s": short_chat(server)}


def followers(server: Server, work: Path) -> dict[str, object]:
    rows = "".join(
        json.dumps({"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]})
        + "\n"
        for i in range(10)
    )
    (work / "train.jsonl").write_text(rows)
    with open(work / "train.jsonl", "rb") as f:
        file_id = httpx.post(
            f"{server.url}/v1/files", files={"file": f}, data={"purpose": "fine-tune"}, timeout=60
        ).json()["id"]
    job = httpx.post(
        f"{server.url}/v1/fine_tuning/jobs", json={"model": LONG_ID, "training_file": file_id}, timeout=60
    ).json()
    time_models(server.url, n=5)
    baseline = server.ps.num_threads()
    client = httpx.Client(timeout=5, limits=httpx.Limits(max_connections=QUEUED + 8))
    streams, unanswered = [], 0
    for _ in range(QUEUED):
        request = client.build_request("GET", f"{server.url}/v1/fine-tunes/{job['id']}/events?stream=true")
        try:
            stream = client.send(request, stream=True)
            next(stream.iter_lines())  # the job's first event
            streams.append(stream)
        except httpx.TimeoutException:  # the server had no thread left to start this one
            unanswered += 1
    time.sleep(1)
    threads_open = server.ps.num_threads()
    for stream in streams:
        stream.close()
    client.close()
    time.sleep(1)
    after = time_models(server.url)
    started = time.perf_counter()
    try:
        cancel: object = httpx.post(f"{server.url}/v1/fine_tuning/jobs/{job['id']}/cancel", timeout=30).status_code
        cancel_s: object = round(time.perf_counter() - started, 2)
    except httpx.TimeoutException:
        cancel, cancel_s = "timed out", "> 30"
    time.sleep(3)
    close_wait = sum(1 for c in server.ps.net_connections("tcp") if c.status == psutil.CONN_CLOSE_WAIT)
    return {
        "followers_unanswered": unanswered,
        "threads_baseline": baseline,
        "threads_with_64_open": threads_open,
        "threads_after": server.ps.num_threads(),
        "close_wait_after": close_wait,
        "models_after_hangup": after,
        "cancel_status": cancel,
        "cancel_s": cancel_s,
    }


def sigterm(server: Server) -> dict[str, object]:
    short_chat(server)
    chat = hanging_chat(server)
    time.sleep(2)
    assert server.process is not None
    started = time.perf_counter()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
        seconds: object = round(time.perf_counter() - started, 1)
    except subprocess.TimeoutExpired:
        seconds = "> 60"
    chat.close()
    return {"sigterm_to_exit_s": seconds}


def _machine() -> str:
    from tunehouse.bench.train import device_name  # the training bench's name for this machine

    return f"{device_name()}, {psutil.virtual_memory().total / 2**30:.0f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="serve another checkout's src/ (PYTHONPATH) instead of this tree's")
    parser.add_argument("--upload-mb", type=int, default=600)
    parser.add_argument("--chat-mb", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=["upload", "chat", "queued", "followers", "sigterm"])
    args = parser.parse_args()
    results: dict[str, object] = {"machine": _machine(), "src": str(args.src or REPO / "src")}
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        work = Path(tmp)
        shipped, long = prepare_models(work)

        def start(name: str, **env: str) -> Server:
            return new_server(work, name, args.src, shipped, long, **env)

        if "upload" in args.only:
            with start("upload-default") as server:
                results["upload_512mb_limit"] = upload(server, args.upload_mb * MB)
            with start("upload-700", TUNEHOUSE_MAX_FILE_BYTES=str(700 * MB)) as server:
                results["upload_700mb_limit"] = upload(server, args.upload_mb * MB)
            print(json.dumps(results, indent=1), flush=True)
        if "chat" in args.only:
            with start("chat-body") as server:
                results["chat_body"] = chat_body(server, args.chat_mb * MB)
        if "queued" in args.only:
            with start("queued") as server:
                results["queued_chats"] = queued_chats(server)
            print(json.dumps(results, indent=1), flush=True)
        if "followers" in args.only:
            with start("followers") as server:
                results["followers"] = followers(server, work)
            print(json.dumps(results, indent=1), flush=True)
        if "sigterm" in args.only:
            with start("sigterm") as server:
                results["sigterm"] = sigterm(server)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
