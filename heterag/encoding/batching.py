"""Micro-batching: concurrent calls of a batch function become one call.

A server answering many users at once calls the encoders from many threads, each with a query or a
handful of sentences. One forward pass over twenty short texts costs little more than a pass over one,
so concurrent calls are merged into a single batch ("dynamic batching", as text-embeddings-inference
and Triton do). Two ways to do it live here:

* :class:`BatchWorker`: **one worker thread** runs every model call of its batchers (the process's
  query-encoder worker, :func:`default_worker`, serves the text encoder and the image encoders' query
  path). Callers put their call on its queue and wait for their own results; the worker takes the
  oldest call, waits up to ``max_wait_s`` (a few milliseconds) for more of the same kind, and runs them
  as one batch. Calls that arrive while a batch runs are merged into the next. Only the worker thread
  ever touches the models, so a model or tokenizer that is not thread-safe is used by one thread at a
  time, and torch's thread settings are changed by that thread alone. A caller waits at most
  ``timeout_s`` (then :class:`~heterag.core.errors.EncoderWorkerError`); a worker that stops (a batch
  function raising ``KeyboardInterrupt``/``SystemExit``, or :meth:`BatchWorker.restart`) is replaced at
  once and the calls still queued are served by the new thread.
* :class:`MicroBatcher`: no thread of its own; the first caller runs the batch and calls that arrive
  meanwhile are merged into the next run ("natural" batching). Used where the callers' threads should do
  the work themselves (store searches, :mod:`heterag.retrieval.search_batching`).

Both merge only calls of an equal ``key`` (e.g. the same encoding options, the same image size), oldest
first, up to ``max_items`` items per batch; a call larger than ``max_items`` runs alone. When a merged
batch raises, each of its calls is re-run alone, so an error reaches only the call that caused it. No
call's result depends on the calls it was merged with (up to float rounding of the batch function).

Bulk work (an ingest encoding thousands of texts) goes through ``run_exclusive`` one slice at a time,
and calls that wait are served before each slice: a query never waits for more than the slice that is
running when it arrives (an ingest cannot take the model back first).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from heterag.core.errors import EncoderWorkerError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Seconds the worker waits after a call for more calls to merge with it (when the batch is not full).
DEFAULT_MAX_WAIT_S = 0.002
#: Seconds a caller waits for its result before :class:`~heterag.core.errors.EncoderWorkerError` (a query
#: normally waits milliseconds; at most one bulk slice, about 0.4 s on 2 cores, when an ingest runs).
DEFAULT_TIMEOUT_S = 60.0
#: How often a waiting caller checks that the worker thread is alive (seconds).
_LIVENESS_S = 0.5


@dataclass
class _Request(Generic[T]):
    items: list[T]
    key: Hashable
    result: list[Any] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What a batcher has done: calls received, batches run, largest batch (in calls)."""

    calls: int = 0
    batches: int = 0
    largest: int = 0
    merged: int = field(default=0)  # calls that shared a batch with at least one other call

    @property
    def calls_per_batch(self) -> float:
        return self.calls / self.batches if self.batches else 0.0

    def count(self, n_calls: int) -> None:
        """Record one batch of ``n_calls`` calls."""
        self.batches += 1
        self.largest = max(self.largest, n_calls)
        if n_calls > 1:
            self.merged += n_calls


def _run_merged(fn: Callable[[list[T]], Sequence[R]], parts: Sequence[list[T]]) -> list[list[R] | BaseException]:
    """``fn`` over the concatenated ``parts`` split back into one result list per part, or (when the merged
    call fails) ``fn`` over each part alone, each part getting its results or its exception. An interrupt
    (``BaseException`` that is not an ``Exception``) propagates."""
    try:
        results = list(fn([item for part in parts for item in part]))
        if len(results) != sum(len(p) for p in parts):
            raise RuntimeError(f"batch function returned {len(results)} results for {sum(len(p) for p in parts)} items")
    except Exception as exc:
        if len(parts) == 1:
            return [exc]
        out: list[list[R] | BaseException] = []
        for part in parts:
            try:
                one = list(fn(part))
                if len(one) != len(part):
                    raise RuntimeError(f"batch function returned {len(one)} results for {len(part)} items")
                out.append(one)
            except Exception as exc_one:  # handed to the caller that made the call
                out.append(exc_one)
        return out
    split, start = [], 0
    for part in parts:
        split.append(results[start : start + len(part)])
        start += len(part)
    return split


# --------------------------------------------------------------------------- natural batching in the callers' threads


