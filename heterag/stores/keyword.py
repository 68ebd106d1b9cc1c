"""The keyword (BM25) index: a Tantivy index of the terms of each record's keyword text.

One index folder per store collection holds, for every record id, the terms
(:func:`heterag.stores.tokenizer.tokenize`) of the record's keyword text (:func:`keyword_text`), ranked by
Tantivy's BM25 (the Lucene formula: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, k1 = 1.2, b = 0.75;
Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009, eq. 3.15).
Terms are tokenised in Python, so indexed text and queries go through the same science-aware rules;
Tantivy only splits the stored terms at spaces, and each query term becomes a term query (no query
parser), so FTS syntax in a query (``"``, ``*``, ``NEAR``, ``AND``, ``-``, ``:``) is plain text.

Why Tantivy (measured by ``eval/keyword_engines.py`` on SciFact and at 100k chunks, see the README):
it updates incrementally (delete and add by id, published atomically by a commit, so the index follows
every ingest batch and a crash loses at most the uncommitted batch), and its top-k search (block-max
WAND) answers in about a millisecond at 100k chunks. SQLite FTS5 (also incremental and transactional)
scores every matching row and took about 30 ms there; ``bm25s`` scores as fast but has no incremental
update, so every ingest batch would rebuild it.

The index also keeps a *journal* (``journal.json``) of the ids a writer is about to change in the vector
store beside it (:meth:`KeywordIndex.begin`, :meth:`KeywordIndex.commit`): after a crash between the
two writes, the ids still in the journal are reconciled from the vector store
(:class:`heterag.stores.keyworded.KeywordedStore`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from heterag.core.errors import InvalidInputError, KeywordIndexError
from heterag.stores.tokenizer import query_terms, tokenize

try:
    import fcntl
except ImportError:  # not POSIX: one process's lock only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: How long a write waits for another process's keyword-index commit (seconds).
WRITER_WAIT_S = 60.0

#: At most this many distinct query terms are looked up (the rarest ones, by document frequency): a
#: 10,000-word query costs no more than a long paragraph.
MAX_QUERY_TERMS = 64
#: Writer memory (bytes) per ingest batch.
WRITER_HEAP = 32_000_000
#: Schema version, stored in ``heterag.json`` inside the index folder.
SCHEMA = 1


#: Metadata key of a record's keyword text where its view renders none (written by the indexer).
KEYWORD_CONTEXT_KEY = "keyword_context"


def keyword_text(text: str, metadata: Mapping[str, Any] | None = None) -> str:
    """The text a record is found by in the keyword index: its chunk in context.

    In order: the record's retrieval view when it is a text that says more than the chunk
    (``metadata["view"]``; for the ``heterag`` view the chunk with its neighbours, heading path and title);
    else ``metadata["keyword_context"]``, which the indexer writes for views that render no context text
    (``naive``, whose view is the chunk itself; ``late``, whose view is a vector made in context): the same
    context text, one neighbour each side with heading and title; else (records written by other means or
    before this existed) the chunk with its title and heading path.

    Chosen by measurement (``eval/tune_hybrid.py``, SciFact train, 809 claims, 64-token chunks; keyword
    search alone, nDCG@10): chunk alone 60.3, chunk + title + heading 66.5, chunk in context 69.4; and with
    hybrid retrieval the context text was the best keyword text for every view on both SciFact and PubMedQA
    train (see eval/README.md, "Hybrid retrieval").
    """
    meta = metadata or {}
    view = meta.get("view")
    if isinstance(view, str) and view.strip() and view.strip() != (text or "").strip():
        return view
    context = meta.get(KEYWORD_CONTEXT_KEY)
    if isinstance(context, str) and context.strip():
        return context
    parts = [str(meta.get("title") or ""), str(meta.get("heading") or ""), text or ""]
    return "\n".join(p for p in parts if p.strip())


def _schema() -> Any:
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, fast=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("body", tokenizer_name="whitespace", index_option="freq")
    return sb.build()


def has_keyword_index(path: str | Path) -> bool:
    """Whether ``path`` holds a keyword index."""
    return (Path(path) / "heterag.json").exists()


class KeywordIndex:
    """A BM25 keyword index of ``(id, text)`` pairs in one folder (Tantivy).

    Thread-safe; one process writes at a time (the collection's write lock sees to that; a second
    concurrent writer gets :class:`~heterag.core.errors.KeywordIndexError`), any number read. Ids are
    non-empty strings; writing an existing id replaces its text (idempotent). Raises
    :class:`~heterag.core.errors.KeywordIndexError` when the folder is not a usable keyword index.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        import tantivy

        self.path = Path(path)
        if not has_keyword_index(self.path) and not create:
            raise KeywordIndexError(f"no keyword index at {self.path}")
        self._lock = threading.RLock()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._schema = _schema()
            self._index = tantivy.Index(self._schema, path=str(self.path), reuse=True)
            if not has_keyword_index(self.path):
                tmp = self.path / "heterag.json.tmp"
                tmp.write_text(json.dumps({"schema": SCHEMA, "engine": "tantivy"}))
                os.replace(tmp, self.path / "heterag.json")
            self._meta_mtime = self._mtime()
        except (OSError, ValueError) as exc:
            raise KeywordIndexError(f"{self.path} is not a usable keyword index ({one_line(exc)}); rebuild it with "
                                    "`heterag keywords build --collection NAME`") from None

    def _mtime(self) -> float:
        try:
            return (self.path / "meta.json").stat().st_mtime_ns
        except OSError:
            return 0

    def _searcher(self) -> Any:
        mtime = self._mtime()
        if mtime != self._meta_mtime:  # another process (or writer) committed: see it now
            self._index.reload()
            self._meta_mtime = mtime
        return self._index.searcher()

    # -- writes -------------------------------------------------------------------------------------
    def _writer(self) -> Any:
        """Tantivy's writer, whose lock file admits one writer at a time: another process's commit (a store
        written by several processes at once, see tests/test_store_processes.py) is waited for, up to
        :data:`WRITER_WAIT_S` seconds, then :class:`~heterag.core.errors.KeywordIndexError`."""
        deadline = time.monotonic() + WRITER_WAIT_S
        pause = 0.01
        while True:
            try:
                return self._index.writer(WRITER_HEAP, 1)
            except ValueError as exc:
                if "LockBusy" not in str(exc) or time.monotonic() > deadline:
                    raise KeywordIndexError(f"keyword index {self.path} is being written by another process "
                                            f"({one_line(exc)})") from None
            time.sleep(pause)
            pause = min(0.2, pause * 2)

    def _write(self, ops: Any) -> None:
        import tantivy

        with self._lock:
            writer = self._writer()
            try:
                ops(writer, tantivy)
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            finally:
                writer.wait_merging_threads()
            self._index.reload()
            self._meta_mtime = self._mtime()

    def upsert(self, items: Iterable[tuple[str, str]]) -> int:
        """Index ``(id, text)`` pairs in one commit (replacing the text of known ids); returns how many."""
        rows = [(i, " ".join(tokenize(t))) for i, t in items]
        for i, _ in rows:
            if not isinstance(i, str) or not i:
                raise InvalidInputError(f"keyword index: ids must be non-empty strings, got {i!r}")
        if not rows:
            return 0
        rows = list(dict(rows).items())  # a later duplicate id wins

        def ops(writer: Any, tantivy: Any) -> None:
            for i, body in rows:
                writer.delete_documents_by_term("id", i)
                writer.add_document(tantivy.Document(id=i, body=body))

        self._write(ops)
        return len(rows)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove these ids (unknown ones are skipped) in one commit; returns how many were present."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        present = self.contains(ids)

        def ops(writer: Any, tantivy: Any) -> None:
            for i in ids:
                writer.delete_documents_by_term("id", i)

        self._write(ops)
        return present

    def clear(self) -> None:
        """Remove every entry and the journal."""
        self._write(lambda writer, tantivy: writer.delete_all_documents())
        self.commit(self.journal())

    # -- journal ------------------------------------------------------------------------------------
    def _journal_path(self) -> Path:
        return self.path / "journal.json"

    def journal(self) -> list[str]:
        """Ids noted by :meth:`begin` whose change was not committed (a writer crashed in between)."""
        try:
            return sorted(json.loads(self._journal_path().read_text()))
        except FileNotFoundError:
            return []
        except ValueError:  # a torn write cannot happen (os.replace), but a hand-edited file can
            raise KeywordIndexError(f"{self._journal_path()} is corrupt; rebuild the keyword index with "
                                    "`heterag keywords build --collection NAME`") from None

    def _write_journal(self, ids: Iterable[str]) -> None:
        ids = sorted(set(ids))
        path = self._journal_path()
        if not ids:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(ids, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @contextlib.contextmanager
    def writing(self, wait: bool = True) -> Iterator[bool]:
        """Hold the writer session lock (an advisory file lock, ``writer.lock``, released when the holder
        exits or dies) for a whole in-step write: journal, vector store, keyword index. Yields whether it
        is held: always with ``wait``, else False when another writer holds it. Not re-entrant."""
        with open(self.path / "writer.lock", "a") as fh:
            held = True
            if fcntl is not None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    held = False
            yield held  # closing the file releases the lock

    @contextlib.contextmanager
    def _journal_lock(self) -> Iterator[None]:
        """This process's lock and an advisory file lock (several processes may write one store at once)."""
        with self._lock, open(self.path / "journal.lock", "a") as fh:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def begin(self, ids: Iterable[str]) -> None:
        """Note, durably, that the vector store beside this index is about to change these ids."""
        with self._journal_lock():
            self._write_journal(set(self.journal()) | set(ids))

    def commit(self, ids: Iterable[str]) -> None:
        """Drop ids from the journal (their change is now in both indexes). With several processes writing
        the same ids at once (outside the collection's write lock), one's commit may drop ids another still
        writes; a crash of that other one is then found by the id check at the next open, not reconciled."""
        with self._journal_lock():
            done = set(ids)
            self._write_journal(i for i in self.journal() if i not in done)

    # -- reads --------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every indexed id (unordered)."""
        import tantivy

        with self._lock:
            searcher = self._searcher()
            n = searcher.num_docs
            if not n:
                return []
            hits = searcher.search(tantivy.Query.all_query(), n, count=False).hits
            return [searcher.doc(addr)["id"][0] for _, addr in hits]

    def count(self) -> int:
        with self._lock:
            return int(self._searcher().num_docs)

    def contains(self, ids: Sequence[str]) -> int:
        """How many of these ids are indexed."""
        import tantivy

        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self._lock:
            query = tantivy.Query.term_set_query(self._schema, "id", ids)
            return int(self._searcher().search(query, 1, count=True).count)

    def _query(self, text: str, searcher: Any) -> Any:
        import tantivy

        terms = query_terms(text)
        if len(terms) > MAX_QUERY_TERMS:  # keep the rarest known terms
            df = {t: searcher.doc_freq("body", t) for t in terms}
            terms = sorted((t for t in terms if df[t]), key=lambda t: df[t])[:MAX_QUERY_TERMS]
        if not terms:
            return None
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "body", t)) for t in terms])

    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` best ``(id, score)`` for ``text``, best first; ``score`` is the BM25 score (> 0,
        higher is better, unbounded). A text without terms (stopwords, punctuation) gives ``[]``."""
        if not isinstance(text, str):
            raise InvalidInputError(f"keyword query must be a string, got {type(text).__name__}")
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        with self._lock:
            searcher = self._searcher()
            query = self._query(text, searcher)
            if query is None:
                return []
            hits = searcher.search(query, k, count=False).hits
            return [(searcher.doc(addr)["id"][0], float(score)) for score, addr in hits]

    def scores(self, text: str, ids: Sequence[str]) -> dict[str, float]:
        """BM25 scores of ``text`` for exactly these ids; ids that match no query term (or are not
        indexed) score 0."""
        import tantivy

        out = {i: 0.0 for i in ids}
        if not out:
            return out
        with self._lock:
            searcher = self._searcher()
            query = self._query(text, searcher)
            if query is None:
                return out
            only = tantivy.Query.const_score_query(tantivy.Query.term_set_query(self._schema, "id", list(out)), 0.0)
            both = tantivy.Query.boolean_query([(tantivy.Occur.Must, only), (tantivy.Occur.Must, query)])
            for score, addr in searcher.search(both, len(out), count=False).hits:
                out[searcher.doc(addr)["id"][0]] = float(score)
        return out

    def close(self) -> None:
        """Nothing to release (every write commits); kept for symmetry with the stores."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
