"""Generator running a local Hugging Face ``transformers`` model: a text LLM or a vision-language model.

The model folder is loaded from disk only (``local_files_only=True``, no downloads) and only
from ``*.safetensors`` weights (pickled ``.bin`` checkpoints are refused, never unpickled).

* **Image-text-to-text models** (the config is one ``AutoModelForImageTextToText`` handles and
  the folder has a processor with an image processor, e.g. LLaVA, Qwen2-VL, SmolVLM): the user
  turn holds the query image after ``"Query image:"``, then the images of up to ``max_images``
  retrieved image items after ``"Source [n] image:"``, then the sources block and the question
  (:func:`heterag.generators.prompting.build_user_parts`), rendered with the processor's chat template
  (fallback: a plain prompt with the model's image token).
* **Causal LMs** (``AutoModelForCausalLM`` + ``AutoTokenizer``): the text prompt of
  :func:`heterag.generators.prompting.build_messages`, rendered with the tokenizer's chat template when
  it has one, else as a plain prompt (:func:`heterag.generators.prompting.build_plain_prompt`). A query
  image cannot be shown to such a model; the prompt says so.

Special tokens that appear in the question or the retrieved text (``</s>``, ``<image>``,
``<|im_end|>``...) are defused with a word joiner so untrusted text cannot end a turn or
add an image placeholder. Generated text streams to ``on_token`` as it is produced (whole
words, never a broken character); ``Answer.text`` is exactly the concatenation of the pieces.
Greedy decoding at ``temperature == 0``; above it tokens are sampled, and ``seed`` makes the
sequence of answers of one generator reproducible.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from heterag.core.errors import GeneratorError, InvalidInputError
from heterag.core.images import ImageRef
from heterag.core.results import Answer, Hit
from heterag.generators.base import StreamCallback
from heterag.generators.prompting import (
    DEFAULT_SYSTEM_PROMPT,
    PromptImage,
    build_plain_prompt,
    build_user_message,
    build_user_parts,
    collect_images,
    parse_citations,
    start_generation,
)

logger = logging.getLogger(__name__)

#: Inserted after the first character of a special token found in untrusted text.
_WORD_JOINER = "\u2060"
#: The whitespace before the last word and everything after it: held back while streaming.
_TAIL = re.compile(r"\s*\S*$")


def _check_model_folder(model_path: str | Path) -> Path:
    """The model folder, or :class:`GeneratorError` saying why it cannot be one."""
    if not isinstance(model_path, str | Path) or not str(model_path).strip():
        raise InvalidInputError(f"model_path must be the path of a local model folder, got {model_path!r}")
    path = Path(model_path).expanduser()
    if not path.exists():
        raise GeneratorError(f"{path}: model folder does not exist (models are never downloaded; give a local folder)")
    if not path.is_dir():
        raise GeneratorError(f"{path}: not a folder; give the folder of a Hugging Face model (with config.json)")
    if not (path / "config.json").is_file():
        raise GeneratorError(f"{path}: not a Hugging Face model folder (no config.json)")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        why = f" (found {', '.join(pickled[:3])}: pickled weights are never loaded)" if pickled else ""
        raise GeneratorError(f"{path}: no *.safetensors weights in the model folder{why}")
    return path


def check_model_folder(model_path: str | Path) -> Path:
    """Check ``model_path`` as :class:`TransformersGenerator` will, reading no weights: the model folder, or
    :class:`GeneratorError` (one line) saying why it cannot be one. Commands call it before opening a collection."""
    return _check_model_folder(model_path)


def _resolve_dtype(dtype: Any) -> Any:
    """``None``, ``"auto"`` or a :class:`torch.dtype` (from a dtype or its name, e.g. ``"bfloat16"``)."""
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None) if isinstance(dtype, str) else None
    if not isinstance(resolved, torch.dtype):
        raise InvalidInputError(f"dtype must be a torch dtype such as 'float32' or 'bfloat16', or 'auto', got {dtype!r}")
    return resolved


def _resolve_device(device: Any) -> Any:
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GeneratorError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return resolved


def _special_tokens(tokenizer: Any, extra: Sequence[str] = ()) -> list[str]:
    """The special and added token strings of ``tokenizer`` that untrusted text must not spell out."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens.update(str(getattr(tok, "content", tok)) for tok in added.values())
    tokens.update(extra)
    return sorted((t for t in tokens if len(t) > 1 and not t.isspace()), key=len, reverse=True)


def _defuser(tokens: Sequence[str]) -> Callable[[str], str]:
    """A function that breaks every occurrence of ``tokens`` in a text with a word joiner."""
    if not tokens:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(t) for t in tokens))
    return lambda text: pattern.sub(lambda m: m.group(0)[0] + _WORD_JOINER + m.group(0)[1:], text)


