"""Soft-prompt adapters for the text encoder (adaptive prompt tuning).

The encoder stays frozen; ``P`` learnable vectors (the *soft prompt*, shape ``(P, hidden)``)
are inserted into its input token embeddings right after the first special token
(``[CLS] p_1 .. p_P tok_1 .. tok_n [SEP]``) and the attention mask is extended by ``P`` ones,
so every text token attends to the prompt (Lester et al., 2021, "The Power of Scale for
Parameter-Efficient Prompt Tuning", sec. 2; HeteRAG's adaptive prompt tuning of the
retriever applies it to retrieval views).

Position handling: the prompt takes absolute positions ``1..P`` and the text is shifted by
``P`` (the model adds its position embeddings to ``inputs_embeds`` as usual; token-type ids
are all 0). Texts are truncated to the *same* number of content tokens as without an
adapter (``max_seq_length`` less the special tokens) when the sequence, grown by ``P``, fits the
model's position limit (``max_position_embeddings``; MiniLM: 256 + P <= 512), else to the limit
less ``P``; late windows shrink by ``P`` only in that case. Pooling ignores the prompt: a sentence vector
is the model's own pooling (mean over ``[CLS]``, text and ``[SEP]``, or the ``[CLS]`` state)
over the original tokens only; late chunking pools each chunk's own tokens as without an
adapter, with the view-side prompt prepended to every late window.

Deep prompts (``depth`` > 1): besides the input prompt, layers ``1 .. depth-1`` of the
transformer each get their own ``(P, hidden)`` vectors, which replace the hidden states at the
prompt's positions as they enter that layer (deep prompt tuning: Jia et al., 2022, "Visual Prompt
Tuning", ECCV, sec. 3.2 "VPT-Deep"; Liu et al., 2022, "P-Tuning v2", ACL, sec. 3.2, who find
prompts at every layer close the gap to fine-tuning on models far smaller than the ones shallow
prompts need). The tensor is then ``(depth, P, hidden)``; the cost per token is that of a shallow
prompt of the same ``P`` (the positions are there anyway). Training starts from the shallow
prompt's own hidden states at each layer (on an empty text), so a deep prompt begins close to the
shallow one (its positions no longer see the text: cosine 0.97-0.98 to the shallow prompt's
sentence vectors for MiniLM).

Sides (``sides``): ``query`` (a prompt on questions only: stored vectors are unchanged),
``view`` (views only), ``separate`` (one prompt each) or ``shared`` (one prompt on both).
A ``full`` adapter instead holds all transformer weights fine-tuned on the query side
(``sides="query"``) or both (``"shared"``), for comparison.

On disk an adapter is ``NAME.safetensors`` (float32 tensors ``query_prompt`` / ``view_prompt``
/ ``prompt``, or ``full.*`` weights) plus ``NAME.json`` (format, kind, base model identity and
weight hash, P, sides, hidden size, training data hash, seed, metrics, and the content hash
of all of it). Loading checks everything and raises :class:`~heterag.core.errors.InvalidInputError`
with one line naming the file.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from heterag.core.errors import InvalidInputError

log = logging.getLogger(__name__)

ADAPTER_FORMAT = 1
SIDES = ("query", "view", "separate", "shared")
KINDS = ("prompt", "full")
#: Query-text hashes recorded per trained query (for refusing to evaluate on training queries).
QUERY_HASH_CHARS = 12


def query_hash(text: str) -> str:
    """Short content hash of a query text (whitespace-normalised), as recorded in adapters."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:QUERY_HASH_CHARS]


