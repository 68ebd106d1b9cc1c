"""Serialised writes to a collection across processes.

Two processes writing into one embedded collection (an ingest from the CLI, the web app's
knowledge tab, an attack sandbox removing what it injected) take turns through one
:class:`WriteLock` per collection: an exclusive OS file lock (``filelock``, released by the
kernel when a process dies, so a ``kill -9`` never leaves a stale lock) on
``<collection>/write.lock``. The holder writes who it is (pid, command, since when) to
``write.lock.holder``, so a writer that gives up after ``timeout`` seconds gets a one-line
:class:`~heterag.core.errors.CollectionLockedError` naming the holder.

The lock is re-entrant within a thread and held per write batch, not per whole ingest, so
writers interleave batch by batch instead of waiting for each other's entire job.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as _FileLockTimeout

from heterag.core.errors import CollectionLockedError
from heterag.core.redaction import redact_command

#: Seconds a writer waits for another process's write batch before giving up.
DEFAULT_TIMEOUT = 120.0


def lock_timeout() -> float:
    """``$HETERAG_LOCK_TIMEOUT`` (seconds) or :data:`DEFAULT_TIMEOUT`."""
    try:
        return float(os.environ.get("HETERAG_LOCK_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


class WriteLock:
    """An exclusive, re-entrant, cross-process write lock on one collection folder."""

    def __init__(self, folder: str | os.PathLike[str], name: str = "", timeout: float | None = None):
        self.folder = Path(folder)
        self.name = name or self.folder.name
        self.path = self.folder / "write.lock"
        self.holder_path = self.folder / "write.lock.holder"
        self.timeout = timeout
        self._lock = FileLock(str(self.path), thread_local=False)
        self._mutex = threading.RLock()  # one thread of this process at a time; FileLock counts re-entry
        self._depth = 0

    def holder(self) -> str:
        """Who holds (or last held) the lock, for messages."""
        try:
            info = json.loads(self.holder_path.read_text())
            since = time.strftime("%H:%M:%S", time.localtime(float(info.get("since", 0))))
            return f"pid {info.get('pid')} ({info.get('command', '?')}) since {since}"
        except (OSError, ValueError):
            return "another process"

    @contextmanager
    def __call__(self) -> Iterator[None]:
        timeout = lock_timeout() if self.timeout is None else self.timeout
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._mutex.acquire(timeout=timeout):
            raise CollectionLockedError(f"collection {self.name!r} is being written by another thread of this process; "
                                        f"gave up after {timeout:g} s")
        try:
            try:
                self._lock.acquire(timeout=timeout)
            except _FileLockTimeout:
                raise CollectionLockedError(
                    f"collection {self.name!r} is locked for writing by {self.holder()}; gave up after {timeout:g} s "
                    "(set HETERAG_LOCK_TIMEOUT to wait longer)") from None
            self._depth += 1
            try:
                if self._depth == 1:
                    self._write_holder()
                yield
            finally:
                self._depth -= 1
                self._lock.release()
        finally:
            self._mutex.release()

    def _write_holder(self) -> None:
        argv = [os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)]
        info = {"pid": os.getpid(), "command": redact_command(argv)[:200],  # store URLs may hold a password
                "since": time.time()}
        tmp = self.holder_path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(info))
            os.replace(tmp, self.holder_path)
        except OSError:  # informational only
            tmp.unlink(missing_ok=True)