class _PieceStreamer:
    """A ``generate()`` streamer that decodes the new tokens and passes stable text to a callback.

    The first ``put`` is the prompt and is skipped. Text is decoded from all new tokens each
    time; everything up to the whitespace before the last word is passed on (the last word
    may still change, e.g. a multi-byte character split over tokens); :meth:`finish` passes
    the rest. ``text`` is the concatenation of all pieces.
    """

    def __init__(self, tokenizer: Any, callback: StreamCallback | None) -> None:
        self.tokenizer = tokenizer
        self.callback = callback
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.emitted = ""
        self.callback_error: BaseException | None = None
        self._prompt_skipped = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def _emit(self, piece: str) -> None:
        if not piece:
            return
        self.pieces.append(piece)
        self.emitted += piece
        if self.callback is not None:
            try:
                self.callback(piece)
            except BaseException as exc:
                self.callback_error = exc
                raise

    def put(self, value: Any) -> None:
        if not self._prompt_skipped:
            self._prompt_skipped = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self._decode()
        stable = text[: _TAIL.search(text).start()]
        if stable.startswith(self.emitted) and not stable.endswith("\ufffd"):
            self._emit(stable[len(self.emitted) :])

    def end(self) -> None:
        """Called by ``generate()``; the remainder is passed on by :meth:`finish` (outside generate)."""

    def finish(self) -> str:
        """Pass on the rest of the text (without trailing whitespace) and return the whole answer text."""
        final = self._decode().rstrip()
        if not final.startswith(self.emitted):
            logger.debug("decoded text changed after streaming: %r vs %r", final[:80], self.emitted[:80])
        self._emit(final[len(self.emitted) :])
        return self.text