def adapter_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, json)`` paths of an adapter given its stem, ``.safetensors`` or ``.json`` path."""
    p = Path(path).expanduser()
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def base_weights_hash(transformer: Any) -> str:
    """sha256 (16 hex) over a transformer's parameter names, shapes and float32 bytes."""
    h = hashlib.sha256()
    for name, t in sorted(transformer.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Adapter:
    """A soft-prompt (or full fine-tuning) adapter: tensors plus the metadata that ties them to a base model.

    ``tensors``: ``"query_prompt"``/``"view_prompt"`` (each ``(P, hidden)``, float32) for
    ``sides="separate"``, ``"prompt"`` for ``shared``/``query``/``view`` ... see :meth:`prompt_for`;
    ``full`` adapters hold ``"full.<param name>"`` tensors. With ``depth`` > 1 (deep prompts) each
    prompt tensor is ``(depth, P, hidden)``: row 0 at the input, row ``l`` at the input of layer ``l``.
    """

    kind: str
    base_model: str
    base_hash: str
    prompt_tokens: int
    sides: str
    hidden: int
    tensors: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the path it was loaded from or saved to
    depth: int = 1  # layers with a prompt: 1 = the input only (shallow), up to the encoder's layer count (deep)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown adapter kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.sides not in SIDES:
            raise InvalidInputError(f"unknown adapter sides {self.sides!r}; choose one of {', '.join(SIDES)}")
        if self.kind == "full" and self.sides not in ("query", "shared"):
            raise InvalidInputError("a full fine-tuning adapter applies to the query side or both ('shared')")
        if self.kind == "prompt" and not (1 <= self.prompt_tokens <= 512):
            raise InvalidInputError(f"prompt tokens must be between 1 and 512, got {self.prompt_tokens}")
        if not (1 <= self.depth <= 128) or (self.kind == "full" and self.depth != 1):
            raise InvalidInputError(f"prompt depth must be between 1 and the encoder's layer count (1 for 'full'), got {self.depth}")

    # ---- sides ----------------------------------------------------------------------
    @property
    def applies_to_views(self) -> bool:
        return self.sides in ("view", "separate", "shared")

    @property
    def applies_to_queries(self) -> bool:
        return self.sides in ("query", "separate", "shared")

    def prompt_for(self, side: str) -> Any | None:
        """The ``(P, hidden)`` prompt tensor used on ``side`` ("query" or "view"), or None."""
        if self.kind != "prompt":
            return None
        if side == "query" and not self.applies_to_queries or side == "view" and not self.applies_to_views:
            return None
        if self.sides == "separate":
            return self.tensors[f"{side}_prompt"]
        return self.tensors["prompt"]

    # ---- identity ---------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        head = {"format": ADAPTER_FORMAT, "kind": self.kind, "base_model": self.base_model, "base_hash": self.base_hash,
                "prompt_tokens": self.prompt_tokens, "sides": self.sides, "hidden": self.hidden}
        if self.depth > 1:  # shallow adapters keep the header (and hash) they always had
            head["depth"] = self.depth
        return head

    @cached_property
    def hash(self) -> str:
        """Content hash (16 hex) of the header and every tensor: what collection fingerprints record."""
        h = hashlib.sha256(json.dumps(self.header(), sort_keys=True).encode())
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu").float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"adapter {self.hash}{where}"

    def nbytes(self) -> int:
        return int(sum(t.numel() * t.element_size() for t in self.tensors.values()))

    # ---- files --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``PATH.safetensors`` and ``PATH.json`` (each atomically); returns both paths."""
        from safetensors.torch import save_file

        weights, meta_path = adapter_paths(path)
        tmp_w = weights.with_name(weights.name + f".{os.getpid()}.tmp")
        tmp_j = meta_path.with_name(meta_path.name + f".{os.getpid()}.tmp")
        try:
            weights.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().to("cpu").float().contiguous() for k, v in self.tensors.items()}, str(tmp_w),
                      metadata={"heterag_adapter": self.hash})
            meta = {**self.header(), "hash": self.hash, "training": self.training}
            tmp_j.write_text(json.dumps(meta, indent=2, sort_keys=True))
            os.chmod(tmp_w, os.stat(tmp_j).st_mode & 0o777)  # safetensors writes 0600; readable like its JSON
            os.replace(tmp_w, weights)
            os.replace(tmp_j, meta_path)
        except OSError as exc:
            raise InvalidInputError(f"cannot write the adapter {weights}: {exc.strerror or exc}") from None
        finally:
            for tmp in (tmp_w, tmp_j):
                if tmp.is_file():
                    tmp.unlink()
        self.source = str(weights.with_suffix(""))
        return weights, meta_path


