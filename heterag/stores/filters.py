"""Metadata filters shared by every vector store.

The filter language is a small subset of the MongoDB/Chroma style:

* ``{"key": value}`` (equality), ``{"key": {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|"$lte": value}}``
* ``{"key": {"$in"|"$nin": [values]}}``
* ``{"$and": [filter, ...]}``, ``{"$or": [filter, ...]}``
* several keys in one mapping mean ``$and``.

:func:`normalize` validates a filter and rewrites it into a canonical tree that
each backend translates (Chroma natively, FAISS to SQL); :func:`matches` evaluates
it in Python and is the reference semantics the conformance tests check against.

Every condition on a key, negative ones (``$ne``, ``$nin``) included, only matches
records that have that key, as in SQL and Chroma.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heterag.core.errors import InvalidInputError

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MEMBERSHIP = ("$in", "$nin")
LOGICAL = ("$and", "$or")
_SCALAR = (str, int, float, bool)


def _check_scalar(key: str, value: Any) -> None:
    if not isinstance(value, _SCALAR):
        raise InvalidInputError(f"filter on {key!r}: value must be str, int, float or bool, got {value!r}")


def normalize(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate ``where`` and return it in canonical form.

    Canonical form: either ``{"$and"|"$or": [canonical, ...]}`` with at least two
    operands, or ``{key: {op: value}}`` with a single key and operator.
    """
    if where is None:
        return None
    if not isinstance(where, Mapping) or not where:
        raise InvalidInputError(f"filter must be a non-empty mapping, got {where!r}")
    parts: list[dict[str, Any]] = []
    for key, cond in where.items():
        if key in LOGICAL:
            if not isinstance(cond, list | tuple) or not cond:
                raise InvalidInputError(f"filter {key} needs a non-empty list of filters")
            subs = [normalize(c) for c in cond]
            parts.append(subs[0] if len(subs) == 1 else {key: subs})
        elif key.startswith("$"):
            raise InvalidInputError(f"unknown filter operator {key!r}")
        elif isinstance(cond, Mapping):
            if not cond:
                raise InvalidInputError(f"filter on {key!r}: empty condition")
            for op, value in cond.items():
                if op in COMPARISONS:
                    _check_scalar(key, value)
                    if op in ("$gt", "$gte", "$lt", "$lte") and (isinstance(value, bool) or not isinstance(value, int | float)):
                        raise InvalidInputError(f"filter on {key!r}: {op} needs a number, got {value!r}")
                elif op in MEMBERSHIP:
                    if not isinstance(value, list | tuple) or not value:
                        raise InvalidInputError(f"filter on {key!r}: {op} needs a non-empty list")
                    for v in value:
                        _check_scalar(key, v)
                    value = list(value)
                else:
                    raise InvalidInputError(f"filter on {key!r}: unknown operator {op!r}")
                parts.append({key: {op: value}})
        else:
            _check_scalar(key, cond)
            parts.append({key: {"$eq": cond}})
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _same(a: Any, b: Any) -> bool:
    # bools are not numbers for filtering purposes (True != 1)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def matches(metadata: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """Evaluate a filter (any accepted form) against one metadata mapping."""
    canon = normalize(where) if where is not None else None
    return _match(metadata, canon)


def _match(meta: Mapping[str, Any], node: Mapping[str, Any] | None) -> bool:
    if node is None:
        return True
    (key, cond), = node.items()
    if key == "$and":
        return all(_match(meta, c) for c in cond)
    if key == "$or":
        return any(_match(meta, c) for c in cond)
    (op, value), = cond.items()
    present = key in meta
    actual = meta.get(key)
    if op == "$eq":
        return present and _same(actual, value)
    if op == "$ne":
        return present and not _same(actual, value)
    if op == "$in":
        return present and any(_same(actual, v) for v in value)
    if op == "$nin":
        return present and not any(_same(actual, v) for v in value)
    if not present or isinstance(actual, bool) or not isinstance(actual, int | float):
        return False
    return {"$gt": actual > value, "$gte": actual >= value, "$lt": actual < value, "$lte": actual <= value}[op]