class MicroBatcher(Generic[T, R]):
    """Run ``fn`` over the items of concurrent calls in one batch, in the callers' own threads.

    ``fn(items) -> results`` must return one result per item, in order. ``__call__(items, key)``
    blocks until its own results are ready and returns them (a list of ``len(items)``). Calls
    are merged only with calls of an equal ``key``, oldest first, up to ``max_items`` items per batch.

    When a merged batch raises, each of its calls is re-run alone, so an error reaches only
    the call that caused it. Thread-safe; ``fn`` is never run by two threads at once.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_items: int = 64):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.fn = fn
        self.max_items = max_items
        self.stats = BatchStats()
        self._pending: deque[_Request[T]] = deque()
        # guards _pending, the requests' fields and who runs fn; waiters are woken when a run ends
        self._state = threading.Condition(threading.Lock())
        self._owner: int | None = None  # the thread running fn now (re-entrant: fn may call back in)
        self._depth = 0

    def __call__(self, items: Sequence[T], key: Hashable = None) -> list[R]:
        request = _Request(list(items), key)
        me = threading.get_ident()
        with self._state:
            self.stats.calls += 1
            self._pending.append(request)
            while not request.done:
                if self._owner not in (None, me):
                    self._state.wait()  # woken when a run ends or a request is finished
                    continue
                batch = self._take()
                self._enter(me)
                self._state.release()
                try:
                    self._run(batch)
                finally:
                    self._state.acquire()
                    self._leave()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def run_exclusive(self, fn: Callable[[], R]) -> R:
        """Run ``fn()`` while no batch runs (for other uses of the same model or tokenizer).

        Calls waiting for a batch are run first, so a series of exclusive runs (a bulk encode, one
        slice at a time) delays a call by at most the one slice that is running when it comes."""
        with self._running():
            while True:
                with self._state:
                    if not self._pending:
                        break
                    batch = self._take()
                self._run(batch)
            return fn()

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Hold the right to run ``fn`` (waiting for another thread's run to end)."""
        me = threading.get_ident()
        with self._state:
            while self._owner not in (None, me):
                self._state.wait()
            self._enter(me)
        try:
            yield
        finally:
            with self._state:
                self._leave()

    def _enter(self, me: int) -> None:  # caller holds _state
        self._owner = me
        self._depth += 1

    def _leave(self) -> None:  # caller holds _state
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._state.notify_all()

    def _take(self) -> list[_Request[T]]:
        """The oldest pending request and the next ones of its key that fit (caller holds ``_state``)."""
        first = self._pending.popleft()
        batch, size = [first], len(first.items)
        if size < self.max_items:
            kept: deque[_Request[T]] = deque()
            while self._pending:
                req = self._pending.popleft()
                if req.key == first.key and size + len(req.items) <= self.max_items:
                    batch.append(req)
                    size += len(req.items)
                else:
                    kept.append(req)
            self._pending = kept
        self.stats.count(len(batch))
        return batch

    def _run(self, batch: list[_Request[T]]) -> None:
        """Run one batch (the caller is the running thread and does not hold ``_state``), re-running its
        calls alone if it fails."""
        try:
            outcomes = _run_merged(self.fn, [req.items for req in batch])
        except BaseException as exc:  # interrupted: every waiting call gets it, none waits forever
            for req in batch:
                self._finish(req, error=exc)
            raise
        for req, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._finish(req, error=outcome)
            else:
                self._finish(req, result=outcome)

    def _finish(self, req: _Request[T], *, result: list[Any] | None = None, error: BaseException | None = None) -> None:
        with self._state:
            req.result, req.error, req.done = result, error, True
            self._state.notify_all()  # its caller may be waiting while this thread runs on


# --------------------------------------------------------------------------- one worker thread for the models


@dataclass(eq=False)
class _Job:
    """A call of a :class:`WorkerBatcher` (``batcher`` set) or an exclusive run (``run`` set)."""

    future: Future[Any]
    batcher: WorkerBatcher[Any, Any] | None = None
    key: Hashable = None
    items: list[Any] = field(default_factory=list)
    run: Callable[[], Any] | None = None
    queued: float = field(default_factory=time.monotonic)

    def group(self) -> tuple[Any, Hashable]:
        return (id(self.batcher), self.key)