def load_adapter(path: str | os.PathLike[str]) -> Adapter:
    """Read and validate an adapter (``PATH.safetensors`` + ``PATH.json``).

    Raises :class:`InvalidInputError` (one line, naming the file) for a missing file, a JSON or
    safetensors file that is corrupt or truncated, an unknown format/kind/sides, a prompt tensor
    whose shape disagrees with the JSON (``P``, hidden size), or a content hash that does not match.
    """
    weights, meta_path = adapter_paths(path)
    for p in (weights, meta_path):
        if not p.is_file():
            raise InvalidInputError(f"adapter file {p} not found (an adapter is NAME.safetensors plus NAME.json)")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        header = {k: meta[k] for k in ("format", "kind", "base_model", "base_hash", "prompt_tokens", "sides", "hidden")}
        expected = str(meta["hash"])
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"adapter JSON {meta_path} is corrupt or incomplete: {type(exc).__name__}: {exc}") from None
    if header["format"] != ADAPTER_FORMAT:
        raise InvalidInputError(f"adapter {meta_path} has format {header['format']!r}; this heterag reads format {ADAPTER_FORMAT}")
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - older safetensors
        SafetensorError = Exception  # noqa: N806
        from safetensors.torch import load_file
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"adapter file {weights} is corrupt or truncated: {' '.join(str(exc).split())[:200]}") from None
    for name in ("prompt_tokens", "hidden", "depth"):  # whole numbers: 3.9 must not pass as 3
        value = meta.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"adapter JSON {meta_path} has a bad field: {name} must be a whole number, got {value!r}")
    if not isinstance(meta.get("training") or {}, dict):
        raise InvalidInputError(f"adapter JSON {meta_path} has a bad field: training must be an object, "
                                f"got {type(meta['training']).__name__}")
    P, hidden, sides, kind = int(header["prompt_tokens"]), int(header["hidden"]), str(header["sides"]), str(header["kind"])
    depth = int(meta.get("depth", 1))
    if kind == "prompt":
        names = ["query_prompt", "view_prompt"] if sides == "separate" else ["prompt"]
        if sorted(tensors) != sorted(names):
            raise InvalidInputError(f"adapter {weights} holds tensors {sorted(tensors)} but sides={sides!r} needs {names}")
        want = f"(P, {hidden})" if depth == 1 else f"({depth}, P, {hidden})"
        for n in names:
            shape = tuple(tensors[n].shape)
            if len(shape) != (2 if depth == 1 else 3) or shape[-1] != hidden or (depth > 1 and shape[0] != depth):
                raise InvalidInputError(f"adapter {weights}: tensor {n} has shape {shape}, not {want} (depth {depth} in the JSON)")
            if shape[-2] != P:
                raise InvalidInputError(f"adapter {meta_path} names P={P} but tensor {n} in {weights.name} holds {shape[-2]} "
                                        "prompt vectors")
    elif not tensors or not all(k.startswith("full.") for k in tensors):
        raise InvalidInputError(f"adapter {weights} of kind 'full' must hold 'full.*' weights")
    try:
        adapter = Adapter(kind=kind, base_model=str(header["base_model"]), base_hash=str(header["base_hash"]),
                          prompt_tokens=P, sides=sides, hidden=hidden, tensors=tensors,
                          training=dict(meta.get("training") or {}), source=str(weights.with_suffix("")), depth=depth)
    except InvalidInputError as exc:
        raise InvalidInputError(f"adapter {meta_path}: {exc}") from None
    if adapter.hash != expected:
        raise InvalidInputError(f"adapter {weights} does not match its JSON (content hash {adapter.hash} != {expected}): "
                                "the files are corrupt or from different runs")
    return adapter


