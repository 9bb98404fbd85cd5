"""Process-wide settings, read from the environment so the server, worker, trainer child and CLI agree.

Every part that needs a path or a knob asks `settings()`; nothing else reads `os.environ` for these,
so a test can point a whole process tree at a temporary home by setting one variable.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    api_key: str | None
    admin_key: str | None
    """The key that manages projects and their keys (`/v1/organization/projects`); unset: nobody can."""
    organization: str
    max_file_bytes: int
    train_processes: int | None
    """Trainer processes per job (None: one per visible CUDA GPU, one on CPU); `training.processes` overrides."""
    max_request_bytes: int
    """Largest request body other than a file upload (chat, completions, job creation)."""
    max_queued_generations: int
    """Chat and completion requests that may wait for the serving engine; one more is refused with a 429."""
    serve_threads: int
    """CPU cores the serving engine keeps while a training job runs beside it (default half); a trainer child
    gets the rest (`jobs/launch.py`). 0 on a machine that only trains: its trainers get every core."""
    allowed_hosts: tuple[str, ...]
    """Host names the server answers besides loopback (`api/guard.py`), e.g. a reverse proxy's."""
    allowed_origins: tuple[str, ...]
    """Web origins (`https://app.example.com`) that may send state-changing requests (`api/guard.py`)."""
    allowed_outbound: tuple[str, ...]
    """Hosts and networks a job's integrations may send data to (`jobs/integrations.py`); none by default."""
    model_aliases: tuple[str, ...]
    """`NAME=TARGET` model aliases for this server (`models/aliases.py`); the store's aliases win over them."""
    kernels_dir: Path
    """Compiled CPU kernels (`train/speed/kernels.py`): built for this machine, shared by every home."""
    grader_base_url: str | None
    """An OpenAI-compatible endpoint (`https://host/v1`) for model graders whose model this server does not
    serve, and for the `cosine` text-similarity grader's embeddings (`eval/graders/`)."""
    grader_api_key: str | None
    """The key sent to `grader_base_url`."""
    grader_embedding_model: str | None
    """The model `grader_base_url` embeds with for `cosine` text similarity; without it `cosine` is refused."""
    python_grader_timeout_s: float
    """Wall-clock seconds a `python` grader may run for one item before it is stopped."""
    python_grader_memory_mb: int
    """Address space a `python` grader's process may use, in MiB, before its allocations fail."""
    serve_backend: str
    """What generates chat and completions: `builtin` (tunehouse's own engine) or `vllm` (`serve/vllm_backend.py`)."""
    vllm_python: Path | None
    """A Python with vLLM for `serve_backend=vllm`; unset: the checkout's `.venv-vllm` (`make vllm`)."""
    vllm_args: tuple[str, ...]
    """Extra command-line arguments for each vLLM server, after tunehouse's own (which they override)."""
    vllm_max_lora_rank: int
    """The largest LoRA rank vLLM makes room for (`--max-lora-rank`); an adapter above it is refused."""
    vllm_start_timeout_s: float
    """How long a vLLM server may take to load its model before its first request fails."""
    llamacpp_python: Path | None
    """A Python with llama-cpp-python, for checking GGUF exports in llama.cpp (`models/export/verify.py`);
    unset: the checkout's `.venv-llamacpp` (`make llamacpp`) when there is one."""
    auto_eval_examples: int
    """Validation examples the base and the fine-tuned model answer when a job succeeds (`jobs/evals.py`); 0: none."""
    public_url: str
    """The server's address as its users reach it (`https://tunehouse.example.com`): links in emails."""
    notify_email: str | None
    """Who is emailed when any job ends (`jobs/email.py`), besides a job's own `metadata.notify_email`."""
    smtp_host: str | None
    """The SMTP server that sends those emails; unset: no email is sent and `notify_email` is refused."""
    smtp_port: int | None
    """Its port; unset: 465 with `ssl`, 587 with `starttls`, 25 with `none`."""
    smtp_tls: str
    """`starttls` (upgrade a plain connection), `ssl` (TLS from the start) or `none`."""
    smtp_user: str | None
    """The login, if the SMTP server asks for one (with `smtp_password`)."""
    smtp_password: str | None
    smtp_from: str
    """The emails' From address."""
    notify_retry_base_s: float
    """The wait before a failed webhook or email delivery is tried again; it doubles with each failure."""
    notify_retry_max_s: float
    """The longest wait between two tries of one delivery."""
    notify_give_up_s: float
    """How long after its event a delivery is still tried; then it is marked failed."""
    blob_url: str | None
    """Where files, checkpoints and trained models are shared between the API and workers on other
    machines: a folder every machine mounts (`/mnt/tunehouse`) or an fsspec URL (`s3://bucket/prefix`);
    each home keeps a local copy of what it uses (`store/blobs.py`). Unset: the home alone."""
    lease_seconds: float
    """How long a worker holds a job without a heartbeat before another worker may take it over."""

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"


def _entries(variable: str) -> tuple[str, ...]:
    """A comma-separated list setting, blanks dropped."""
    return tuple(entry.strip() for entry in os.environ.get(variable, "").split(",") if entry.strip())