class BatchWorker:
    """One thread that runs the calls of every batcher made by :meth:`batcher`, merging concurrent calls.

    ``max_wait_s``: after taking the oldest call, how long the worker waits for more calls of its kind
    while the batch is not full (0: only calls already queued are merged). ``timeout_s``: how long a caller
    waits for its result before :class:`~heterag.core.errors.EncoderWorkerError` (None: no limit).

    Calls are served oldest first; an exclusive run (:meth:`WorkerBatcher.run_exclusive`) is one job in the
    same queue, so calls queued before it run first. A call made from inside a job (a batch function that
    encodes through another batcher of this worker) runs at once in the worker thread. Thread-safe.
    """

    def __init__(self, *, name: str = "heterag-encoder", max_wait_s: float = DEFAULT_MAX_WAIT_S,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S):
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.name = name
        self.max_wait_s = float(max_wait_s)
        self.timeout_s = timeout_s
        #: Worker threads started after the first one (restarts and replacements of stopped threads).
        self.restarts = 0
        self._init_state()
        _WORKERS.add(self)

    def _init_state(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition(threading.Lock())  # guards _jobs, _generation, _thread
        self._run_lock = threading.Lock()  # held while a job runs: the models are never used by two threads
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._running: int | None = None  # ident of the thread running a job now
        self._closed = False

    # ---- public -------------------------------------------------------------------------------
    def batcher(self, fn: Callable[[list[T]], Sequence[R]], *, max_items: int = 64) -> WorkerBatcher[T, R]:
        """A batcher whose calls of ``fn`` run on this worker (see :class:`WorkerBatcher`)."""
        return WorkerBatcher(self, fn, max_items=max_items)

    def restart(self) -> None:
        """Replace the worker thread: the current one stops after the job it is running (whose callers get
        their results), a new one serves every queued call. Never loses a call."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            if not self._closed:
                self._start()

    def close(self) -> None:
        """Stop the worker thread; queued calls (and later ones) fail with :class:`EncoderWorkerError`."""
        with self._cond:
            self._closed = True
            self._generation += 1
            jobs, self._jobs = list(self._jobs), deque()
            self._cond.notify_all()
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(EncoderWorkerError(f"{self.name}: the worker was closed"))

    @property
    def pending(self) -> int:
        """Calls and exclusive runs waiting in the queue (not the one running)."""
        with self._cond:
            return sum(not j.future.cancelled() for j in self._jobs)

    def alive(self) -> bool:
        """Whether a worker thread is running (one is started by the first call)."""
        t = self._thread
        return t is not None and t.is_alive()

    # ---- callers' side ------------------------------------------------------------------------
    def _submit(self, job: _Job, timeout: float | None) -> Any:
        with self._cond:
            if self._closed:
                raise EncoderWorkerError(f"{self.name}: the worker was closed")
            if job.batcher is not None:
                job.batcher.stats.calls += 1
            self._jobs.append(job)
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._start()
        return self._wait(job, timeout)

    def _wait(self, job: _Job, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _LIVENESS_S if deadline is None else max(0.0, min(_LIVENESS_S, deadline - time.monotonic()))
            try:
                return job.future.result(timeout=step)
            except TimeoutError:
                if job.future.done():  # the call itself raised a TimeoutError (e.g. a collection lock): its error
                    raise
            if deadline is not None and time.monotonic() >= deadline:
                job.future.cancel()  # still queued: the worker skips it; running: its result is dropped
                raise EncoderWorkerError(f"{self.name}: no result after {timeout:g} s (the worker is busy or stuck; "
                                         f"{self.pending} calls waiting)") from None
            with self._cond:  # a worker thread that died is replaced; the queued calls are not lost
                if not self._closed and (self._thread is None or not self._thread.is_alive()):
                    log.warning("%s: worker thread is gone; starting a new one", self.name)
                    self._start()

    def _inline(self) -> bool:
        """Whether the calling thread is the worker thread running a job (a call from inside a job)."""
        return self._running == threading.get_ident()

    # ---- worker side --------------------------------------------------------------------------
    def _start(self) -> None:  # caller holds _cond
        if self._thread is not None:
            self.restarts += 1
        generation = self._generation
        self._thread = threading.Thread(target=self._loop, args=(generation,), name=f"{self.name}-{self.restarts}",
                                        daemon=True)
        self._thread.start()

    def _loop(self, generation: int) -> None:
        try:
            while True:
                with self._cond:
                    batch = self._next(generation)
                if batch is None:
                    return
                with self._run_lock:
                    self._running = threading.get_ident()
                    try:
                        self._run(batch)
                    finally:
                        self._running = None
        except BaseException as exc:  # an interrupt inside a batch function: its callers have it; replace the thread
            log.error("%s: worker thread stopped by %s; starting a new one", self.name, type(exc).__name__)
            with self._cond:
                if self._generation == generation and not self._closed:
                    self._generation += 1
                    self._start()

    def _next(self, generation: int) -> list[_Job] | None:
        """The next batch (caller holds ``_cond``): the oldest job, with the queued calls of its kind that fit,
        after waiting up to ``max_wait_s`` for more. None when this thread is to stop."""
        while True:
            while self._generation == generation and not self._closed and not self._jobs:
                self._cond.wait()
            if self._generation != generation or self._closed:
                return None
            while self._jobs and self._jobs[0].future.cancelled():
                self._jobs.popleft()
            if not self._jobs:
                continue
            first = self._jobs[0]
            if first.batcher is not None and self.max_wait_s > 0:
                deadline = first.queued + self.max_wait_s
                while self._generation == generation and self._room(first) > 0 and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
                if self._generation != generation or self._closed:
                    return None
                if first.future.cancelled() or not self._jobs or self._jobs[0] is not first:
                    continue
            return self._take(first)

    def _room(self, first: _Job) -> int:
        """Items a batch starting with ``first`` could still take (caller holds ``_cond``)."""
        assert first.batcher is not None
        size = sum(len(j.items) for j in self._jobs if j.batcher is first.batcher and j.key == first.key
                   and not j.future.cancelled())
        return first.batcher.max_items - size

    def _take(self, first: _Job) -> list[_Job]:
        """Remove ``first`` and the queued calls that merge with it from the queue (caller holds ``_cond``)."""
        self._jobs.popleft()
        batch = [first]
        if first.batcher is None:
            return batch
        size, limit, kept = len(first.items), first.batcher.max_items, deque()
        while self._jobs:
            job = self._jobs.popleft()
            if job.future.cancelled():
                continue
            if job.group() == first.group() and size + len(job.items) <= limit:
                batch.append(job)
                size += len(job.items)
            else:
                kept.append(job)
        self._jobs = kept
        return batch

    def _run(self, batch: list[_Job]) -> None:
        """Run one batch in the worker thread; each job's future gets its result or its error."""
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        first = live[0]
        try:
            if first.run is not None:
                try:
                    value = first.run()
                except Exception as exc:
                    first.future.set_exception(exc)
                else:
                    first.future.set_result(value)
                return
            assert first.batcher is not None
            first.batcher.stats.count(len(live))
            for job, outcome in zip(live, _run_merged(first.batcher.fn, [job.items for job in live]), strict=True):
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)
        except BaseException as exc:  # an interrupt: every caller of this batch gets an error, none waits forever
            for job in live:
                if not job.future.done():
                    job.future.set_exception(EncoderWorkerError(
                        f"{self.name}: the worker stopped while running this call ({type(exc).__name__})"))
            raise


