"""Settings of the web app: defaults, a YAML file (``--config``) and the command line, in that order."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterag.core.errors import InvalidInputError

#: The collection setting that means "the built-in demos": text questions go to ``demo``,
#: questions with an image to ``demo-scenes``.
DEMOS = "(demos)"
GENERATOR_NAMES = ("extractive", "local", "openai", "transformers")
#: How a question's text is searched (heterag.retrieval.hybrid.RETRIEVAL_MODES); "" is each collection's
#: default: hybrid where it has a keyword index, else dense (see heterag.retrieval.hybrid.DEFAULT_RETRIEVAL).
RETRIEVAL_NAMES = ("dense", "keyword", "hybrid")


@dataclass(frozen=True)
class ChatSettings:
    """What one question is answered with (chosen per browser session in the UI)."""

    collection: str = DEMOS
    top_k: int = 5
    fusion: str = "weighted"
    generator: str = "extractive"
    model: str = ""  # openai: model name
    base_url: str = ""  # openai: endpoint (default $OPENAI_BASE_URL)
    model_path: str = ""  # transformers: local model folder; local: folder or GGUF file (empty: packaged SmolLM2)
    temperature: float = 0.0
    retrieval: str = ""  # dense, keyword, hybrid; "" = the collection's default

    def check(self) -> ChatSettings:
        """These settings, or :class:`InvalidInputError` naming the first bad one."""
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or not 1 <= self.top_k <= 50:
            raise InvalidInputError(f"top-k must be an integer from 1 to 50, got {self.top_k!r}")
        if self.generator not in GENERATOR_NAMES:
            raise InvalidInputError(f"unknown generator {self.generator!r}; choose one of {', '.join(GENERATOR_NAMES)}")
        if self.generator == "openai" and not self.model.strip():
            raise InvalidInputError("the openai generator needs a model name")
        if self.generator == "transformers" and not self.model_path.strip():
            raise InvalidInputError("the transformers generator needs a local model folder")
        if self.retrieval not in ("", *RETRIEVAL_NAMES):
            raise InvalidInputError(f"unknown retrieval {self.retrieval!r}; choose one of {', '.join(RETRIEVAL_NAMES)}")
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise InvalidInputError(f"temperature must be between 0 and 2, got {self.temperature!r}")
        from heterag.retrieval.fusion import Fusion

        Fusion.parse(self.fusion or None)  # e.g. "fusion method must be one of weighted, rrf, got 'wieghted'"
        return self

    def check_model_path(self) -> ChatSettings:
        """The model path checked as the generator will read it, without loading anything: a ``transformers``
        model folder, a ``local`` model folder or GGUF file (empty: the packaged model, which must be installed),
        and for the other generators a path given all the same (the chat's settings can switch to a generator
        that uses it). Raises a one-line :class:`~heterag.core.errors.HeteragError`."""
        from heterag.generators.hf import check_model_folder
        from heterag.generators.local.model import check_local_model

        path = self.model_path.strip()
        if self.generator == "transformers":
            check_model_folder(path)
        elif self.generator == "local" or path:
            check_local_model(path or None)
        return self


@dataclass(frozen=True)
class AppConfig:
    """How the app is served, plus the chat's initial settings."""

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    chat: ChatSettings = ChatSettings()
    max_file_mb: float = 50.0
    max_request_mb: float = 200.0
    #: chat questions answered at the same time (Gradio's ``concurrency_limit`` of the chat events); the rest wait
    #: in Gradio's queue. Questions in flight share the encoder's forward passes (heterag.encoding.batching), so
    #: this is set above the number of users one machine serves: 20 back-to-back users on 2 cores all in flight.
    concurrency: int = 32
    #: questions and other events that may wait in Gradio's queue at once (its ``max_size``); one more is refused
    #: at once with "queue is full" instead of waiting without end
    queue_size: int = 256
    stream_interval: float = 0.05  # seconds: at most one streamed update per interval (0: every word)
    #: soft-prompt adapter for the text encoder (``heterag tune --out ADAPTER``) used for the collections the app
    #: opens and creates; "" = each collection's own (the built-in demos always use their own)
    adapter: str = ""

    def with_chat(self, **changes: Any) -> AppConfig:
        return dataclasses.replace(self, chat=dataclasses.replace(self.chat, **changes))


_SERVER_KEYS = {f.name for f in dataclasses.fields(AppConfig)} - {"chat"}
_CHAT_KEYS = {f.name for f in dataclasses.fields(ChatSettings)}


