"""The server under load, against a real `tunehouse serve` on 127.0.0.1: chats wait their turn in a
bounded line without slowing the other routes, clients that hang up (queued chats, event followers)
give back what they held at once, and SIGTERM stops the server while a generation runs.

The long generations run on `tiny-long`, the tiny random Llama with a 64k context: greedy, it never
meets its end-of-turn token, so `max_tokens=10**9` keeps it busy for minutes unless it is stopped.
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import TINY_ID, Server, make_home
from tests.support import chat_rows, upload_rows
from tunehouse.serve.engine import MAX_BATCH

LONG_ID = "tiny-long"
LONG_CONTEXT = 65_536
QUEUED = 64  # the server's default TUNEHOUSE_MAX_QUEUED_GENERATIONS


@pytest.fixture(scope="module")
def long_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("tiny-long") / "model"
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = LONG_CONTEXT
    (target / "config.json").write_text(json.dumps(config))
    return target


def start_server(home: Path, long_model_dir: Path, tiny_model_dir: Path, *, worker: bool) -> Server:
    """A server with the tiny and tiny-long models; without a worker, a job stays where it was put
    (`running_server` always starts one)."""
    srv = Server(home)
    for model_id, folder in ((TINY_ID, tiny_model_dir), (LONG_ID, long_model_dir)):
        added = srv.cli("models", "add", model_id, str(folder))
        assert added.returncode == 0, added.stderr
    if worker:
        return srv.start()
    with open(srv.log, "ab") as log:
        srv.process = subprocess.Popen(
            [sys.executable, "-m", "tunehouse.cli.main", "serve", "--port", str(srv.port), "--no-worker"],
            env=srv.env,
            stdout=log,
            stderr=log,
        )
    deadline = time.time() + 60
    while time.time() < deadline:
        assert srv.process.poll() is None, srv.log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{srv.port}/health", timeout=1).status_code == 200:
                return srv
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not start: {srv.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def busy_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path, long_model_dir: Path
) -> Iterator[Server]:
    srv = start_server(
        make_home(tmp_path_factory.mktemp("load-home"), shipped_model_dir), long_model_dir, tiny_model_dir, worker=False
    )
    try:
        srv.client().chat.completions.create(model=LONG_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(busy_server: Server) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    with httpx.Client(base_url=busy_server.base_url, timeout=30, limits=limits) as client:
        yield client


def hanging_chat(srv: Server, *, stream: bool = False) -> socket.socket:
    """A chat that would generate for minutes, sent on a raw socket that never reads its answer."""
    body = json.dumps(
        {
            "model": LONG_ID,
            "messages": [{"role": "user", "content": "Go on forever."}],
            "max_tokens": 10**9,
            "temperature": 0,
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-local\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(head + body)
    return sock


def answered(sockets: list[socket.socket]) -> list[socket.socket]:
    """The sockets the server has written to (an answer, or an error)."""
    readable, _, _ = select.select(sockets, [], [], 0)
    return readable


def latencies(http: httpx.Client, path: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        assert http.get(path).status_code == 200
        times.append(time.perf_counter() - started)
    return times


def quick_chat(srv: Server) -> float:
    """Seconds a two-token chat takes: how long the line ahead of it is. A hang-up takes the server up to
    a quarter of a second to notice, so a line that was full may refuse it once (the SDK retries)."""
    started = time.perf_counter()
    reply = (
        srv.client()
        .with_options(timeout=30, max_retries=3)
        .chat.completions.create(model=TINY_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    )
    assert reply.choices[0].finish_reason == "length"
    return time.perf_counter() - started


def test_queued_chats_leave_the_other_routes_fast_and_hanging_up_clears_the_line(
    busy_server: Server, http: httpx.Client
) -> None:
    chats = [hanging_chat(busy_server) for _ in range(QUEUED)]  # a batch generating, the rest waiting
    try:
        time.sleep(2)
        assert answered(chats) == []  # none refused, none done: they wait their turn
        models = latencies(http, "/models", 20)
        assert statistics.median(models) < 0.25 and max(models) < 1.0, models
        assert max(latencies(http, "/files", 3) + latencies(http, "/fine_tuning/jobs", 3)) < 1.0
    finally:
        for chat in chats:
            chat.close()
    # The running generation stopped and the waiting ones left the line: a new chat goes next.
    assert quick_chat(busy_server) < 10


def test_past_the_line_s_bound_a_chat_is_refused_with_429(busy_server: Server, http: httpx.Client) -> None:
    chats = [hanging_chat(busy_server) for _ in range(MAX_BATCH)]
    time.sleep(1)  # these fill the running batch; the line behind it fills up
    chats += [hanging_chat(busy_server, stream=index % 2 == 1) for index in range(QUEUED)]
    try:
        time.sleep(2)
        assert answered(chats) == []
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as refused:
            busy_server.client().chat.completions.create(
                model=TINY_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert time.perf_counter() - started < 2
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "rate_limit_exceeded", error
        assert error["type"] == "requests" and "busy" in error["message"]
        streamed = http.post(
            "/completions",
            json={"model": TINY_ID, "prompt": "hi", "max_tokens": 2, "stream": True},
        )
        assert streamed.status_code == 429 and streamed.json()["error"]["code"] == "rate_limit_exceeded"
        assert streamed.headers["retry-after"] == "1"  # the SDK waits that long before it retries
    finally:
        for chat in chats:
            chat.close()
    assert quick_chat(busy_server) < 10


def test_event_followers_that_hang_up_give_back_their_connections_and_threads(
    busy_server: Server, http: httpx.Client, tmp_path: Path
) -> None:
    client = busy_server.client()
    job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=upload_rows(client, tmp_path, chat_rows(10)))
    server = psutil.Process(busy_server.process.pid)  # type: ignore[union-attr]
    latencies(http, "/models", 3)
    baseline = server.num_threads()

    followers = []
    for _ in range(QUEUED):  # `openai api fine_tunes.follow`, 64 times over; the job never ends here
        follower = http.send(http.build_request("GET", f"/fine-tunes/{job.id}/events?stream=true"), stream=True)
        assert follower.status_code == 200
        followers.append(follower)
    lines = [follower.iter_lines() for follower in followers]
    for follower_lines in lines:
        assert next(follower_lines).startswith("data: ")  # the job's events so far
    assert server.num_threads() <= baseline + 4  # following holds no thread
    started = time.perf_counter()  # with nothing new to say, a follower still writes now and then
    assert next(line for line in lines[0] if line.startswith(":")) == ": keep-alive"
    assert time.perf_counter() - started < 10
    for follower in followers:
        follower.close()  # the client hangs up

    started = time.perf_counter()
    assert max(latencies(http, "/models", 10)) < 1.0
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and time.perf_counter() - started < 5
    deadline = time.time() + 10
    while time.time() < deadline:
        left = [c for c in server.net_connections("tcp") if c.status == psutil.CONN_CLOSE_WAIT]
        if not left and server.num_threads() <= baseline + 4:
            break
        time.sleep(0.25)
    assert left == [], f"{len(left)} hung-up connections still held"
    assert server.num_threads() <= baseline + 4


def test_sigterm_stops_the_server_while_a_generation_runs(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path, long_model_dir: Path
) -> None:
    srv = start_server(make_home(tmp_path / "home", shipped_model_dir), long_model_dir, tiny_model_dir, worker=True)
    assert srv.process is not None
    try:
        assert quick_chat(srv) < 30  # the model is loaded
        chats = [hanging_chat(srv), hanging_chat(srv, stream=True), hanging_chat(srv)]
        time.sleep(1)
        started = time.perf_counter()
        srv.process.send_signal(signal.SIGTERM)
        srv.process.wait(timeout=20)
        stopped = time.perf_counter() - started
        for chat in chats:
            chat.close()
    finally:
        srv.stop()
    log = srv.log.read_text()
    assert stopped < 15, log[-3000:]  # uvicorn's 10 s of grace, then the generation stops with its request
    assert "Application shutdown complete" in log  # the lifespan closed the engine and the store
