"""Generator for any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama...).

The request is ``POST {base_url}/chat/completions`` with the messages of
:func:`heterag.generators.prompting.build_messages`: the system prompt, then a user message holding
the retrieved text inside a delimited ``<sources>`` block and the question.

With a query image and/or hits of image items (and ``send_images``), the user message
``content`` becomes a list of parts for vision endpoints: ``{"type": "text", "text":
"Query image:"}`` and the query image as ``{"type": "image_url", "image_url": {"url":
"data:image/...;base64,..."}}``, then each retrieved image (at most ``max_images``) after a
``"Source [n] image:"`` text part, then the text with the sources block and the question.
Images larger than ``image_max_side`` are downscaled (aspect kept; JPEG sources re-encoded
as JPEG quality 90, others as PNG). Requests without images keep the plain string content.

With
``stream=True`` the server-sent-event stream is parsed and every content delta goes to
``on_token``; otherwise the whole completion is read at once (and given to ``on_token``
in one piece).

``Answer.citations`` are the hits the model cited with ``[n]`` markers.
``Answer.context_tokens`` is the token count of the hit texts, by ``count_tokens`` when one
is given (e.g. ``embedder.count_tokens``), else estimated as ``round(words * 4 / 3)``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from heterag.core.errors import GeneratorError, InvalidInputError
from heterag.core.images import ImageRef
from heterag.core.results import Answer, Hit
from heterag.generators.base import StreamCallback
from heterag.generators.prompting import (
    DEFAULT_SYSTEM_PROMPT,
    PromptImage,
    build_messages,
    build_user_parts,
    collect_images,
    estimate_tokens,
    parse_citations,
    start_generation,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV = "OPENAI_BASE_URL"
#: Longest piece of a non-JSON error body quoted in an error message.
_MAX_ERROR_CHARS = 500


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve_base_url(base_url: str | None) -> str:
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {url!r}")
    return url


def _resolve_api_key(api_key: str | None, api_key_env: str, base_url: str) -> str | None:
    key = api_key or os.environ.get(api_key_env) or None
    if key is None and not is_loopback(base_url):
        raise GeneratorError(
            f"no API key for {base_url}: set the {api_key_env} environment variable or pass api_key "
            "(a key is optional only for endpoints on localhost)"
        )
    return key


def _error_message(body: bytes) -> str:
    """The server's error message from an OpenAI-shaped ``{"error": {"message": ...}}`` body, or the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:_MAX_ERROR_CHARS] or "(empty response body)"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return data["message"]
        if isinstance(data.get("detail"), str):
            return data["detail"]
    return text[:_MAX_ERROR_CHARS]


def _first_choice(data: Any, where: str) -> dict[str, Any]:
    """``data["choices"][0]`` of a completion or chunk, or :class:`GeneratorError` if absent."""
    if isinstance(data, dict) and "error" in data:
        raise GeneratorError(f"{where}: server reported an error: {_error_message(json.dumps(data).encode())}")
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise GeneratorError(f"{where}: malformed response, no choices[0] in {str(data)[:200]!r}")
    return choices[0]


def _log_finish(choice: dict[str, Any], url: str) -> None:
    if choice.get("finish_reason") == "length":
        logger.warning("answer from %s was cut off at max_tokens", url)


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The payloads of the ``data:`` fields of a server-sent-event stream, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, "event:"/"id:" fields
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        if payload:
            yield payload