_TYPES: dict[str, tuple[type, ...]] = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _check_types(path: Path, cls: type, values: dict[str, Any]) -> None:
    """One-line error for a setting of the wrong type (``share: "no"`` is a string, not false)."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key, value in values.items():
        allowed = _TYPES.get(kinds.get(key, ""))
        if allowed is None:
            continue
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            want = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}[kinds[key]]
            raise InvalidInputError(f"config {path}: {key} must be {want}, got {value!r}")


def load_config_file(path: str | Path) -> AppConfig:
    """Read a YAML settings file: server keys (host, port, share, max_file_mb, ...) and chat keys
    (collection, top_k, fusion, generator, model, base_url, model_path, temperature, retrieval), flat or under ``chat:``."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise InvalidInputError(f"cannot read config {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"config {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"config {p} must be a mapping of settings")
    chat = data.pop("chat", None) or {}
    if not isinstance(chat, dict):
        raise InvalidInputError(f"config {p}: chat must be a mapping of chat settings")
    chat = dict(chat)
    for key in list(data):
        if key in _CHAT_KEYS:
            chat[key] = data.pop(key)
    unknown = sorted(set(data) - _SERVER_KEYS) + sorted(set(chat) - _CHAT_KEYS)
    if not unknown:
        _check_types(p, AppConfig, data)
        _check_types(p, ChatSettings, chat)
    if unknown:
        raise InvalidInputError(f"config {p}: unknown setting {unknown[0]!r}; known: "
                                f"{', '.join(sorted(_SERVER_KEYS | _CHAT_KEYS))}")
    try:
        cfg = AppConfig(**data, chat=ChatSettings(**chat))
    except TypeError as exc:
        raise InvalidInputError(f"config {p}: {exc}") from None
    cfg.chat.check()
    return cfg


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="app.py", description="heterag web app: chat with your knowledge base, with sources.")
    ap.add_argument("--config", help="YAML settings file (command-line options win)")
    ap.add_argument("--collection", help=f"collection to chat with (default: the built-in demos, {DEMOS})")
    ap.add_argument("--host", help="interface to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, help="port (default 7860)")
    ap.add_argument("--share", action="store_true", default=None, help="also open a public share link (off by default)")
    ap.add_argument("-k", "--top-k", type=int, help="sources per answer (default 5)")
    ap.add_argument("--fusion", help="weighted (default) or rrf, optionally with weights, e.g. weighted:text=1,image=2")
    ap.add_argument("--generator", choices=GENERATOR_NAMES, help="answer generator (default extractive, offline)")
    ap.add_argument("--model", help="openai: model name")
    ap.add_argument("--base-url", help="openai: endpoint base URL")
    ap.add_argument("--model-path", help="transformers: local model folder; local: model folder or GGUF file "
                    "(default: the packaged SmolLM2)")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--retrieval", help="how questions are searched: dense (vectors), keyword (BM25) or hybrid (both, "
                    "fused); default: hybrid where the collection has a keyword index, else dense")
    ap.add_argument("--max-file-mb", type=float, help="largest uploaded file (default 50)")
    ap.add_argument("--max-request-mb", type=float, help="largest upload request, all files together (default 200)")
    ap.add_argument("--concurrency", type=int, help="questions answered at the same time; the rest wait in the queue "
                    "(default 32)")
    ap.add_argument("--queue-size", type=int, help="most requests waiting in the queue; more are refused with "
                    "'queue is full' (default 256)")
    ap.add_argument("--adapter", help="text-encoder adapter (heterag tune --out ADAPTER) for your collections; a collection "
                    "embedded with another is refused, naming heterag reembed (default: each collection's own)")
    ap.add_argument("--stream-interval", type=float, help="seconds between streamed updates of an answer; faster "
                    "words are merged (default 0.05; 0: every word)")
    return ap


def parse_args(argv: Sequence[str] | None = None) -> AppConfig:
    """The app's configuration from ``argv`` (and the ``--config`` file it names)."""
    args = build_parser().parse_args(argv)
    cfg = load_config_file(args.config) if args.config else AppConfig()
    server = {k: getattr(args, k) for k in ("host", "port", "share", "max_file_mb", "max_request_mb", "concurrency",
                                            "queue_size", "stream_interval", "adapter") if getattr(args, k) is not None}
    chat = {k: v for k, v in {"collection": args.collection, "top_k": args.top_k, "fusion": args.fusion,
                              "generator": args.generator, "model": args.model, "base_url": args.base_url,
                              "model_path": args.model_path, "temperature": args.temperature,
                              "retrieval": args.retrieval}.items() if v is not None}
    cfg = dataclasses.replace(cfg, **server).with_chat(**chat)
    if not 0 < cfg.port < 65536:
        raise InvalidInputError(f"--port must be from 1 to 65535, got {cfg.port}")
    if cfg.max_file_mb <= 0 or cfg.max_request_mb <= 0 or cfg.concurrency < 1 or cfg.queue_size < 1:
        raise InvalidInputError("size limits, concurrency and queue size must be positive")
    if not 0 <= cfg.stream_interval <= 5:
        raise InvalidInputError(f"--stream-interval must be from 0 to 5 seconds, got {cfg.stream_interval:g}")
    cfg.chat.check().check_model_path()  # a bad --fusion or --model-path is one line at start, not at the first question
    if cfg.adapter.strip() and cfg.adapter.strip().lower() != "none":
        from heterag.encoding.adapters import load_adapter

        load_adapter(cfg.adapter.strip())  # a missing or corrupt adapter is one line before anything else loads
    return cfg


__all__ = ["DEMOS", "GENERATOR_NAMES", "RETRIEVAL_NAMES", "AppConfig", "ChatSettings", "build_parser", "load_config_file", "parse_args"]