class TransformersGenerator:
    """Answers with a local Hugging Face model: a causal LM, or an image-text-to-text model that
    also sees the query image and the retrieved images.

    ``model_path`` is a local model folder (``config.json``, ``*.safetensors``, tokenizer or
    processor files); nothing is downloaded. The model is loaded at construction, so a bad
    folder fails early with a :class:`~heterag.core.errors.GeneratorError`.
    ``temperature`` 0 decodes greedily; above it tokens are sampled and ``seed`` makes the
    sequence of answers reproducible. ``device`` is a torch device (``"cpu"``, ``"cuda"``...),
    ``dtype`` a torch dtype or its name (``None``: the library's default; ``"auto"``: the
    checkpoint's). ``max_images`` retrieved images are shown to a vision model (the query
    image always), each downscaled to at most ``image_max_side`` pixels on its longer side.
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
        device: str = "cpu",
        dtype: Any = None,
        trust_remote_code: bool = False,
        max_images: int = 4,
        image_max_side: int = 1024,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ) -> None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
                or temperature < 0:
            raise InvalidInputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0:
            raise InvalidInputError(f"max_images must be an integer >= 0, got {max_images!r}")
        if isinstance(image_max_side, bool) or not isinstance(image_max_side, int) or image_max_side < 16:
            raise InvalidInputError(f"image_max_side must be an integer >= 16, got {image_max_side!r}")
        self.path = _check_model_folder(model_path)
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.seed = seed
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype)
        self.trust_remote_code = bool(trust_remote_code)
        self.max_images = max_images
        self.image_max_side = image_max_side
        self.system_prompt = system_prompt
        self._seeds = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.processor: Any = None
        self._load()
        self._defuse = _defuser(_special_tokens(self.tokenizer, [self.image_token] if self.image_token else []))

    def __repr__(self) -> str:
        kind = "vision" if self.is_vision else "text"
        return f"TransformersGenerator({str(self.path)!r}, {kind}, device={str(self.device)!r})"

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        try:
            import transformers
            from transformers import AutoConfig
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise GeneratorError(f"the transformers generator needs the transformers package ({exc})") from exc
        transformers.utils.logging.disable_progress_bar()
        common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": self.trust_remote_code}
        try:
            self.config = AutoConfig.from_pretrained(self.path, **common)
        except Exception as exc:  # any failure to read the config is a load error
            raise GeneratorError(f"{self.path}: cannot read the model config: {exc}") from exc
        self.is_vision = self._is_vision_model(common)
        model_kwargs: dict[str, Any] = {**common, "use_safetensors": True}
        if self.dtype is not None:
            model_kwargs["dtype"] = self.dtype
        try:
            if self.is_vision:
                from transformers import AutoModelForImageTextToText

                model = AutoModelForImageTextToText.from_pretrained(self.path, **model_kwargs)
                self.tokenizer = self.processor.tokenizer
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(self.path, **common)
                model = AutoModelForCausalLM.from_pretrained(self.path, **model_kwargs)
            self.model = model.to(self.device).eval()
        except Exception as exc:  # out of memory, missing tokenizer, unsupported architecture...
            kind = "image-text-to-text" if self.is_vision else "causal language"
            raise GeneratorError(f"{self.path}: cannot load it as a {kind} model: {exc}") from exc
        self.image_token = self._find_image_token() if self.is_vision else None
        logger.info("loaded %s model %s on %s", "vision" if self.is_vision else "text", self.path, self.device)

    def _is_vision_model(self, common: dict[str, Any]) -> bool:
        """Whether the folder holds an image-text-to-text model with an image processor (sets ``processor``)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        auto_map = getattr(self.config, "auto_map", None) or {}
        vision_config = self.config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or any(
            key in auto_map for key in ("AutoModelForImageTextToText", "AutoModelForVision2Seq")
        )
        if not vision_config:
            return False
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(self.path, **common)
        except Exception as exc:  # reported below
            problem = f"its processor cannot be loaded ({exc})"
        else:
            if getattr(processor, "image_processor", None) is not None and getattr(processor, "tokenizer", None) is not None:
                self.processor = processor
                return True
            problem = "it has no image processor and tokenizer (preprocessor_config.json, tokenizer files)"
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if self.config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            logger.warning("%s: image-text-to-text config, but %s; loading it as a text-only model", self.path, problem)
            return False
        raise GeneratorError(f"{self.path}: an image-text-to-text model ({self.config.model_type}), but {problem}")

    def _find_image_token(self) -> str | None:
        for owner in (self.processor, self.tokenizer):
            token = getattr(owner, "image_token", None)
            if isinstance(token, str) and token:
                return token
        return None

    @property
    def context_size(self) -> int | None:
        """The model's maximum sequence length, when its config states one."""
        config = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        for key in ("max_position_embeddings", "n_positions", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # ------------------------------------------------------------------ prompts

    def _safe_hits(self, hits: Sequence[Hit]) -> list[Hit]:
        d = self._defuse
        return [replace(h, text=d(h.text), title=d(h.title), heading=tuple(d(x) for x in h.heading)) for h in hits]

    def _prepared_image(self, image: PromptImage) -> Any:
        pil = image.image.to_pil()
        if max(pil.size) > self.image_max_side:
            from PIL import Image

            pil.thumbnail((self.image_max_side, self.image_max_side), Image.Resampling.LANCZOS)
        return pil

    def _chat(self, owner: Any, messages: list[dict[str, Any]], user_parts: list[Any] | None = None) -> str:
        """Render ``messages`` with ``owner``'s chat template; a template without a system role gets
        the system prompt prepended to the user turn instead."""
        from jinja2 import TemplateError

        try:
            return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as exc:
            logger.debug("%s: chat template refused the system message (%s); merging it into the user turn", self.path, exc)
        user = messages[-1]
        if isinstance(user["content"], str):
            merged = {"role": "user", "content": f"{self.system_prompt}\n\n{user['content']}"}
        else:
            merged = {"role": "user", "content": [{"type": "text", "text": self.system_prompt + "\n\n"}, *user["content"]]}
        try:
            return owner.apply_chat_template([merged], add_generation_prompt=True, tokenize=False)
        except TemplateError as exc:
            raise GeneratorError(f"{self.path}: the model's chat template failed: {exc}") from exc

    def _starts_with_bos(self, prompt: str) -> bool:
        bos = getattr(self.tokenizer, "bos_token", None)
        return bool(bos) and prompt.startswith(bos)

    def _text_inputs(self, question: str, hits: Sequence[Hit], image: ImageRef | None) -> Any:
        user = build_user_message(question, hits, query_image=False if image is not None else None)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
            prompt = self._chat(self.tokenizer, messages)
            return self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not self._starts_with_bos(prompt))
        return self.tokenizer(build_plain_prompt(self.system_prompt, user), return_tensors="pt")

    def _vision_inputs(self, question: str, hits: Sequence[Hit], image: ImageRef | None) -> tuple[Any, int]:
        images = collect_images(hits, image, max_images=self.max_images)
        parts = build_user_parts(question, hits, images, query_image_given=image is not None)
        pil_images = [self._prepared_image(p) for p in parts if isinstance(p, PromptImage)]
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in parts]
            messages = [
                {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
                {"role": "user", "content": content},
            ]
            prompt = self._chat(self.processor, messages)
            add_special = not self._starts_with_bos(prompt)
        else:
            token = self.image_token or "<image>"
            user = "".join(f"{p}\n" if isinstance(p, str) else f"{token}\n" for p in parts)
            prompt = build_plain_prompt(self.system_prompt, user)
            add_special = True
        try:
            inputs = self.processor(
                text=prompt, images=pil_images or None, return_tensors="pt", add_special_tokens=add_special
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise GeneratorError(f"{self.path}: the processor could not prepare the prompt and images: {exc}") from exc
        return inputs, len(pil_images)

    def model_inputs(self, question: str, hits: Sequence[Hit], image: ImageRef | None = None) -> Any:
        """The tokenised prompt (and ``pixel_values`` for a vision model) for ``question``, ``hits``, ``image``."""
        question = self._defuse(question)
        hits = self._safe_hits(hits)
        if self.is_vision:
            inputs, n_images = self._vision_inputs(question, hits, image)
            logger.debug("%s: prompt with %d image(s)", self.path, n_images)
        else:
            if image is not None:
                logger.info("%s is a text-only model: the query image is not shown to it", self.path)
            inputs = self._text_inputs(question, hits, image)
        return inputs

    # ------------------------------------------------------------------ generation

    def _generation_kwargs(self, prompt_tokens: int) -> dict[str, Any]:
        max_new = self.max_new_tokens
        context = self.context_size
        if context is not None:
            if prompt_tokens >= context:
                raise GeneratorError(
                    f"{self.path}: the prompt has {prompt_tokens} tokens, more than the model's context of {context} "
                    f"tokens; retrieve fewer or shorter chunks{' or send fewer images (max_images)' if self.is_vision else ''}"
                )
            max_new = min(max_new, context - prompt_tokens)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": self.temperature > 0}
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
        else:  # greedy: drop sampling settings a checkpoint's generation_config may carry (avoids warnings)
            kwargs.update(temperature=None, top_p=None, top_k=None)
        generation_config = getattr(self.model, "generation_config", None)
        if getattr(generation_config, "pad_token_id", None) is None:
            pad = getattr(self.tokenizer, "pad_token_id", None)
            if pad is None:
                eos = getattr(generation_config, "eos_token_id", None)
                pad = eos[0] if isinstance(eos, list) and eos else eos
            if pad is not None:
                kwargs["pad_token_id"] = pad
        return kwargs

    def _run(self, inputs: Any, on_token: StreamCallback | None, extra: dict[str, Any] | None = None) -> str:
        """Generate from model ``inputs`` (``extra``: further ``generate()`` keywords, e.g. a prefix cache)."""
        import torch

        inputs = inputs.to(self.device)
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.is_floating_point():  # processors give float32; the model may be bf16
            inputs["pixel_values"] = pixels.to(self.model.dtype)
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        kwargs = self._generation_kwargs(prompt_tokens)
        streamer = _PieceStreamer(self.tokenizer, on_token)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with self._lock:
            seed = int(self._seeds.integers(2**63 - 1))
            try:
                with torch.random.fork_rng(devices=devices), torch.inference_mode():
                    torch.manual_seed(seed)
                    self.model.generate(**inputs, **kwargs, **(extra or {}), streamer=streamer)
            except Exception as exc:
                if exc is streamer.callback_error:
                    raise
                raise GeneratorError(f"{self.path}: generation failed: {exc}") from exc
            text = streamer.finish()
        if not text.strip():
            raise GeneratorError(
                f"{self.path}: the model generated no text ({len(streamer.ids)} new tokens, all special or whitespace)"
            )
        logger.debug("%s: %d prompt tokens, %d new tokens", self.path, prompt_tokens, len(streamer.ids))
        return text

    def context_tokens(self, hits: Sequence[Hit]) -> int:
        """Tokens of the hit texts, by the model's tokenizer."""
        return sum(len(self.tokenizer.encode(hit.text, add_special_tokens=False)) for hit in hits)

    def generate(
        self, question: str, hits: Sequence[Hit], *, on_token: StreamCallback | None = None, image: ImageRef | None = None
    ) -> Answer:
        """Answer ``question`` (about the query ``image``) from ``hits`` with the local model.

        ``question`` may be empty when ``image`` is given. Without hits the model is not run.
        Raises :class:`GeneratorError` when generation fails or produces no text.
        """
        question, hits, image, no_sources = start_generation(question, hits, image, on_token, self.name)
        if no_sources is not None:
            return no_sources
        text = self._run(self.model_inputs(question, hits, image), on_token)
        return Answer(
            text=text,
            citations=parse_citations(text, hits),
            hits=hits,
            context_tokens=self.context_tokens(hits),
            generator=self.name,
        )


__all__ = ["TransformersGenerator"]