class OpenAIGenerator:
    """Answers with an LLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``. The
    bearer key is ``api_key``, else ``$<api_key_env>``; it may be missing only for loopback
    endpoints (a local server). ``count_tokens`` (e.g. an embedder's) counts context tokens;
    without it they are estimated as ``round(words * 4 / 3)``.

    Images (the query image, and the images of retrieved image items) are sent as
    ``image_url`` content parts when ``send_images`` is true: the query image always, at most
    ``max_images`` retrieved ones, each downscaled to ``image_max_side`` pixels on its longer side.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout: float = 60.0,
        stream: bool = True,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        count_tokens: Callable[[str], int] | None = None,
        send_images: bool = True,
        max_images: int = 4,
        image_max_side: int = 1024,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidInputError("model must be a non-empty model name")
        if not math.isfinite(temperature) or temperature < 0:
            raise InvalidInputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if not timeout or timeout <= 0:
            raise InvalidInputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0:
            raise InvalidInputError(f"max_images must be an integer >= 0, got {max_images!r}")
        if isinstance(image_max_side, bool) or not isinstance(image_max_side, int) or image_max_side < 16:
            raise InvalidInputError(f"image_max_side must be an integer >= 16, got {image_max_side!r}")
        self.model = model.strip()
        self.base_url = _resolve_base_url(base_url)
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        self._api_key = _resolve_api_key(api_key, api_key_env, self.base_url)
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.stream = bool(stream)
        self.system_prompt = system_prompt
        self.count_tokens = count_tokens
        self.send_images = bool(send_images)
        self.max_images = max_images
        self.image_max_side = image_max_side

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r}, stream={self.stream})"

    # ------------------------------------------------------------------ request

    def _headers(self) -> dict[str, str]:
        accept = "text/event-stream" if self.stream else "application/json"
        headers = {"Content-Type": "application/json", "Accept": accept}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _image_part(self, image: PromptImage) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": image.image.data_url(max_side=self.image_max_side)}}

    def messages(self, question: str, hits: Sequence[Hit], image: ImageRef | None = None) -> list[dict[str, Any]]:
        """The chat messages for ``question`` about the query ``image`` and ``hits``.

        The user content is a plain string when no image is sent, else a list of text and
        ``image_url`` parts (see the module docstring).
        """
        images = collect_images(hits, image, max_images=self.max_images) if self.send_images else []
        if not images and image is None:
            return build_messages(question, hits, self.system_prompt)
        parts = build_user_parts(question, hits, images, query_image_given=image is not None)
        if not images:  # a query image the endpoint is not shown: text only
            content: str | list[dict[str, Any]] = "".join(p for p in parts if isinstance(p, str))
        else:
            content = [
                {"type": "text", "text": p} if isinstance(p, str) else self._image_part(p) for p in parts
            ]
        logger.debug("sending %d image(s) to %s", len(images), self.url)
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]

    def request_body(self, question: str, hits: Sequence[Hit], image: ImageRef | None = None) -> dict[str, Any]:
        """The JSON body sent to ``/chat/completions`` for ``question`` (about ``image``) and ``hits``."""
        return {
            "model": self.model,
            "messages": self.messages(question, hits, image),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            message = _error_message(response.read())
            raise GeneratorError(f"{self.url} returned HTTP {response.status_code}: {message}")

    def _post(self, body: dict[str, Any], on_token: StreamCallback | None) -> str:
        """Send ``body`` and return the completion text, translating transport failures."""
        try:
            with httpx.Client(timeout=self.timeout) as client:
                with client.stream("POST", self.url, json=body, headers=self._headers()) as response:
                    self._raise_for_status(response)
                    if self._is_event_stream(response):
                        return self._read_stream(response, on_token)
                    return self._read_completion(response, on_token)
        except httpx.TimeoutException as exc:
            raise GeneratorError(f"request to {self.url} timed out after {self.timeout:g} s ({exc})") from exc
        except httpx.ConnectError as exc:  # connection refused, DNS failure, TLS failure...
            raise GeneratorError(f"could not reach {self.url}: {exc or type(exc).__name__}") from exc
        except httpx.TransportError as exc:  # connection dropped mid-response, protocol errors...
            raise GeneratorError(f"request to {self.url} failed: {exc or type(exc).__name__}") from exc

    def _is_event_stream(self, response: httpx.Response) -> bool:
        """SSE when the server says so, or when streaming was asked for and the body is not declared JSON."""
        content_type = response.headers.get("content-type", "")
        return "event-stream" in content_type or (self.stream and "json" not in content_type)

    # ------------------------------------------------------------------ responses

    def _read_completion(self, response: httpx.Response, on_token: StreamCallback | None) -> str:
        """Text of a non-streamed completion: ``choices[0].message.content``."""
        try:
            data = json.loads(response.read())
        except ValueError as exc:
            raise GeneratorError(f"{self.url}: malformed response, not JSON ({exc})") from exc
        choice = _first_choice(data, self.url)
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise GeneratorError(f"{self.url}: malformed response, choices[0].message.content is not text")
        _log_finish(choice, self.url)
        if on_token is not None and content:
            on_token(content)
        return content

    def _read_stream(self, response: httpx.Response, on_token: StreamCallback | None) -> str:
        """Concatenated ``choices[0].delta.content`` of an SSE stream, each delta passed to ``on_token``."""
        pieces: list[str] = []
        for payload in _sse_data(response.iter_lines()):
            try:
                chunk = json.loads(payload)
            except ValueError as exc:
                raise GeneratorError(f"{self.url}: malformed stream event {payload[:200]!r}") from exc
            if isinstance(chunk, dict) and chunk.get("choices") == []:
                continue  # e.g. a final usage-only chunk
            choice = _first_choice(chunk, self.url)
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if content:
                if not isinstance(content, str):
                    raise GeneratorError(f"{self.url}: malformed stream event, delta.content is not text")
                pieces.append(content)
                if on_token is not None:
                    on_token(content)
            _log_finish(choice, self.url)
        return "".join(pieces)

    # ------------------------------------------------------------------ public

    def context_tokens(self, hits: Sequence[Hit]) -> int:
        """Tokens of the hit texts: ``count_tokens`` if given, else ``round(words * 4 / 3)``."""
        count = self.count_tokens or estimate_tokens
        return sum(int(count(hit.text)) for hit in hits)

    def generate(
        self, question: str, hits: Sequence[Hit], *, on_token: StreamCallback | None = None, image: ImageRef | None = None
    ) -> Answer:
        """Ask the model ``question`` (about the query ``image``) using ``hits``.

        ``question`` may be empty when ``image`` is given. The endpoint is not called when
        there are no hits.
        """
        question, hits, image, no_sources = start_generation(question, hits, image, on_token, self.name)
        if no_sources is not None:
            return no_sources
        logger.debug("asking %s (model %s) with %d hits", self.url, self.model, len(hits))
        text = self._post(self.request_body(question, hits, image), on_token)
        if not text.strip():
            logger.warning("%s returned an empty answer", self.url)
        return Answer(
            text=text,
            citations=parse_citations(text, hits),
            hits=hits,
            context_tokens=self.context_tokens(hits),
            generator=self.name,
        )


__all__ = ["DEFAULT_BASE_URL", "OpenAIGenerator", "is_loopback"]