def init_prompt(encoder: Any, prompt_tokens: int, seed: int = 0, depth: int = 1) -> Any:
    """A ``(P, hidden)`` float32 prompt initialised from the embeddings of ``P`` random vocabulary tokens
    (seeded; Lester et al., 2021, sec. 3.2 find vocabulary initialisation beats random uniform).

    With ``depth`` > 1, a ``(depth, P, hidden)`` deep prompt: row 0 as above, row ``l`` the hidden
    states that the shallow prompt itself has entering layer ``l`` (on an empty text), so the deep
    prompt starts out close to the shallow one. Raises :class:`InvalidInputError`
    when ``depth`` exceeds the encoder's layer count."""
    import torch

    emb = encoder._transformer.get_input_embeddings().weight.detach()
    gen = torch.Generator().manual_seed(int(seed))
    lo = min(1000, emb.shape[0] - 1)  # skip the special / unused tokens at the start of BERT vocabularies
    ids = torch.randint(lo, emb.shape[0], (prompt_tokens,), generator=gen)
    first = emb[ids].clone().float()
    if depth <= 1:
        return first
    model = encoder._transformer
    layers = encoder_layers(model)
    if depth > len(layers):
        raise InvalidInputError(f"prompt depth {depth} exceeds the encoder's {len(layers)} layers")
    _install_deep_hooks(model)
    captured: list[Any] = []
    token = _DEEP_PROMPT.set((None, len(encoder._special_template[0]), captured))
    try:
        with torch.no_grad():
            AdaptedEncoder(encoder).hidden_states([[]], "view", prompt=first)
    finally:
        _DEEP_PROMPT.reset(token)
    return torch.stack([first] + [captured[i][0, :prompt_tokens].float() for i in range(1, depth)])


def prompt_length(prompt: Any | None) -> int:
    """``P`` of a shallow ``(P, hidden)`` or deep ``(depth, P, hidden)`` prompt (0 for None)."""
    return 0 if prompt is None else int(prompt.shape[-2])


def encoder_layers(model: Any) -> list[Any]:
    """The transformer blocks of a BERT-like model, in order (the first ``ModuleList`` holding
    ``config.num_hidden_layers`` modules). Raises :class:`InvalidInputError` when there is none."""
    import torch

    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and n and len(module) == n:
            return list(module)
    raise InvalidInputError(f"deep prompts need a transformer with a list of {n} layers; {type(model).__name__} has none")


#: The deep prompt of the forward pass running in this thread: (prompt (depth, P, H) or None,
#: index of the prompt's first position, list to capture layer inputs into or None).
_DEEP_PROMPT: contextvars.ContextVar[tuple[Any, int, list | None] | None] = contextvars.ContextVar("heterag_deep_prompt",
                                                                                                  default=None)


