"""A real local HTTP server that speaks OpenAI's chat completions and counts every request it gets.

It answers from the prompt itself, the way a well-behaved generator would: questions about the
passage's sentences, answers quoted from the passage, rephrasings that keep the question's words.
Markers in a request's last user message switch it to failing on purpose: `GARBLE` gets a reply in
no expected shape, `BROKEN` a 500, `SLOW` no reply until the client has given up. It is a server
(sockets, HTTP, JSON, threads), not a mock: the synth commands talk to it through the openai SDK.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tunehouse.data.synth.cache import request_key

_SENTENCE = re.compile(r"[^.!?]+[.!?]")
_WORD = re.compile(r"[A-Za-z]{4,}")
HANG_SECONDS = 6.0


def _sentences(passage: str) -> list[str]:
    return [" ".join(s.split()) for s in _SENTENCE.findall(passage) if len(s.split()) >= 4]


def _reply(prompt: str) -> str:
    """What a careful generator would answer to one of tunehouse's default prompts."""
    if match := re.search(r"Passage:\n(.*)\n\nWrite (\d+) questions", prompt, re.S):
        sentences = _sentences(match.group(1))[: int(match.group(2))]
        return "\n".join(
            f"{i}. What does the text say about {' '.join(s.split()[:5])}?" for i, s in enumerate(sentences, 1)
        )
    if match := re.search(r"Passage:\n(.*)\n\nQuestion: (.*)\nAnswer: (.*)\n\nRating:", prompt, re.S):
        return "8"
    if match := re.search(r"Passage:\n(.*)\n\nQuestion: (.*)", prompt, re.S):
        asked = set(_WORD.findall(match.group(2).lower()))
        return max(_sentences(match.group(1)), key=lambda s: len(asked & set(_WORD.findall(s.lower()))))
    if match := re.search(r"Question: (.*)\nAnswer: .*\n\nWrite (\d+) other ways", prompt, re.S):
        question = match.group(1).rstrip("?")
        openers = ("Could you tell me", "I would like to know", "Please say", "Do you know", "Tell me")
        return "\n".join(f"{i}. {openers[i - 1]}: {question}?" for i in range(1, int(match.group(2)) + 1))
    if match := re.search(r"Passage:\n(.*)\n\nRewrite this passage", prompt, re.S):
        return " ".join(reversed(_sentences(match.group(1))))
    return "I do not know this prompt."


class CannedGenerator:
    """Start with `start()`; `requests` and `answered` hold the chat completion bodies received and answered."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.answered: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> CannedGenerator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def keys(self, bodies: list[dict[str, Any]]) -> list[str]:
        """The reply-cache key each request body is stored under."""
        params = ("temperature", "max_tokens", "top_p")
        return [request_key(b["model"], b["messages"], {p: b[p] for p in params}, b["seed"]) for b in bodies]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200, {"object": "list", "data": [{"id": "canned", "object": "model", "owned_by": "test"}]}
                    )
                else:
                    self._send(404, {"error": {"message": "no such route", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with canned._lock:
                    canned.requests.append(body)
                prompt = body["messages"][-1]["content"]
                if "BROKEN" in prompt:
                    self._send(500, {"error": {"message": "the model crashed", "type": "server_error"}})
                    return
                if "SLOW" in prompt:
                    time.sleep(HANG_SECONDS)
                    return
                time.sleep(canned.delay)
                text = "Sure! Happy to help." if "GARBLE" in prompt else _reply(prompt)
                self._send(
                    200,
                    {
                        "id": "chatcmpl-canned",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {
                            "prompt_tokens": len(str(body).split()),
                            "completion_tokens": len(text.split()),
                            "total_tokens": 0,
                        },
                    },
                )
                with canned._lock:
                    canned.answered.append(body)

        return Handler