class WorkerBatcher(Generic[T, R]):
    """``fn`` run on a :class:`BatchWorker`, concurrent calls merged: the interface of :class:`MicroBatcher`.

    ``__call__(items, key)`` returns ``fn``'s results for ``items`` (a list of ``len(items)``), computed in
    one batch with the other calls of an equal ``key`` that are queued, up to ``max_items`` items.
    Raises what ``fn`` raised for these items, or :class:`~heterag.core.errors.EncoderWorkerError` when no
    result came within the worker's ``timeout_s`` or the worker stopped while running the call.
    """

    def __init__(self, worker: BatchWorker, fn: Callable[[list[T]], Sequence[R]], *, max_items: int = 64):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.worker = worker
        self.fn = fn
        self.max_items = max_items
        self.stats = BatchStats()

    def __call__(self, items: Sequence[T], key: Hashable = None) -> list[R]:
        items = list(items)
        if self.worker._inline():  # a call from inside a job: the worker thread runs it now
            self.stats.calls += 1
            self.stats.count(1)
            return list(self.fn(items))
        return self.worker._submit(_Job(Future(), batcher=self, key=key, items=items), self.worker.timeout_s)

    def run_exclusive(self, fn: Callable[[], R]) -> R:
        """Run ``fn()`` on the worker thread, after the calls queued before it (a bulk encode's slice: a call
        waits for at most the one slice that runs when it comes). Waits without a time limit."""
        if self.worker._inline():
            return fn()
        return self.worker._submit(_Job(Future(), run=fn), None)

    @property
    def _pending(self) -> list[_Job]:
        """This batcher's calls waiting in the worker's queue."""
        with self.worker._cond:
            return [j for j in self.worker._jobs if j.batcher is self and not j.future.cancelled()]


_WORKERS: weakref.WeakSet[BatchWorker] = weakref.WeakSet()
_DEFAULT: BatchWorker | None = None
_DEFAULT_LOCK = threading.Lock()


def default_worker() -> BatchWorker:
    """The process's query-encoder worker (made on first use): the text encoder and the image encoders'
    query path run their model calls on it."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = BatchWorker()
        return _DEFAULT


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads and may have inherited held locks: start afresh."""
    for worker in list(_WORKERS):
        worker._init_state()


os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["DEFAULT_MAX_WAIT_S", "DEFAULT_TIMEOUT_S", "BatchStats", "BatchWorker", "MicroBatcher", "WorkerBatcher",
           "default_worker"]
