"""The app's logic, independent of Gradio: open collections once, answer questions as a stream
of events, prepare the demos, ingest uploads with progress.

One :class:`ChatService` serves every browser session and API client of a process. Collections
are opened once and shared, so documents ingested (or deleted) in the knowledge tab are what the
chat retrieves next, without a restart. Reads are not blocked by an ingest: a question to a
collection that is being written to is answered from what is stored so far, with a notice; a
question to a collection that is still empty while it is being built gets a one-line message.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterag.collections.collection import list_collections, open_collection, sentence_vectors
from heterag.core.documents import Document, ItemError
from heterag.core.errors import CollectionNotFoundError, HeteragError, InvalidInputError
from heterag.core.images import ImageRef
from heterag.core.results import Answer
from heterag.encoding.vector_cache import VectorCache
from heterag.generators import ExtractiveGenerator, make_generator
from heterag.generators.base import Generator
from heterag.pipeline.pipeline import IngestReport, Pipeline
from heterag.retrieval.fusion import Fusion
from heterag.ui.config import DEMOS, AppConfig, ChatSettings
from heterag.ui.uploads import UploadLimits, numbered, relabel, stage_uploads

log = logging.getLogger(__name__)

#: :meth:`ChatService.prefill` encodes the sentences of collections up to this many chunks (more would hold the CPU
#: for hours; their sentences are kept on disk as questions read them)
PREFILL_MAX_CHUNKS = 20_000

_WORD = re.compile(r"\s*\S+\s*")
#: Characters that show nothing: zero-width spaces and joiners, word joiner, byte-order mark, soft hyphen.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


# ---- events of one answer -------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """A piece of answer text, in order."""

    text: str


@dataclass(frozen=True)
class Notice:
    """Something to tell the user beside the answer (e.g. the collection is being updated)."""

    text: str


@dataclass(frozen=True)
class Done:
    answer: Answer
    collection: str


@dataclass(frozen=True)
class Failed:
    """The question could not be answered; ``message`` is one line for the user."""

    message: str


ChatEvent = Token | Notice | Done | Failed


@dataclass
class Progress:
    """How far an ingest into a collection has got: items (``done``/``total``), and for uploads also the
    files and chunks written so far out of all (counted before the first is written)."""

    collection: str
    what: str
    done: int = 0
    total: int | None = None
    started: float = field(default_factory=time.monotonic)
    files_done: int = 0
    files_total: int | None = None
    chunks_done: int = 0
    chunks_total: int | None = None

    def line(self) -> str:
        if self.chunks_total is not None and self.files_total is not None:
            pct = 100 * self.chunks_done // self.chunks_total if self.chunks_total else 100 * self.done // max(self.total or 1, 1)
            return (f"{self.what}: {self.files_done}/{self.files_total} file{'' if self.files_total == 1 else 's'}, "
                    f"{self.chunks_done}/{self.chunks_total} chunks ({pct}%)")
        if self.total:
            return f"{self.what}: {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)"
        return f"{self.what}: {self.done} items read"


@dataclass(frozen=True)
class IngestUpdate:
    """A step of an upload ingest: a status line, and at the end the rejected items and the report.
    ``notes``: what happened to uploads that were not stored as named (kept beside a stored document of
    the same name under another name, or left out as a copy of a stored file); the status ends with them."""

    status: str
    finished: bool = False
    rejected: tuple[str, ...] = ()
    report: IngestReport | None = None
    notes: tuple[str, ...] = ()


#: Documents an upload ingest writes per batch (``Pipeline.ingest(batch_documents=...)``): progress counts
#: a batch's files and chunks as written once the next batch is asked for.
UPLOAD_BATCH = 16


class _UploadNames:
    """Where each uploaded file's documents go (decided once per file, before anything is written).

    An upload never replaces a stored document silently: a file whose name a stored document has, with other
    content, is kept beside it as ``name (2).ext`` (the next free number); a file whose bytes a stored
    document (or an earlier file of the upload) has already is left out, as the command line leaves out
    copies. Each is one note. Documents of a layout (a zip's captions, a ``.jsonl``) keep their ids."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.notes: list[str] = []
        self._names: dict[tuple[str, str], str | None] = {}  # (file name, its sha256) -> stored as, None: left out
        self._taken: set[str] = set()  # names given in this upload
        self._shas: dict[str, str] = {}  # sha256 -> the name of this upload's file with those bytes
        self._ids: dict[str, bool] = {}  # document id -> stored (as looked up)
        self._twins: dict[str, str | None] = {}  # sha256 -> the name of a stored document with it (as looked up)

    @staticmethod
    def key(doc: Document) -> tuple[str, str] | None:
        """``(file name, sha256)`` of a document that is an uploaded file or a part of one; None for a layout's."""
        label = str(doc.metadata.get("source") or "")
        if not label or not (doc.id == label or doc.id.startswith(label + "#")):
            return None
        return label, str(doc.metadata.get("file_sha256") or "")

    def look_up(self, keys: Iterable[tuple[str, str]]) -> None:
        """Look the names and hashes of ``keys`` up in the collection, a few hundred in one query."""
        keys = list(keys)
        labels = sorted({label for label, _ in keys if label} - set(self._ids))
        shas = sorted({sha for _, sha in keys if sha} - set(self._twins))
        self._ids.update(dict.fromkeys(labels, False))
        self._twins.update(dict.fromkeys(shas))
        for store in self._stores():
            for start in range(0, max(len(labels), len(shas)), 256):
                if labels[start : start + 256]:
                    for r in store.get(where={"doc_id": {"$in": labels[start : start + 256]}}):
                        self._ids[str(r.metadata.get("doc_id", ""))] = True
                if shas[start : start + 256]:
                    for r in store.get(where={"file_sha256": {"$in": shas[start : start + 256]}}):
                        sha = str(r.metadata.get("file_sha256", ""))
                        if self._twins.get(sha) is None:
                            self._twins[sha] = str(r.metadata.get("source") or r.metadata.get("doc_id") or "")

    def decide(self, key: tuple[str, str]) -> str | None:
        """The name the file ``key`` is stored under (None: left out), decided the first time it is asked."""
        if key not in self._names:
            self._names[key] = self._decide(*key)
        return self._names[key]

    def place(self, doc: Document) -> Document | None:
        """``doc`` as it is to be stored (renamed when its name is taken), or None when it is left out."""
        key = self.key(doc)
        if key is None:
            return doc
        name = self.decide(key)
        if name is None or name == key[0]:
            return None if name is None else doc
        return relabel(doc, key[0], name)

    def _decide(self, label: str, sha: str) -> str | None:
        if sha:
            twin = self._shas.get(sha) or self._stored_with(sha)
            if twin is not None:
                self.notes.append(f"{label}: already stored, unchanged" if twin == label
                                  else f"{label}: same content as {twin}; not added again")
                return None
        name, n = label, 1
        while name in self._taken or self._stored(name):
            n += 1
            name = numbered(label, n)
        if name != label:
            self.notes.append(f"{label}: a different document named {label} is stored already; kept both, "
                              f"this one as {name} (to replace {label}, delete it first)")
        self._taken.add(name)
        if sha:
            self._shas[sha] = name
        return name

    def _stores(self) -> list[Any]:
        return [s for s in (self.pipe.store, self.pipe.image_store) if s is not None and s.count()]

    def _stored(self, doc_id: str) -> bool:
        if doc_id not in self._ids:
            self.look_up([(doc_id, "")])
        return self._ids[doc_id]

    def _stored_with(self, sha: str) -> str | None:
        """The name (``source``) of a stored document whose file has the bytes ``sha``, if any."""
        if sha not in self._twins:
            self.look_up([("", sha)])
        return self._twins[sha]


def _counted(items: Iterable[Any], prog: Progress, sizes: list[tuple[str, int]] | None) -> Iterator[Any]:
    """``items``, counted into ``prog`` as the ingest takes them. With ``sizes`` (each document's file and chunk
    count, in order) also the files and chunks written: a batch is written when the ingest asks for the next."""
    left: dict[str, int] = {}
    for f, _ in sizes or ():
        left[f] = left.get(f, 0) + 1
    batch: list[tuple[str, int]] = []
    for item in items:
        if sizes is not None and len(batch) >= UPLOAD_BATCH:
            for f, n in batch:
                prog.chunks_done += n
                left[f] -= 1
                prog.files_done += left[f] == 0
            batch = []
        if sizes is not None:
            batch.append(sizes[prog.done] if prog.done < len(sizes) else ("", 0))
            left.setdefault(batch[-1][0], 1)
        prog.done += 1
        yield item


def _remove_unfinished(name: str) -> None:
    """Remove the folder a failed creation of collection ``name`` left without its ``collection.json``."""
    import shutil

    from heterag.collections.collection import collection_dir

    try:
        folder = collection_dir(name)
    except HeteragError:
        return
    if folder.is_dir() and not (folder / "collection.json").exists():
        shutil.rmtree(folder, ignore_errors=True)


def one_line(message: object) -> str:
    return " ".join(str(message).split()) or type(message).__name__


class ChatService:
    """Answers questions and manages collections for the web app (thread-safe)."""

    def __init__(self, config: AppConfig | None = None):
        self.config = config or AppConfig()
        self.limits = UploadLimits(max_file_bytes=int(self.config.max_file_mb * 2**20),
                                   max_request_bytes=int(self.config.max_request_mb * 2**20))
        self._pipes: dict[str, Pipeline] = {}
        self._lock = threading.RLock()
        self._create_lock = threading.Lock()
        self._closing = False
        self._ingest_locks: dict[str, threading.Lock] = {}
        self._busy: dict[str, Progress] = {}
        self._generators: dict[tuple, Generator] = {}
        self._sentence_caches: dict[tuple[str, str, str, int], VectorCache | None] = {}
        self._prefills: dict[str, threading.Thread] = {}
        self._demo_thread: threading.Thread | None = None
        self.demo_error: str | None = None

    # ---- collections -------------------------------------------------------------------
    def collections(self) -> list[str]:
        return list_collections()

    def pipeline(self, name: str) -> Pipeline:
        """The open pipeline of existing collection ``name`` (opened once, shared)."""
        with self._lock:
            pipe = self._pipes.get(name)
            if pipe is None:
                pipe = self._pipes[name] = open_collection(name, create=False, adapter=self._adapter(name))
            return pipe

    def _adapter(self, name: str) -> str | None:
        """The configured adapter for collection ``name`` (None: its own; the demos always use their own)."""
        from corpora.demo import DEMO_COLLECTION, SCENES_DEMO_COLLECTION

        if name in (DEMO_COLLECTION, SCENES_DEMO_COLLECTION) or not self.config.adapter.strip():
            return None
        return self.config.adapter.strip()

    def create_collection(self, name: str, *, view: str = "heterag", store: str = "chroma", encoder: str | None = None,
                          image_encoder: str | None = None, chunk_tokens: int | None = None) -> Pipeline:
        """Create collection ``name`` with the given view and encoders (an error if it exists)."""
        name = (name or "").strip()
        if name == DEMOS:
            raise InvalidInputError(f"{DEMOS} is reserved for the built-in demos")
        if chunk_tokens is not None and not 8 <= int(chunk_tokens) <= 8192:
            raise InvalidInputError(f"chunk tokens must be from 8 to 8192, got {chunk_tokens}")
        with self._create_lock:  # not the service lock: loading an encoder must not hold up the chat
            if name in self.collections():
                raise InvalidInputError(f"collection {name!r} exists already")
            try:
                pipe = open_collection(name, store=store or None, view=view or None, encoder=encoder or None,
                                       image_encoder=image_encoder or None, chunk_tokens=chunk_tokens or None,
                                       create=True, adapter=self._adapter(name))
            except BaseException:
                _remove_unfinished(name)
                raise
            with self._lock:
                self._pipes[name] = pipe
        log.info("created collection %s (view %s, store %s)", name, view, store)
        return pipe

    def warm_up(self, collection: str) -> None:
        """Load the models a first question to ``collection`` needs, so that it answers at full speed."""
        pipe = self.pipeline(collection)
        pipe.encoder.encode_query("warm up")
        if pipe.has_images():
            _ = pipe.image_encoder  # loads and checks it
        if self.config.chat.generator == "extractive" and self.config.chat.collection == DEMOS:
            self.prefill(collection)  # the demos' sentences (once: they stay on disk); other collections fill as asked

    def resolve(self, collection: str, has_image: bool) -> str:
        """The collection a question goes to: the demos route image questions to the scenes demo."""
        if collection in ("", DEMOS, None):
            from corpora.demo import DEMO_COLLECTION, SCENES_DEMO_COLLECTION

            return SCENES_DEMO_COLLECTION if has_image else DEMO_COLLECTION
        return collection

    def progress(self, collection: str | None = None) -> list[Progress]:
        with self._lock:
            return [p for name, p in self._busy.items() if collection is None or name == collection]

    # ---- demos -------------------------------------------------------------------------
    def demos_ready(self) -> bool:
        """Whether both demo collections were indexed to the end (an interrupted build is finished next time)."""
        from corpora.demo import DEMO_COLLECTION, SCENES_DEMO_COLLECTION, demo_complete

        return demo_complete(DEMO_COLLECTION) and demo_complete(SCENES_DEMO_COLLECTION)

    def start_demos(self) -> bool:
        """Build the demo collections in the background if they are missing; True while that runs."""
        with self._lock:
            if self._demo_thread is not None and self._demo_thread.is_alive():
                return True
            if self.demos_ready():
                return False
            self._demo_thread = threading.Thread(target=self._build_demos, name="heterag-demos", daemon=True)
            self._demo_thread.start()
            return True

    def wait_demos(self, timeout: float | None = None) -> None:
        t = self._demo_thread
        if t is not None:
            t.join(timeout)

    def _build_demos(self) -> None:
        from corpora.demo import (
            DEMO_COLLECTION,
            SCENES_DEMO_COLLECTION,
            SCENES_DEMO_SIZE,
            demo_complete,
            mark_demo_complete,
        )
        from corpora.pydoc_topics import load_pydoc_topics
        from corpora.synthetic_scenes import iter_synthetic_documents

        try:
            self._open_or_create(DEMO_COLLECTION)
            if not demo_complete(DEMO_COLLECTION):
                docs = load_pydoc_topics()
                mark_demo_complete(DEMO_COLLECTION, self._ingest(
                    DEMO_COLLECTION, docs, "indexing the Python reference topics (text demo, once)", len(docs)))
            self._open_or_create(SCENES_DEMO_COLLECTION)
            if not demo_complete(SCENES_DEMO_COLLECTION):
                mark_demo_complete(SCENES_DEMO_COLLECTION, self._ingest(
                    SCENES_DEMO_COLLECTION, iter_synthetic_documents(SCENES_DEMO_SIZE, seed=0),
                    "indexing 300 synthetic scenes (image demo, once)", SCENES_DEMO_SIZE))
            self.demo_error = None
            if self.config.chat.generator == "extractive":
                for name in (DEMO_COLLECTION, SCENES_DEMO_COLLECTION):
                    self.prefill(name)  # in the background: the demos answer already
        except Exception as exc:  # reported in the UI; the app keeps serving other collections
            if self._closing:  # the app is stopping: the next start finishes the demos
                log.info("demo build stopped by shutdown: %s", one_line(exc))
                return
            log.exception("building the demo collections failed")
            self.demo_error = f"building the demo collections failed: {one_line(exc)}"

    def _open_or_create(self, name: str) -> Pipeline:
        with self._lock:
            if name not in self._pipes:
                self._pipes[name] = open_collection(name, create=True)
            return self._pipes[name]

    def _ingest(self, name: str, items: Iterable[Any], what: str, total: int | None = None, *,
                prepare: Callable[[Progress], list[tuple[str, int]]] | None = None) -> IngestReport:
        """Ingest ``items`` into collection ``name`` with progress visible to :meth:`progress`.

        ``prepare(progress)``, called first (under the collection's ingest lock), returns the file and the
        number of chunks of each document ``items`` will yield, in order: progress then shows files and
        chunks written out of their totals."""
        pipe = self.pipeline(name)
        with self._lock:
            lock = self._ingest_locks.setdefault(name, threading.Lock())
        with lock:
            prog = Progress(name, what, total=total)
            with self._lock:
                self._busy[name] = prog
            try:
                sizes = None
                if prepare is not None:
                    sizes = prepare(prog)
                    prog.what, prog.done, prog.total = what, 0, len(sizes)
                    prog.files_total = len({f for f, _ in sizes})
                    prog.chunks_total = sum(n for _, n in sizes)
                log.warning("%s into collection %r", what, name)
                report = pipe.ingest(_counted(items, prog, sizes), batch_documents=UPLOAD_BATCH, progress=False,
                                     total=prog.total)
            finally:
                with self._lock:
                    self._busy.pop(name, None)
        log.warning("collection %r: %s", name, report.summary())
        return report

    # ---- questions ---------------------------------------------------------------------
    def generator_for(self, settings: ChatSettings, pipe: Pipeline, name: str | None = None) -> Generator:
        """The generator ``settings`` ask for, made once and shared; the extractive one of collection ``name`` keeps
        its sentence vectors in the collection's folder (:meth:`sentence_cache`)."""
        key: tuple
        if settings.generator == "extractive":
            cache = self.sentence_cache(name, pipe) if name else None
            key = ("extractive", id(pipe.encoder), settings.temperature, id(cache))
            kwargs: dict[str, Any] = {"embedder": pipe.encoder, "temperature": settings.temperature, "sentence_cache": cache}
        elif settings.generator == "local":
            key = ("local", settings.model_path.strip(), id(pipe.encoder), settings.temperature)
            kwargs = {"model": settings.model_path.strip() or None, "embedder": pipe.encoder,
                      "temperature": settings.temperature}
        elif settings.generator == "openai":
            key = ("openai", settings.model, settings.base_url, settings.temperature)
            kwargs = {"model": settings.model.strip(), "base_url": settings.base_url.strip() or None,
                      "temperature": settings.temperature}
        else:
            key = ("transformers", settings.model_path, settings.temperature)
            kwargs = {"model_path": settings.model_path.strip(), "temperature": settings.temperature}
        with self._lock:
            gen = self._generators.get(key)
            if gen is None:
                gen = self._generators[key] = make_generator(settings.generator, **kwargs)
            return gen

    def sentence_cache(self, name: str, pipe: Pipeline) -> VectorCache | None:
        """Collection ``name``'s on-disk sentence vectors (:func:`~heterag.collections.collection.sentence_vectors`),
        opened once; None (logged) when the file cannot be opened: answers are then encoded as before."""
        fp = pipe.fingerprint
        key = (name, fp.model, fp.adapter, fp.dim)  # a collection re-created with another encoder gets its own
        with self._lock:
            if key not in self._sentence_caches:
                try:
                    self._sentence_caches[key] = sentence_vectors(name, pipe)
                except (OSError, ValueError, sqlite3.Error) as exc:
                    log.warning("collection %r: sentence vectors not kept on disk (%s)", name, one_line(exc))
                    self._sentence_caches[key] = None
            return self._sentence_caches[key]

    def prefill(self, name: str, *, background: bool = True) -> threading.Thread | int:
        """Encode the sentences of collection ``name``'s chunks that its sentence cache lacks, so that no question
        waits for them (ingest-time work instead of question-time work). In a background thread by default
        (returned; one at a time per collection), else here (returns how many were encoded). Collections of more
        than :data:`PREFILL_MAX_CHUNKS` chunks are left to fill as they are asked."""
        if not background:
            return self._prefill(name)
        with self._lock:
            running = self._prefills.get(name)
            if running is not None and running.is_alive():
                return running
            thread = self._prefills[name] = threading.Thread(target=self._prefill_logged, args=(name,),
                                                             name=f"heterag-prefill-{name}", daemon=True)
            thread.start()
            return thread

    def _prefill_logged(self, name: str) -> None:
        try:
            self._prefill(name)
        except Exception as exc:  # noqa: BLE001 - a cache filling in the background must never take the app down
            if not self._closing:
                log.warning("collection %r: prefilling sentence vectors failed: %s", name, one_line(exc))

    def _prefill(self, name: str) -> int:
        pipe = self.pipeline(name)
        cache = self.sentence_cache(name, pipe)
        n = pipe.count()
        if cache is None or n == 0:
            return 0
        if n > PREFILL_MAX_CHUNKS:
            log.info("collection %r has %d chunks: its sentence vectors are kept as questions read them", name, n)
            return 0
        t0 = time.perf_counter()
        texts = [r.text for r in pipe.store.get() if r.text]  # one read of everything (not through the record cache)
        done = ExtractiveGenerator(pipe.encoder, sentence_cache=cache).prefill(texts, stop=lambda: self._closing)
        if done:
            log.info("collection %r: %d sentence vectors encoded ahead of questions in %.1f s", name, done, time.perf_counter() - t0)
        return done

    def ask(self, question: str | None, image: str | Path | ImageRef | None, settings: ChatSettings, *,
            stream_interval: float | None = None) -> Iterator[ChatEvent]:
        """Answer ``question`` (and/or ``image``, a file path or :class:`ImageRef`) as a stream of events:
        :class:`Notice` s, :class:`Token` s, then one :class:`Done` or one :class:`Failed`.

        Tokens come word by word, but at most one per ``stream_interval`` seconds (default: the
        config's): words that arrive faster are merged into the next token. The first word is
        passed on as soon as it exists, so pacing never delays the first token; 0 passes every
        word on by itself.

        Raises :class:`InvalidInputError` at once when there is neither a question nor an image.
        """
        interval = self.config.stream_interval if stream_interval is None else float(stream_interval)
        question = (question or "").strip()
        try:
            question.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError("the question holds characters that are not text (unpaired surrogates)") from None
        if not _INVISIBLE.sub("", question).strip(" \t\n\r\f\v"):
            question = ""  # only zero-width or format characters: nothing was asked
        if not question and image is None:
            raise InvalidInputError("type a question or attach an image")
        try:
            settings.check()
            fusion = Fusion.parse(settings.fusion or None)
            ref = image if isinstance(image, ImageRef) else (ImageRef.from_path(image) if image is not None else None)
        except (HeteragError, ValueError, TypeError) as exc:
            yield Failed(one_line(exc))
            return
        name = self.resolve(settings.collection, ref is not None)
        if settings.collection in ("", DEMOS, None) and self.start_demos():
            busy = self.progress(name)
            if self.demo_error:
                yield Failed(self.demo_error)
                return
            if self._count(name) == 0:
                state = busy[0].line() if busy else "waiting for the other demo to finish"
                yield Failed(f"the demo collection {name!r} is still being built ({state}); ask again when it is ready")
                return
        busy = self.progress(name)
        try:
            pipe = self.pipeline(name)
            if busy and pipe.count() == 0:
                yield Failed(f"collection {name!r} is being ingested into and has nothing yet ({busy[0].line()}); "
                             "ask again when it is ready")
                return
            if busy:
                yield Notice(f"collection {name!r} is being updated ({busy[0].line()}); the answer uses what is stored so far")
            generator = self.generator_for(settings, pipe, name)
            hits = pipe.retrieve(question or None, k=settings.top_k, image=ref, fusion=fusion,
                                 retrieval=settings.retrieval or None)
        except CollectionNotFoundError:
            yield Failed(f"no collection named {name!r}; create it in the Knowledge tab or pick another")
            return
        except HeteragError as exc:
            yield Failed(one_line(exc))
            return
        yield from self._generate(generator, question, hits, ref, name, interval)

    def _count(self, name: str) -> int:
        try:
            return self.pipeline(name).count()
        except HeteragError:
            return 0

    def _generate(self, generator: Generator, question: str, hits: Sequence[Any], ref: ImageRef | None,
                  name: str, interval: float) -> Iterator[ChatEvent]:
        """Run the generator in a worker thread and pass its text on word by word as it comes, at most
        one token per ``interval`` seconds (faster words are merged; the first goes at once)."""
        q: queue.Queue[object] = queue.Queue()
        end = object()

        def work() -> None:
            try:
                kwargs = {"image": ref} if ref is not None else {}
                q.put(generator.generate(question, hits, on_token=q.put, **kwargs))
            except HeteragError as exc:
                q.put(Failed(f"{generator.name} generator: {one_line(exc)}"))
            except Exception as exc:  # a bug or a broken model must not take the app down
                log.exception("generation failed")
                q.put(Failed(f"{generator.name} generator failed: {one_line(exc)}"))
            finally:
                q.put(end)

        threading.Thread(target=work, name="heterag-generate", daemon=True).start()
        result: Answer | Failed | None = None
        pending, last = "", -math.inf
        while True:
            try:  # while words wait, wake when their interval is up even if nothing new comes
                item = q.get(timeout=max(0.0, last + interval - time.monotonic()) if pending else None)
            except queue.Empty:
                yield Token(pending)
                pending, last = "", time.monotonic()
                continue
            if item is end:
                break
            if isinstance(item, str):
                for word in _WORD.findall(item) or ([item] if item else []):
                    pending += word
                    if time.monotonic() - last >= interval:
                        yield Token(pending)
                        pending, last = "", time.monotonic()
            elif isinstance(item, Answer | Failed):
                result = item
        if pending:
            yield Token(pending)
        if isinstance(result, Answer):
            yield Done(result, name)
        else:
            yield result or Failed("the generator returned nothing")

    # ---- knowledge ---------------------------------------------------------------------
    def ingest_uploads(self, collection: str, files: Sequence[tuple[str, str | Path]],
                       on_cleanup: Callable[[], None] | None = None) -> Iterator[IngestUpdate]:
        """Stage ``files`` (user name, uploaded path) privately, ingest them into ``collection`` with progress
        updates, and delete the staged copies (and, through ``on_cleanup``, the uploads) at the end."""
        try:
            if not files:
                yield IngestUpdate("choose one or more files first", finished=True)
                return
            try:
                pipe = self.pipeline(collection)
            except HeteragError as exc:
                yield IngestUpdate(one_line(exc), finished=True)
                return
            with stage_uploads(files, self.limits) as staged:
                if not staged.sources:
                    yield IngestUpdate("nothing to ingest", finished=True, rejected=tuple(staged.rejected))
                    return
                failures: list[ItemError] = []
                names = _UploadNames(pipe)

                def prepare(prog: Progress) -> list[tuple[str, int]]:
                    """Read every upload once, before anything is written: the failures, where each file goes
                    (:class:`_UploadNames`), and the files and chunks to write (progress totals)."""
                    prog.what = "reading uploads"
                    rows: list[tuple[tuple[str, str] | None, str, int]] = []
                    for item in staged.items():
                        if isinstance(item, ItemError):
                            failures.append(item)
                            continue
                        try:
                            n = len(pipe.chunk(item).chunks)
                        except HeteragError:  # the ingest reports it
                            n = 0
                        rows.append((names.key(item), str(item.metadata.get("source_path") or item.metadata.get("source")
                                                          or item.id), n))
                        prog.done += 1
                    names.look_up([k for k, _, _ in rows if k is not None])
                    return [(f, n) for k, f, n in rows if k is None or names.decide(k) is not None]

                def items() -> Iterator[Any]:
                    for item in staged.items():
                        if isinstance(item, Document) and (doc := names.place(item)) is not None:
                            yield doc

                box: dict[str, Any] = {}

                def work() -> None:
                    try:
                        box["report"] = self._ingest(collection, items(), "ingesting uploads", prepare=prepare)
                    except HeteragError as exc:  # e.g. the collection is locked by another writer
                        log.warning("ingest of uploads into %r failed: %s", collection, one_line(exc))
                        box["error"] = one_line(exc)
                    except Exception as exc:
                        log.exception("ingest of uploads failed")
                        box["error"] = one_line(exc)

                worker = threading.Thread(target=work, name="heterag-ingest", daemon=True)
                worker.start()
                yield IngestUpdate(f"ingesting {len(staged.sources)} upload(s) into {collection}...")
                while worker.is_alive():
                    worker.join(0.5)
                    busy = self.progress(collection)
                    if busy and worker.is_alive():
                        yield IngestUpdate(busy[0].line())
                rejected = list(staged.rejected)
                report: IngestReport | None = box.get("report")
                if report is not None:
                    rejected += [f"{f.source}: {f.message}" for f in failures + report.failures]
                    status = f"{collection}: {report.summary()}; now {pipe.count()} chunks"
                    if rejected:
                        status += f"; {len(rejected)} upload item{'' if len(rejected) == 1 else 's'} not ingested (below)"
                    if names.notes:
                        shown = names.notes[:5]
                        more = f"; and {len(names.notes) - 5} more" if len(names.notes) > 5 else ""
                        status += "; " + "; ".join(shown) + more
                else:
                    status = f"ingest into {collection} failed: {box.get('error', 'unknown error')}"
                yield IngestUpdate(status, finished=True, rejected=tuple(rejected), report=report, notes=tuple(names.notes))
        finally:
            if on_cleanup is not None:
                on_cleanup()

    def close(self) -> None:
        self._closing = True
        for thread in list(self._prefills.values()):
            thread.join(timeout=30)  # it stops after its current slice (a few seconds)
        with self._lock:
            for pipe in self._pipes.values():
                try:
                    pipe.close()
                except Exception:  # closing is best effort at exit
                    log.debug("close failed", exc_info=True)
            self._pipes.clear()
            for cache in self._sentence_caches.values():
                if cache is not None:
                    cache.close()
            self._sentence_caches.clear()


__all__ = ["ChatEvent", "ChatService", "Done", "Failed", "IngestUpdate", "Notice", "Progress", "Token", "one_line"]
