"""The ``local`` generator, :class:`LocalGenerator`: the model of :mod:`~heterag.generators.local.model` run
by one of two engines (``transformers`` or ``llama_cpp``), prompts of :mod:`~heterag.generators.local.prompt`,
answers streamed through the citation checks of :mod:`~heterag.generators.local.citations`, and the
scoring mode of :mod:`~heterag.generators.local.scoring`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from heterag.core.errors import GeneratorError, InvalidInputError
from heterag.core.images import ImageRef
from heterag.core.results import Answer, Hit
from heterag.encoding.embedder import Embedder
from heterag.generators.base import StreamCallback
from heterag.generators.hf import TransformersGenerator
from heterag.generators.local.citations import CitationGuard, attribute, closed_code, without_code
from heterag.generators.local.model import (
    ENGINES,
    FAST_HINT,
    LoadedModel,
    gguf_source,
    llama_cpp_available,
    resolve_local_model,
    shared_model,
    torch_threads,
)
from heterag.generators.local.prompt import PromptFitting
from heterag.generators.local.scoring import OptionScoring
from heterag.generators.prompting import DEFAULT_SYSTEM_PROMPT, parse_citations, start_generation

logger = logging.getLogger(__name__)


class LocalGenerator(PromptFitting, OptionScoring, TransformersGenerator):
    """Answers with a small local LLM (default: the packaged SmolLM2-135M-Instruct), offline.

    ``model``: None or ``"smollm2"`` (packaged), a local model folder (safetensors) or a GGUF file.
    ``engine``: ``"transformers"`` (default) or ``"llama_cpp"`` (see :mod:`heterag.generators.local`).
    ``threads``: threads while generating (1 by default). ``reuse_prefix`` (transformers engine):
    compute the key-value cache of the prompt's fixed start (chat template, system prompt) once and
    reuse it for every request (the same tokens either way). ``max_new_tokens`` bounds the
    answer. ``context_window`` caps the tokens of prompt plus answer (default: the model's own
    context, e.g. 8,192 for SmolLM2; smaller is faster). ``embedder`` (normally the retrieval
    encoder) scores passages when the answer cites none. ``temperature``/``seed`` as for
    :class:`~heterag.generators.hf.TransformersGenerator`.

    Raises :class:`GeneratorError` for a model that is missing or cannot be loaded (never unpickled), or
    ``engine="llama_cpp"`` without llama-cpp-python or without a GGUF model; :class:`InvalidInputError`
    for an unknown engine.
    """

    name = "local"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        threads: int = 1,
        max_new_tokens: int = 96,
        context_window: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        embedder: Embedder | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        engine: str = "transformers",
        reuse_prefix: bool = True,
    ) -> None:
        if engine not in ENGINES:
            raise InvalidInputError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
        if context_window is not None and (isinstance(context_window, bool) or not isinstance(context_window, int)
                                           or context_window < 64):
            raise InvalidInputError(f"context_window must be an integer >= 64, got {context_window!r}")
        if context_window is not None and isinstance(max_new_tokens, int) and max_new_tokens >= context_window:
            raise InvalidInputError(f"context_window {context_window} leaves no room for the prompt: the answer alone "
                                    f"takes max_new_tokens={max_new_tokens} tokens; give a larger context_window")
        if embedder is not None and not isinstance(embedder, Embedder):
            raise InvalidInputError(f"embedder must provide encode() and count_tokens(), got {type(embedder).__name__}")
        self.threads = threads
        self.embedder = embedder
        self.reuse_prefix = bool(reuse_prefix)
        self._window = context_window
        self._shared: LoadedModel | None = None
        folder = resolve_local_model(model)  # raises for a missing model, makes the dequantised copy once
        gguf = gguf_source(model)
        if engine == "llama_cpp":
            if gguf is None:
                raise GeneratorError(f"the llama_cpp engine runs GGUF files; {model} is a model folder "
                                     "(use engine='transformers')")
            if not llama_cpp_available():
                raise GeneratorError(f"the llama_cpp engine needs llama-cpp-python: {FAST_HINT}")
        self.engine = engine
        self.gguf = gguf if engine == "llama_cpp" else None
        self._llama: Any = None
        super().__init__(folder, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         dtype="float32", max_images=0, system_prompt=system_prompt)

    def __repr__(self) -> str:
        return f"LocalGenerator({str(self.path)!r}, engine={self.engine!r}, threads={self.threads})"

    def _load(self) -> None:
        key = (str(self.path.resolve()), str(self.dtype), str(self.device)) if self.engine == "transformers" else \
            (str(self.gguf), "llama_cpp", str(self._window))
        shared = shared_model(key, self._load_engine)
        self.config, self.is_vision, self.tokenizer, self.model = (shared.config, shared.is_vision, shared.tokenizer,
                                                                   shared.model)
        self.image_token, self.processor, self._llama = shared.image_token, shared.processor, shared.llama
        self._lock = shared.lock  # one generation at a time per loaded model
        self._shared = shared
        if self.engine == "transformers" and self.reuse_prefix:
            with self._lock, self._threads():
                self._prefix()  # now rather than in the first request

    def _load_engine(self) -> LoadedModel:
        """Load the model with this generator's engine (once per process: see :func:`shared_model`)."""
        if self.engine == "transformers":
            super()._load()
        else:
            self._load_llama()
        return LoadedModel(self.config, self.is_vision, self.tokenizer, self.model, self.image_token, self.processor,
                       threading.RLock(), self._llama)

    def _load_llama(self) -> None:
        """The ``llama_cpp`` engine: the GGUF file in llama.cpp; config and tokenizer from the model folder."""
        try:
            from llama_cpp import Llama
            from transformers import AutoConfig, AutoTokenizer
        except ImportError as exc:
            raise GeneratorError(f"the llama_cpp engine needs llama-cpp-python ({exc}): {FAST_HINT}") from exc
        try:
            self.config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as exc:
            raise GeneratorError(f"{self.path}: cannot read the model's config and tokenizer: {exc}") from exc
        self.is_vision, self.model, self.image_token, self.processor = False, None, None, None
        try:
            self._llama = Llama(model_path=str(self.gguf), n_ctx=self.context_size or 0, n_threads=self.threads,
                                n_threads_batch=self.threads, verbose=False)
        except Exception as exc:  # unsupported architecture, truncated file...
            raise GeneratorError(f"{self.gguf}: llama.cpp cannot load it: {exc}") from exc
        logger.info("loaded %s with llama.cpp (context %d tokens)", self.gguf, self._llama.n_ctx())

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """Run the engine on ``threads`` threads inside the block."""
        if self.engine == "transformers":
            with torch_threads(self.threads):
                yield
            return
        import llama_cpp

        llama_cpp.llama_set_n_threads(self._llama.ctx, self.threads, self.threads)
        yield

    @property
    def context_size(self) -> int | None:
        own = super().context_size
        if self._window is None:
            return own
        return min(self._window, own) if own else self._window

    def _run(self, inputs: Any, on_token: StreamCallback | None) -> str:
        with self._lock, self._threads():
            if self.engine == "transformers":
                return super()._run(inputs, on_token, self._prefix_cache(inputs))
            return self._run_llama(inputs, on_token)

    def _run_llama(self, inputs: Any, on_token: StreamCallback | None) -> str:
        ids = [int(t) for t in inputs["input_ids"][0]]
        max_new = self._generation_kwargs(len(ids))["max_new_tokens"]  # raises when the prompt does not fit
        seed = int(self._seeds.integers(2**31 - 1))
        text, failed = "", []
        try:
            for chunk in self._llama.create_completion(prompt=ids, max_tokens=max_new, temperature=self.temperature,
                                                       top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=seed,
                                                       stream=True):
                piece = chunk["choices"][0]["text"]
                if piece:
                    text += piece
                    if on_token is not None:
                        try:
                            on_token(piece)
                        except Exception as exc:
                            failed.append(exc)
                            raise
        except Exception as exc:
            if failed and exc is failed[0]:
                raise
            raise GeneratorError(f"{self.gguf}: generation failed: {exc}") from exc
        if not text.strip():
            raise GeneratorError(f"{self.gguf}: the model generated no text (only special tokens or whitespace)")
        return text

    # ------------------------------------------------------------------ generation

    def generate(
        self, question: str, hits: Sequence[Hit], *, on_token: StreamCallback | None = None, image: ImageRef | None = None
    ) -> Answer:
        """Answer ``question`` from ``hits`` with the local model, citing passages as ``[n]``.

        Passages that do not fit the context are left out, and the answer starts by saying how many
        were used. Raises :class:`GeneratorError` when generation fails or produces no text.
        """
        question, hits, image, no_sources = start_generation(question, hits, image, on_token, self.name)
        if no_sources is not None:
            return no_sources
        with self._lock:  # the tokenizer and the model are shared by the process's local generators
            return self._generate(question, hits, image, on_token)

    def _generate(self, question: str, hits: tuple[Hit, ...], image: ImageRef | None,
                  on_token: StreamCallback | None) -> Answer:
        inputs, used = self.fit(question, hits, image)
        guard = CitationGuard(len(used), on_token)
        cut = bool(used) and used[0].text != hits[0].text
        if len(hits) == 1 and cut:  # no rest to speak of
            guard.emit(f"(Using 1 of 1 sources, cut short: it does not fit the model's context of {self.context_size} "
                       "tokens.) ")
        elif len(used) < len(hits) or cut:
            guard.emit(f"(Using {len(used)} of {len(hits)} sources{' (the first one cut)' if cut else ''}: the rest do "
                       f"not fit the model's context of {self.context_size} tokens.) ")
        self._run(inputs, guard)
        text = guard.finish()
        if not guard.passed.strip():  # nothing but markers citing passages that do not exist
            raise GeneratorError(f"{self.path}: the model generated no text besides citation markers (of sources that "
                                 f"do not exist, or cut off): {guard.raw.strip()[:60]!r}")
        if not parse_citations(without_code(text), used):
            numbers = attribute(guard.passed, used, self.embedder)  # the model's words, not our note
            if numbers:
                marks = "".join(f"[{n}]" for n in numbers)
                guard.emit(f"{closed_code(guard.passed)} {marks} (The model cited no source; {marks} attributed by "
                           "similarity to the answer.)")
                text = guard.text
        return Answer(text=text, citations=parse_citations(without_code(text), used), hits=hits,
                      context_tokens=self.context_tokens(used), generator=self.name)


__all__ = ["LocalGenerator"]
