"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions wire protocol (tests only)."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ServerConfig:
    api_key: str | None = "sk-test-123"  # None: no key required
    reply: str = "Water boils at 100 degrees Celsius at sea level [2]. Ice floats [1][7]."
    fail_status: int | None = None  # answer every request with this status and an OpenAI error body
    malformed: bool = False  # answer with something that is not a completion
    stream_fault: str | None = None  # "error": an error event mid-stream; "garbage": a non-JSON event
    ignore_stream: bool = False  # answer with a plain JSON completion even when streaming was asked for
    delay: float = 0.0  # seconds to wait before answering (a slow endpoint)
    #: When given, every request waits (up to 10 min) until it is set: an endpoint that hangs until the test
    #: releases it, so a caller can be held at a known point however fast the machine is.
    gate: threading.Event | None = None
    arrived: threading.Event = field(default_factory=threading.Event)  # set once a request has come in
    url: str = ""  # the server's base URL (``.../v1``), for fixtures that hand the config out
    requests: list[dict[str, Any]] = field(default_factory=list)

    def pieces(self) -> list[str]:
        return re.findall(r"\S+\s*", self.reply)


_DATA_URL = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+={0,2}")


def _parts_problem(parts: list[Any]) -> str | None:
    """Why a list of user content parts is not valid OpenAI vision input, or None."""
    for part in parts:
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
            return f"bad content part {str(part)[:80]!r}"
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return "text parts need a text string"
        if part["type"] == "image_url":
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str) or not _DATA_URL.fullmatch(url):
                return f"image_url.url must be a base64 data URL, got {str(url)[:60]!r}"
    return None


def image_urls(body: dict[str, Any]) -> list[str]:
    """The ``image_url`` URLs of the user message of a recorded request body, in order."""
    content = body["messages"][1]["content"]
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"] if isinstance(content, list) else []


class ChatHandler(BaseHTTPRequestHandler):
    """Speaks enough of POST /v1/chat/completions for the generator."""

    server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def _problem(self, body: Any) -> str | None:
        """Why ``body`` is not a valid request for this test, or None."""
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return "model is required"
        messages = body.get("messages")
        if not isinstance(messages, list) or [m.get("role") for m in messages] != ["system", "user"]:
            return "expected a system and a user message"
        user = messages[1]["content"]
        if isinstance(user, list):  # vision request: text and image_url parts
            if problem := _parts_problem(user):
                return problem
            user = "".join(part["text"] for part in user if part["type"] == "text")
        if not isinstance(user, str) or "<sources>\n[1] " not in user or "\n[1] " in messages[0]["content"]:
            return "sources must be in the user message only"
        if not isinstance(body.get("stream"), bool):
            return "stream must be a boolean"
        return None

    def do_POST(self) -> None:
        cfg = self.server.config
        if self.path != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.loads(raw)
        cfg.requests.append({"body": body, "authorization": self.headers.get("Authorization")})
        cfg.arrived.set()
        if cfg.gate is not None:
            cfg.gate.wait(600)
        if cfg.delay:
            time.sleep(cfg.delay)
        if cfg.fail_status:
            message = "The server had an error while processing your request."
            return self._error(cfg.fail_status, message, "server_error")
        if cfg.api_key and self.headers.get("Authorization") != f"Bearer {cfg.api_key}":
            return self._error(401, "Incorrect API key provided: sk-wr***ng.")
        if problem := self._problem(body):
            return self._error(400, problem)
        if cfg.malformed:
            return self._json(200, {"id": "x", "object": "chat.completion", "choices": []})
        if body["stream"] and not cfg.ignore_stream:
            return self._stream(body["model"], cfg.pieces(), cfg.stream_fault)
        return self._json(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": cfg.reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    def _stream(self, model: str, pieces: list[str], fault: str | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        self.wfile.write(b": keep-alive\n\n")
        event({"role": "assistant", "content": ""})
        for i, piece in enumerate(pieces):
            event({"content": piece})
            if i == 1 and fault == "error":
                self.wfile.write(b'data: {"error": {"message": "Model overloaded, retry later"}}\n\n')
                return
            if i == 1 and fault == "garbage":
                self.wfile.write(b"data: {not json\n\n")
                return
        event({}, "stop")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    config: ServerConfig


