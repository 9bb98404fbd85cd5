"""The child process of a `python` grader: limits itself, then runs the grader's `grade(sample, item)`.

Run as `python -I python_sandbox.py INPUT RESULT MEMORY_BYTES CPU_SECONDS` in an empty folder with
an empty environment; it imports nothing of tunehouse. Before the grader's code runs it sets its
address-space, CPU-time and file-size limits, leaves the network (a new user and network namespace,
where the kernel allows one: no interface but a loopback that is down), and, whether or not that
worked, makes every socket Python's own API would create refuse to be made, whatever its family
(Unix sockets included, which a namespace does not cut); modules that subclass socket still import.
The result (`{"score": x}` or `{"error": traceback}`) goes to RESULT as JSON; stdout and stderr are
the grader's own.
"""

from __future__ import annotations

import ctypes
import json
import math
import resource
import sys
import traceback
from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MAX_FILE_BYTES = 16 * 1024 * 1024  # what the grader may write to stdout, stderr or a file of its own
MAX_ERROR_CHARS = 4000


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _leave_network() -> str:
    """'namespace' when this process now has a network of its own with no way out, else 'python'."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        isolated = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        isolated = False
    import _socket
    import socket

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError("network access is disabled in python graders")

    class RefusedSocket(_socket.socket):  # still a class, so modules that subclass it (ssl) import
        __init__ = refused

    socket.socket.__init__ = refused  # type: ignore[method-assign]  # every socket, SSLSocket and socketpair's too
    _socket.socket = RefusedSocket  # type: ignore[misc]  # the C type, for code that reaches past socket.py
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        setattr(socket, name, refused)
    return "namespace" if isolated else "python"


def _write(path: str, result: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result, out)


def main(input_path: str, result_path: str, memory_bytes: int, cpu_seconds: int) -> None:
    with open(input_path, encoding="utf-8") as source:
        job = json.load(source)
    network = _leave_network()
    _limit(memory_bytes, cpu_seconds)
    try:
        namespace: dict[str, Any] = {"__name__": "grader"}
        exec(compile(job["source"], "<grader source>", "exec"), namespace)  # the grader's own code, in this jail
        score = namespace["grade"](job["sample"], job["item"])
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise TypeError(f"grade() must return a finite number, not {score!r}")
        _write(result_path, {"score": float(score), "network": network})
    except BaseException as error:  # whatever the grader raised (SystemExit too) is its error
        # the traceback from the grader's own frames on: this file's frame is no business of the user's
        lines = traceback.format_exception(
            type(error), error, error.__traceback__.tb_next if error.__traceback__ else None
        )
        del error
        _write(result_path, {"error": "".join(lines)[-MAX_ERROR_CHARS:], "network": network})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
