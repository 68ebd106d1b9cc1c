"""Vectors of texts, kept on disk for one encoder: what an encoder made once is not made again.

The extractive generator scores every sentence of the chunks it is given against the question, and on a fresh
app each of those sentences had to be encoded while a user waited: on the demo under 20 users that was about
half of the app's CPU, and a first question to a chunk took 0.15-0.2 s where a repeated one took 0.02 s
(eval/README.md, issue #26). A :class:`VectorCache` holds such vectors in a SQLite file (the standard
library's, WAL journal, so several processes can read and write it), keyed by the SHA-256 of the text, for one
encoder identity (model and adapter); a file made by another encoder is emptied when opened for this one.
It is a cache: a damaged file (found at open, or by a later read or write) is set aside and started again; a
busy or unopenable one is tried again and then done without; a write that fails is logged and dropped, never an
error for the question that made it. Keys include the encoder identity, so one encoder never reads another's
vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_BATCH = 500  # texts per SELECT (SQLite's default variable limit is 32,766; small statements stay quick)
_KEY_SCHEME = "sha256(identity, text)[:16]"  # a file keyed another way is emptied when opened
_OPEN_TRIES = 20  # a file another process is setting up is busy for a moment: try again before going without


def text_key(text: str, identity: str = "") -> bytes:
    """The 16-byte key of ``text`` for encoder ``identity`` (SHA-256 of both, truncated: collisions are out of reach
    at any corpus size). The identity is part of the key, so one encoder never reads another's vectors, even from a
    process that opened the file before the other encoder emptied it."""
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass") + b"\0" + text.encode("utf-8", "surrogatepass")).digest()[:16]


class VectorCache:
    """float32 vectors of ``dim`` dimensions by text, in the SQLite file ``path``, for encoder ``identity``.

    Thread-safe (one connection, a lock). ``get`` and ``put`` never raise for a database problem: they log it
    and behave as a miss and a no-op. Raises :class:`ValueError` for ``dim`` < 1 or an empty ``identity``."""

    def __init__(self, path: str | os.PathLike[str], identity: str, dim: int):
        if not identity or dim < 1:
            raise ValueError(f"a vector cache needs an encoder identity and a dimension >= 1, got {identity!r}, {dim}")
        self.path = Path(path)
        self.identity = identity
        self.dim = int(dim)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        for attempt in range(_OPEN_TRIES):
            try:
                self._db = self._open()
                break
            except sqlite3.OperationalError as exc:  # busy, locked, or not openable here: not damage
                if attempt + 1 == _OPEN_TRIES or "locked" not in str(exc) and "busy" not in str(exc):
                    log.warning("vector cache %s cannot be opened (%s); vectors are not kept on disk this time", self.path, exc)
                    return
                time.sleep(0.05 * (attempt + 1))
            except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
                self._set_aside(exc)
                self._db = self._open()
                break

    def _set_aside(self, exc: BaseException) -> None:
        """Move a damaged file (and its journal) out of the way, so that the next open starts afresh."""
        aside = self.path.with_name(self.path.name + ".damaged")
        log.warning("vector cache %s cannot be read (%s); set aside as %s and started again", self.path, exc, aside.name)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))

    def _damaged(self, exc: sqlite3.DatabaseError) -> None:
        """A read or write found the file damaged (not merely busy): set it aside and start again (lock held)."""
        if isinstance(exc, sqlite3.OperationalError) or self._db is None:
            return
        self._db.close()
        self._db = None
        try:
            self._set_aside(exc)
            self._db = self._open()
        except (OSError, sqlite3.Error) as again:
            log.warning("vector cache %s: could not start again (%s); vectors are not kept on disk", self.path, again)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID")
            want = f"{self.identity}|{self.dim}|{_KEY_SCHEME}"
            row = db.execute("SELECT v FROM meta WHERE k = 'encoder'").fetchone()
            if row is None or row[0] != want:
                db.execute("BEGIN IMMEDIATE")
                if row is not None:
                    log.info("vector cache %s was made by another encoder (%s); emptied for %s", self.path, row[0], want)
                db.execute("DELETE FROM vectors")
                db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('encoder', ?)", (want,))
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The held vectors of ``texts`` (``{text: (dim,) float32}``; texts not held are left out)."""
        if not texts:
            return {}
        keys = {text_key(t, self.identity): t for t in dict.fromkeys(texts)}
        out: dict[str, np.ndarray] = {}
        klist = list(keys)
        with self._lock:
            if self._db is None:
                return {}
            try:
                for s in range(0, len(klist), _BATCH):
                    part = klist[s:s + _BATCH]
                    rows = self._db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})", part).fetchall()
                    for key, blob in rows:
                        text = keys.get(bytes(key))
                        if text is not None and len(blob) == 4 * self.dim:
                            out[text] = np.frombuffer(blob, dtype=np.float32).copy()
            except sqlite3.DatabaseError as exc:
                log.warning("vector cache %s: read failed (%s); encoding instead", self.path, exc)
                self._damaged(exc)
        return out

    def put(self, vectors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]) -> int:
        """Keep these ``text -> vector`` pairs (existing texts are left as they are); returns how many were given
        and well-formed."""
        items = list(vectors.items() if isinstance(vectors, Mapping) else vectors)
        rows = [(text_key(t, self.identity), np.asarray(v, dtype=np.float32).tobytes()) for t, v in items if np.size(v) == self.dim]
        if not rows:
            return 0
        with self._lock:
            if self._db is None:
                return len(rows)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT OR IGNORE INTO vectors (key, vec) VALUES (?, ?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                log.warning("vector cache %s: write failed (%s); the vectors stay in memory only", self.path, exc)
                self._damaged(exc)
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            try:
                return int(self._db.execute("SELECT count(*) FROM vectors").fetchone()[0])
            except sqlite3.DatabaseError as exc:
                log.warning("vector cache %s: count failed (%s)", self.path, exc)
                return 0

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()
