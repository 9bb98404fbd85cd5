"""Asking any OpenAI-compatible endpoint, through the official `openai` SDK, with bounded retries.

One request is one chat completion. A 5xx, a 429, a timeout or a dropped connection is retried
after a pause that doubles each time; a reply the task's reader cannot read is asked again with
the next seed. Both are bounded by `retries`; past that the request fails with a named reason and
the run goes on without it (the caller counts the drop). A 401, 403 or 404 would fail every request
alike, so it stops the run at once with a clear error. Every reply is stored in the reply cache
before it is read, so nothing received is ever asked for twice, even across runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

import openai

from tunehouse.data.synth.cache import ReplyCache, request_key
from tunehouse.data.synth.replies import Malformed
from tunehouse.errors import InvalidRequest

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
MAX_PAUSE_SECONDS = 30.0
SEED_STRIDE = 7919  # a retry's seed: the request's seed plus this times the attempt


@dataclass(frozen=True)
class Endpoint:
    base_url: str = DEFAULT_BASE_URL
    api_key: str = "sk-local"
    model: str = ""
    timeout: float = 120.0  # seconds per request
    retries: int = 3  # further attempts after a failed or unreadable reply
    backoff: float = 1.0  # seconds before the first retry after a server error; doubles each time


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    max_tokens: int = 256
    top_p: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestFailed(Exception):
    """A request that failed past its retries; the message is the drop's reason."""


@dataclass
class Usage:
    """What a run asked the endpoint for, and what the cache spared it."""

    requests: int = 0  # HTTP requests sent (retries included)
    cached: int = 0  # replies read from the cache instead
    failed: int = 0  # requests that failed (5xx, timeout, connection), each retried or counted as a drop
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def _transient(exc: openai.APIError) -> str | None:
    """The drop reason for a failure worth retrying; None for one that is the request's own fault."""
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return f"server error {status}" if status >= 500 or status in (408, 409, 429) else None
    return "unreadable response"


class Generator:
    """Chat completions from one endpoint and model, cached, retried, counted."""

    def __init__(self, endpoint: Endpoint, cache: ReplyCache, sampling: Sampling | None = None) -> None:
        if not endpoint.model:
            raise InvalidRequest("Name the generator model (--model).", param="model")
        self.endpoint = endpoint
        self.sampling = sampling or Sampling()
        self.cache = cache
        self.usage = Usage()
        self._client = openai.OpenAI(
            base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=endpoint.timeout, max_retries=0
        )

    def check(self) -> None:
        """Fail at once, saying why, when the endpoint cannot be reached or refuses the key (before any work)."""
        where = self.endpoint.base_url
        try:
            self._client.models.list()
        except openai.APIConnectionError as exc:
            cause = "timed out" if isinstance(exc, openai.APITimeoutError) else str(exc.__cause__ or exc.message)
            raise InvalidRequest(
                f"Cannot reach the generator at {where} ({cause}). Is `tunehouse serve` running? See --base-url.",
                param="base_url",
            ) from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise self._fatal(exc) from exc
        except openai.APIError:
            pass  # an endpoint without a model list can still answer chat completions

    def _fatal(self, exc: openai.APIStatusError) -> InvalidRequest:
        detail = exc.message if isinstance(exc.message, str) else str(exc)
        return InvalidRequest(
            f"The generator at {self.endpoint.base_url} refused model '{self.endpoint.model}' "
            f"({exc.status_code}): {detail}",
            param="model" if exc.status_code == 404 else "api_key" if exc.status_code in (401, 403) else None,
        )

    def _complete(self, messages: list[dict[str, str]], sampling: Sampling, seed: int) -> str:
        """One reply's text, retrying server errors and timeouts; RequestFailed past the retries."""
        reason = "no attempt"
        for attempt in range(1 + self.endpoint.retries):
            if attempt:
                time.sleep(min(self.endpoint.backoff * 2 ** (attempt - 1), MAX_PAUSE_SECONDS))
            self.usage.add(requests=1)
            try:
                response = self._client.chat.completions.create(
                    model=self.endpoint.model,
                    messages=messages,  # type: ignore[arg-type]  # plain dicts are what the SDK sends
                    seed=seed,
                    **sampling.to_dict(),
                )
                text = response.choices[0].message.content or ""
            except openai.APIError as exc:
                transient = _transient(exc)
                if transient is None:
                    status = getattr(exc, "status_code", 400)
                    if status in (401, 403, 404):
                        raise self._fatal(exc) from exc  # type: ignore[arg-type]  # APIStatusError by status
                    raise RequestFailed(f"refused ({status})") from exc
                self.usage.add(failed=1)
                reason = transient
                continue
            except (AttributeError, IndexError, TypeError):  # a 200 whose body is no chat completion
                self.usage.add(failed=1)
                reason = "unreadable response"
                continue
            if response.usage is not None:
                self.usage.add(
                    prompt_tokens=response.usage.prompt_tokens or 0,
                    completion_tokens=response.usage.completion_tokens or 0,
                )
            return text
        raise RequestFailed(reason)

    def ask(
        self,
        messages: list[dict[str, str]],
        read: Callable[[str], T],
        seed: int,
        max_tokens: int | None = None,
    ) -> T:
        """The reader's result for a reply, from the cache or the endpoint, asking again while unreadable.

        `max_tokens` lowers the run's ceiling for this request (never raises it).
        """
        sampling = self.sampling
        if max_tokens is not None and max_tokens < sampling.max_tokens:
            sampling = replace(sampling, max_tokens=max_tokens)
        problem = "malformed reply"
        for attempt in range(1 + self.endpoint.retries):
            attempt_seed = seed + SEED_STRIDE * attempt
            key = request_key(self.endpoint.model, messages, sampling.to_dict(), attempt_seed)
            reply = self.cache.get(key)
            if reply is None:
                reply = self._complete(messages, sampling, attempt_seed)
                self.cache.put(key, self.endpoint.model, reply)
            else:
                self.usage.add(cached=1)
            try:
                return read(reply)
            except Malformed as exc:
                problem = f"malformed reply ({exc})"
        raise RequestFailed(problem)

    def close(self) -> None:
        self._client.close()