def settings() -> Settings:
    """Read settings now (not at import), so changing the environment in tests takes effect."""
    home = Path(os.environ.get("TUNEHOUSE_HOME", Path.home() / ".tunehouse")).expanduser().resolve()
    database_url = os.environ.get("TUNEHOUSE_DATABASE_URL") or f"sqlite:///{home / 'tunehouse.db'}"
    return Settings(
        home=home,
        database_url=database_url,
        api_key=os.environ.get("TUNEHOUSE_API_KEY") or None,
        admin_key=os.environ.get("TUNEHOUSE_ADMIN_KEY") or None,
        organization=os.environ.get("TUNEHOUSE_ORGANIZATION", "tunehouse"),
        max_file_bytes=int(os.environ.get("TUNEHOUSE_MAX_FILE_BYTES", 512 * 1024 * 1024)),
        train_processes=int(os.environ.get("TUNEHOUSE_TRAIN_PROCESSES") or 0) or None,
        max_request_bytes=int(os.environ.get("TUNEHOUSE_MAX_REQUEST_BYTES", 8 * 1024 * 1024)),
        max_queued_generations=int(os.environ.get("TUNEHOUSE_MAX_QUEUED_GENERATIONS", 64)),
        serve_threads=int(os.environ.get("TUNEHOUSE_SERVE_THREADS") or max(1, (os.cpu_count() or 2) // 2)),
        allowed_hosts=_entries("TUNEHOUSE_ALLOWED_HOSTS"),
        allowed_origins=_entries("TUNEHOUSE_ALLOWED_ORIGINS"),
        allowed_outbound=_entries("TUNEHOUSE_ALLOWED_OUTBOUND"),
        model_aliases=_entries("TUNEHOUSE_MODEL_ALIASES"),
        kernels_dir=Path(
            os.environ.get("TUNEHOUSE_KERNELS_DIR", Path.home() / ".cache" / "tunehouse" / "kernels")
        ).expanduser(),
        grader_base_url=os.environ.get("TUNEHOUSE_GRADER_BASE_URL") or None,
        grader_api_key=os.environ.get("TUNEHOUSE_GRADER_API_KEY") or None,
        grader_embedding_model=os.environ.get("TUNEHOUSE_GRADER_EMBEDDING_MODEL") or None,
        python_grader_timeout_s=float(os.environ.get("TUNEHOUSE_PYTHON_GRADER_TIMEOUT_S", 30)),
        python_grader_memory_mb=int(os.environ.get("TUNEHOUSE_PYTHON_GRADER_MEMORY_MB", 1024)),
        serve_backend=os.environ.get("TUNEHOUSE_SERVE_BACKEND", "builtin").strip().lower() or "builtin",
        vllm_python=Path(os.environ["TUNEHOUSE_VLLM_PYTHON"]).expanduser()
        if os.environ.get("TUNEHOUSE_VLLM_PYTHON")
        else None,
        vllm_args=tuple(shlex.split(os.environ.get("TUNEHOUSE_VLLM_ARGS", ""))),
        vllm_max_lora_rank=int(os.environ.get("TUNEHOUSE_VLLM_MAX_LORA_RANK", 64)),
        vllm_start_timeout_s=float(os.environ.get("TUNEHOUSE_VLLM_START_TIMEOUT_S", 1200)),
        llamacpp_python=Path(os.environ["TUNEHOUSE_LLAMACPP_PYTHON"]).expanduser()
        if os.environ.get("TUNEHOUSE_LLAMACPP_PYTHON")
        else None,
        auto_eval_examples=int(os.environ.get("TUNEHOUSE_AUTO_EVAL_EXAMPLES", 50)),
        public_url=os.environ.get("TUNEHOUSE_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"),
        notify_email=os.environ.get("TUNEHOUSE_NOTIFY_EMAIL") or None,
        smtp_host=os.environ.get("TUNEHOUSE_SMTP_HOST") or None,
        smtp_port=int(os.environ["TUNEHOUSE_SMTP_PORT"]) if os.environ.get("TUNEHOUSE_SMTP_PORT") else None,
        smtp_tls=os.environ.get("TUNEHOUSE_SMTP_TLS", "starttls").lower(),
        smtp_user=os.environ.get("TUNEHOUSE_SMTP_USER") or None,
        smtp_password=os.environ.get("TUNEHOUSE_SMTP_PASSWORD") or None,
        smtp_from=os.environ.get("TUNEHOUSE_SMTP_FROM", "tunehouse@localhost"),
        notify_retry_base_s=float(os.environ.get("TUNEHOUSE_NOTIFY_RETRY_BASE_S", 1)),
        notify_retry_max_s=float(os.environ.get("TUNEHOUSE_NOTIFY_RETRY_MAX_S", 600)),
        notify_give_up_s=float(os.environ.get("TUNEHOUSE_NOTIFY_GIVE_UP_S", 24 * 3600)),
        blob_url=os.environ.get("TUNEHOUSE_BLOB_URL") or None,
        lease_seconds=float(os.environ.get("TUNEHOUSE_LEASE_SECONDS", 60)),
    )
