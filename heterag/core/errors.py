"""Exception hierarchy.

Every error a user can cause (bad input, unknown names, mismatched indexes) is a
:class:`HeteragError`; the CLI prints its message on one line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable


class HeteragError(Exception):
    """Base class for errors caused by input or configuration, not by bugs."""


class InvalidInputError(HeteragError, ValueError):
    """A document, query, file or argument that cannot be used as given."""


class UnknownNameError(HeteragError, KeyError):
    """A registry lookup (store, view, generator...) for a name that does not exist."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.choices)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DimensionMismatchError(HeteragError, ValueError):
    """Vectors whose dimension differs from the store's."""


class FingerprintMismatchError(HeteragError):
    """A collection opened with an encoder/view configuration other than the one that built it."""


class CollectionNotFoundError(HeteragError, LookupError):
    """A collection name that has no data on disk."""


class GeneratorError(HeteragError, RuntimeError):
    """A generator backend failed (HTTP error from an endpoint, malformed response...)."""


class CollectionLockedError(HeteragError, TimeoutError):
    """Another process held a collection's write lock for longer than the timeout."""


class StoreUnavailableError(HeteragError, ConnectionError):
    """A store server that cannot be reached, or that refused the credentials."""


class KeywordIndexError(HeteragError):
    """A keyword index that is missing, corrupt, or out of step with its vector store; the message names
    the command that rebuilds it."""


class EncoderWorkerError(HeteragError, RuntimeError):
    """A call to the query-encoder worker (:class:`heterag.encoding.batching.BatchWorker`) that got no result:
    it waited longer than the worker's timeout, or the worker stopped while running it. The message says which;
    the worker itself is replaced and keeps serving later calls."""
