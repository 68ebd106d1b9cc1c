"""Micro-batching: concurrent calls of a batch function become one call.

A server answering many users at once calls the text encoder from many threads, each with a
query or a handful of sentences. One forward pass over twenty short texts costs little more
than a pass over one, so :class:`MicroBatcher` merges the calls that are waiting into a single
batch ("natural" batching, as in inference servers): a lone call runs at once with no added
delay, and calls that arrive while the model is busy are run together as soon as it is free.
It also serialises every call of the function, so a model or tokenizer that is not thread-safe
is only ever used by one thread at a time.

Bulk work (an ingest encoding thousands of texts) goes through :meth:`MicroBatcher.run_exclusive`
one slice at a time, and calls that wait are served before each slice: a query never waits for
more than the slice that is running when it arrives (an ingest cannot take the model back first).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Request(Generic[T]):
    items: list[T]
    key: Hashable
    result: list[Any] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What a :class:`MicroBatcher` has done: calls received, batches run, largest batch (in calls)."""

    calls: int = 0
    batches: int = 0
    largest: int = 0
    merged: int = field(default=0)  # calls that shared a batch with at least one other call

    @property
    def calls_per_batch(self) -> float:
        return self.calls / self.batches if self.batches else 0.0


class MicroBatcher(Generic[T, R]):
    """Run ``fn`` over the items of concurrent calls in one batch.

    ``fn(items) -> results`` must return one result per item, in order. ``__call__(items, key)``
    blocks until its own results are ready and returns them (a list of ``len(items)``). Calls
    are merged only with calls of an equal ``key`` (e.g. the same encoding options), oldest
    first, up to ``max_items`` items per batch; a call larger than ``max_items`` runs alone.

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
        self.stats.batches += 1
        self.stats.largest = max(self.stats.largest, len(batch))
        if len(batch) > 1:
            self.stats.merged += len(batch)
        return batch

    def _run(self, batch: list[_Request[T]]) -> None:
        """Run one batch (the caller is the running thread and does not hold ``_state``), re-running its
        calls alone if it fails."""
        try:
            results = list(self.fn([item for req in batch for item in req.items]))
            if len(results) != sum(len(req.items) for req in batch):
                raise RuntimeError(f"batch function returned {len(results)} results for "
                                   f"{sum(len(req.items) for req in batch)} items")
        except Exception as exc:
            if len(batch) == 1:
                self._finish(batch[0], error=exc)
                return
            for req in batch:
                try:
                    self._finish(req, result=list(self.fn(req.items)))
                except Exception as exc_one:  # handed to the caller that made the request
                    self._finish(req, error=exc_one)
            return
        except BaseException as exc:  # interrupted: every waiting call gets it, none waits forever
            for req in batch:
                self._finish(req, error=exc)
            raise
        start = 0
        for req in batch:
            self._finish(req, result=results[start : start + len(req.items)])
            start += len(req.items)

    def _finish(self, req: _Request[T], *, result: list[Any] | None = None, error: BaseException | None = None) -> None:
        with self._state:
            req.result, req.error, req.done = result, error, True
            self._state.notify_all()  # its caller may be waiting while this thread runs on


__all__ = ["BatchStats", "MicroBatcher"]
