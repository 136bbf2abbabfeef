"""A local OpenAI-compatible HTTP server on 127.0.0.1: the test double for the hosted API, reached
through the real ``openai`` client. It answers ``/v1/chat/completions`` and ``/v1/completions``
with short ``priority`` bodies and token usage, checks the bearer token, and follows a script of
answers, one per request: ``ok``, ``429`` (with Retry-After), ``500``, ``503``, ``slow:<s>``
(answers after s seconds), ``401`` (echoes the token it was sent, as some servers do).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BODIES = [
    "    return float(sum(el))\n",
    "    return float(len(set(el)))\n",
    "    return -float(sum(el))\n",
    "    return float(el.count(1))\n",
]


@dataclass
class Seen:
    path: str
    model: str
    n: int
    max_tokens: int | None
    temperature: float | None
    authorized: bool
    prompt: str
    at: float = field(default_factory=time.monotonic)


class StandIn:
    """``with StandIn(key="sk-...") as api: api.base_url``; ``api.script`` takes answers in order."""

    def __init__(self, key: str | None = None, script: list[str] | None = None, ignore_n: bool = False) -> None:
        self.key = key
        self.script: deque[str] = deque(script or [])
        self.ignore_n = ignore_n  # answer one choice whatever n asks (as Ollama does)
        self.seen: list[Seen] = []
        self.answers: list[str] = []  # what each request got: ok, 429, slow:...
        self.lock = threading.Lock()
        self.counter = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.stand_in = self  # type: ignore[attr-defined]
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self) -> str:
        with self.lock:
            return self.script.popleft() if self.script else "ok"


_ERRORS = {"429": (429, "Rate limit reached", "rate_limit", {"retry-after": "0.2"}),
           "500": (500, "server error", "server_error", {}), "503": (503, "overloaded", "server_error", {})}


class _Handler(BaseHTTPRequestHandler):
    @property
    def stand_in(self) -> StandIn:
        return self.server.stand_in  # type: ignore[attr-defined,no-any-return]

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        stand_in = self.stand_in
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        auth = self.headers.get("authorization", "")
        authorized = stand_in.key is None or auth == f"Bearer {stand_in.key}"
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        stand_in.seen.append(Seen(self.path, body.get("model", ""), int(body.get("n", 1)),
                                  body.get("max_tokens"), body.get("temperature"), authorized, prompt))
        answer = stand_in._next()
        stand_in.answers.append(answer)
        if not authorized or answer == "401":
            # Echo the token the way some servers do: the client must keep it out of its errors.
            self._send(401, {"error": {"message": f"Incorrect API key provided: {auth[7:]}",
                                       "type": "invalid_request_error", "code": "invalid_api_key"}})
        elif answer in _ERRORS:
            status, message, kind, headers = _ERRORS[answer]
            self._send(status, {"error": {"message": message, "type": kind}}, headers)
        else:
            if answer.startswith("slow:"):
                time.sleep(float(answer.split(":", 1)[1]))
            self._complete(body, chat, prompt)

    def _complete(self, body: dict[str, Any], chat: bool, prompt: str) -> None:
        stand_in = self.stand_in
        n = 1 if stand_in.ignore_n else int(body.get("n", 1))
        choices = []
        texts = []
        for i in range(n):
            with stand_in.lock:
                text = BODIES[stand_in.counter % len(BODIES)]
                stand_in.counter += 1
            texts.append(text)
            if chat:
                choices.append({"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}})
            else:
                choices.append({"index": i, "finish_reason": "stop", "text": text, "logprobs": None})
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": sum(len(t.split()) for t in texts)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self._send(200, {"id": "cmpl-stand-in", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": body.get("model", ""), "choices": choices,
                         "usage": usage})

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a time-out)
            pass