def _deep_prompt_hook(index: int, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of layer ``index``: replaces (or captures) the prompt positions' hidden states.
    It acts only inside :meth:`AdaptedEncoder.hidden_states` of this thread (a context variable), so a
    model shared with plain encoders and other threads is unaffected."""
    state = _DEEP_PROMPT.get()
    if state is None or index == 0:
        return None
    prompt, start, capture = state
    hidden = args[0] if args else kwargs["hidden_states"]
    if capture is not None:
        capture.extend([None] * (index + 1 - len(capture)))
        capture[index] = hidden[:, start:].detach().clone()
        return None
    if index >= prompt.shape[0]:
        return None
    import torch

    P = int(prompt.shape[1])
    mine = prompt[index].to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], P, hidden.shape[-1])
    new = torch.cat([hidden[:, :start], mine, hidden[:, start + P :]], dim=1)
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _install_deep_hooks(model: Any) -> None:
    """Register :func:`_deep_prompt_hook` on every layer of ``model`` once."""
    if getattr(model, "_heterag_deep_hooks", False):
        return
    for i, layer in enumerate(encoder_layers(model)):
        layer.register_forward_pre_hook(partial(_deep_prompt_hook, i), with_kwargs=True)
    model._heterag_deep_hooks = True


class AdaptedEncoder:
    """A :class:`~heterag.encoding.text_encoder.TextEncoder` with an adapter: implements the view encoder protocol.

    ``encode`` / ``token_embeddings`` (documents, views, late windows) use the view side;
    ``encode_query`` / ``encode_queries`` use the query side. With ``adapter=None`` it runs the same
    code path with no prompt, so its vectors equal the base encoder's (to float rounding).
    ``adapter_hash`` goes into collection fingerprints ("none" without an adapter).

    Raises :class:`InvalidInputError` when the adapter was built for another base model (identity or
    weights hash) or hidden size, or when ``P`` does not fit the model's position limit.
    """

    def __init__(self, base: Any, adapter: Adapter | None = None):
        if isinstance(base, AdaptedEncoder):  # adapters do not stack: each is trained on the frozen base encoder
            held = base.adapter.describe() if base.adapter is not None else "an adapter wrapper"
            raise InvalidInputError(f"this encoder already has {held}; adapt its base encoder (.base) instead")
        self.base = base
        self.adapter = adapter
        self.identity = base.identity
        self.batch_size = base.batch_size
        if adapter is not None:
            check_adapter_fits(adapter, base)
        self._models: dict[str, Any] = {"query": base._transformer, "view": base._transformer}
        if adapter is not None and adapter.kind == "full":
            tuned = copy.deepcopy(base._transformer)
            state = {k[len("full."):]: v for k, v in adapter.tensors.items()}
            missing, unexpected = tuned.load_state_dict(state, strict=False)
            if unexpected or missing:
                raise InvalidInputError(f"{adapter.describe()} does not fit the base model's weights "
                                        f"(missing {len(missing)}, unexpected {len(unexpected)})")
            tuned.eval()
            self._models["query"] = tuned
            if adapter.sides == "shared":
                self._models["view"] = tuned

    # ---- protocol passthrough ---------------------------------------------------------------
    @property
    def adapter_hash(self) -> str:
        return self.adapter.hash if self.adapter is not None else "none"

    @property
    def dim(self) -> int:
        return int(self.base.dim)

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.base.max_seq_length

    @property
    def max_positions(self) -> int:
        return self.base.max_positions

    def tokenize(self, text: str):
        return self.base.tokenize(text)

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(text)

    def _p(self, side: str) -> int:
        return prompt_length(self.prompt(side))

    @property
    def max_window_tokens(self) -> int:
        return self.base.max_window_tokens - self._p("view")

    @property
    def default_window_tokens(self) -> int:
        return min(self.base.default_window_tokens, self.max_window_tokens)

    def prompt(self, side: str) -> Any | None:
        return self.adapter.prompt_for(side) if self.adapter is not None else None

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """View-side sentence vectors: float32 ``(n, dim)``, unit rows."""
        return self._encode(texts, "view", show_progress)

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Query-side sentence vectors: float32 ``(n, dim)``, unit rows."""
        return self._encode(texts, "query", show_progress)

    def encode_query(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("the question is empty")
        return self._encode([text], "query", False)[0]

    def _encode(self, texts: Sequence[str], side: str, show_progress: bool | None) -> np.ndarray:
        import torch

        from heterag.encoding.text_encoder import PROGRESS_THRESHOLD, few_threads

        texts = list(texts)
        if self.prompt(side) is None and self._models[side] is self.base._transformer:
            return self.base.encode(texts, show_progress=show_progress)  # this side is the plain encoder
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"cannot encode empty text (item {i})")
        ids = self.content_ids(texts, side)
        if show_progress is None:
            show_progress = len(texts) >= PROGRESS_THRESHOLD and not os.environ.get("HETERAG_NO_PROGRESS")
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        from tqdm.auto import tqdm

        with few_threads(len(texts)), torch.inference_mode():
            for start in tqdm(range(0, len(order), self.batch_size), desc="encode", disable=not show_progress, leave=False):
                idx = order[start : start + self.batch_size]
                vecs = self.sentence_vectors([ids[i] for i in idx], side)
                out[idx] = vecs.float().numpy()
        return out

    def content_ids(self, texts: Sequence[str], side: str = "view") -> list[list[int]]:
        """Token ids without special tokens, truncated as sentence-transformers truncates (to
        ``max_seq_length`` with the special tokens), or shorter when ``side``'s prompt would
        otherwise pass the position limit."""
        prefix, suffix = self.base._special_template
        limit = min(self.base.max_seq_length, self.base.max_positions - self._p(side)) - len(prefix) - len(suffix)
        tokens = getattr(self.base, "_tokens", None)  # the encoder's thread-safe tokenizer copy, when it has one
        kwargs = {"add_special_tokens": False, "truncation": True, "max_length": limit}
        enc = tokens(list(texts), **kwargs) if tokens is not None else self.tokenizer(list(texts), verbose=False, **kwargs)
        return [list(x) for x in enc["input_ids"]]

    @cached_property
    def _pooling(self) -> tuple[str, list[Any]]:
        """The sentence-transformers pooling mode ("mean" or "cls") and the modules after pooling."""
        modules = list(self.base.model)
        pool = modules[1] if len(modules) > 1 else None
        cfg = getattr(pool, "get_config_dict", lambda: {})()
        modes = {k[len("pooling_mode_"):].replace("_tokens", "").replace("_token", "") for k, v in cfg.items()
                 if k.startswith("pooling_mode_") and v is True}
        if isinstance(cfg.get("pooling_mode"), str):
            modes = {cfg["pooling_mode"]}
        if modes not in ({"mean"}, {"cls"}):
            raise InvalidInputError(f"adapters support mean or CLS pooling; {self.identity} pools with {cfg}")
        mode = modes.pop()
        rest = [m for m in modules[2:] if type(m).__name__ != "Normalize"]
        return mode, rest

    @cached_property
    def _takes_token_types(self) -> bool:
        return "token_type_ids" in inspect.signature(self.base._transformer.forward).parameters

    def hidden_states(self, windows: Sequence[Sequence[int]], side: str, prompt: Any | None = None, model: Any = None):
        """Run ``[prefix] prompt window [suffix]`` for each window (ids without special tokens).

        Returns ``(hidden, mask, offset)``: ``hidden`` float ``(B, L, H)`` (gradients flow to
        ``prompt`` when it requires grad), ``mask`` long ``(B, L)`` (1 on real tokens, 0 on padding and
        on the prompt), ``offset`` the index of each window's first token. ``prompt`` defaults to
        the adapter's prompt for ``side``.
        """
        import torch

        prefix, suffix = self.base._special_template
        if prompt is None:
            prompt = self.prompt(side)
        if model is None:
            model = self._models[side]
        P = prompt_length(prompt)
        deep = prompt is not None and prompt.dim() == 3
        seqs = [list(prefix) + list(w) + list(suffix) for w in windows]
        width = max(len(s) for s in seqs) + P
        if width > self.base.max_positions:
            raise InvalidInputError(f"{width - P} tokens plus a {P}-token prompt exceed the encoder limit {self.base.max_positions}")
        pad = self.tokenizer.pad_token_id or 0
        B = len(seqs)
        ids = torch.full((B, width - P), pad, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        emb = model.get_input_embeddings()(ids)
        n0 = len(prefix)
        if P:
            p = (prompt[0] if deep else prompt).to(emb.dtype).unsqueeze(0).expand(B, P, emb.shape[-1])
            emb = torch.cat([emb[:, :n0], p, emb[:, n0:]], dim=1)
        attn = torch.zeros((B, width), dtype=torch.long)
        for r, s in enumerate(seqs):
            attn[r, : len(s) + P] = 1
            mask[r, :n0] = 1
            mask[r, n0 + P : len(s) + P] = 1
        kwargs: dict[str, Any] = {"inputs_embeds": emb, "attention_mask": attn}
        if self._takes_token_types:
            kwargs["token_type_ids"] = torch.zeros((B, width), dtype=torch.long)
        if not deep:
            return model(**kwargs).last_hidden_state, mask, n0 + P
        _install_deep_hooks(model)
        token = _DEEP_PROMPT.set((prompt, n0, None))
        try:
            hidden = model(**kwargs).last_hidden_state
        finally:
            _DEEP_PROMPT.reset(token)
        return hidden, mask, n0 + P

    def sentence_vectors(self, windows: Sequence[Sequence[int]], side: str, prompt: Any | None = None, model: Any = None):
        """Unit-norm sentence vectors ``(B, dim)`` (torch) for content-id windows, pooled like the base model."""
        import torch

        hidden, mask, offset = self.hidden_states(windows, side, prompt, model)
        mode, rest = self._pooling
        if mode == "cls":
            vec = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        for module in rest:
            vec = module({"sentence_embedding": vec})["sentence_embedding"]
        return torch.nn.functional.normalize(vec, dim=-1)

    def span_vectors(self, windows: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], side: str = "view",
                     prompt: Any | None = None, model: Any = None):
        """Late-chunking vectors (torch ``(B, dim)``, unit rows): mean of window ``i``'s tokens ``spans[i]``."""
        import torch

        hidden, _, offset = self.hidden_states(windows, side, prompt, model)
        rows = [hidden[r, offset + a : offset + b].mean(0) for r, (a, b) in enumerate(spans)]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def token_embeddings(self, windows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Late chunking: contextual embeddings of each window's own tokens, view-side prompt prepended."""
        import torch

        P = self._p("view")
        if P == 0 and self._models["view"] is self.base._transformer:
            return self.base.token_embeddings(windows)
        limit = self.base.max_positions
        prefix, suffix = self.base._special_template
        for w in windows:
            if len(w) + len(prefix) + len(suffix) + P > limit:
                raise InvalidInputError(f"late-chunking window of {len(w)} tokens plus a {P}-token prompt exceeds the "
                                        f"encoder limit {limit}")
        results: dict[int, np.ndarray] = {}
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                hidden, _, offset = self.hidden_states([windows[i] for i in idx], "view")
                for r, i in enumerate(idx):
                    results[i] = hidden[r, offset : offset + len(windows[i])].float().numpy()
        return [results[i] for i in range(len(windows))]


_BASE_HASHES: dict[int, str] = {}


def encoder_weights_hash(base: Any) -> str:
    """Cached :func:`base_weights_hash` of a text encoder's transformer."""
    key = id(base._transformer)
    if key not in _BASE_HASHES:
        _BASE_HASHES[key] = base_weights_hash(base._transformer)
    return _BASE_HASHES[key]


def check_adapter_fits(adapter: Adapter, base: Any) -> None:
    """Raise :class:`InvalidInputError` unless ``adapter`` was built for ``base`` (identity, weights, size, P)."""
    where = adapter.source or adapter.hash
    mine = encoder_weights_hash(base)
    from heterag.encoding.text_encoder import legacy_identity

    # adapters made before local encoders were hashed name them local:NAME; their base_hash checks the weights
    if adapter.base_model not in (base.identity, legacy_identity(str(base.identity))) or adapter.base_hash != mine:
        raise InvalidInputError(f"adapter {where} was built for base model {adapter.base_model} (weights {adapter.base_hash}), "
                                f"not {base.identity} (weights {mine})")
    if adapter.hidden != int(base._transformer.config.hidden_size):
        raise InvalidInputError(f"adapter {where} has hidden size {adapter.hidden}, the encoder {base._transformer.config.hidden_size}")
    prefix, suffix = base._special_template
    if adapter.kind == "prompt" and adapter.prompt_tokens + len(prefix) + len(suffix) >= base.max_positions:
        raise InvalidInputError(f"adapter {where}: {adapter.prompt_tokens} prompt tokens leave no room for text "
                                f"(position limit {base.max_positions})")
    if adapter.depth > 1:
        layers = len(encoder_layers(base._transformer))
        if adapter.depth > layers:
            raise InvalidInputError(f"adapter {where} has deep prompts for {adapter.depth} layers; the encoder has {layers}")


def adapt(base: Any, adapter: Adapter | str | os.PathLike[str] | None) -> AdaptedEncoder | Any:
    """``base`` with ``adapter`` (an :class:`Adapter` or a path; None or "none" returns ``base`` unchanged)."""
    if adapter is None or (isinstance(adapter, str) and adapter.lower() == "none"):
        return base
    if not isinstance(adapter, Adapter):
        adapter = load_adapter(adapter)
    return AdaptedEncoder(base, adapter)
