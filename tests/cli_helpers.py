"""Helpers shared by the tests: run the ``heterag`` CLI in-process, sort what a file reader yields, vary a
scenario."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from heterag import Document, ItemError
from heterag.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``heterag ARGV...`` in this process: (exit code, stdout, stderr); argparse's usage exits count as codes."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def split(items: Iterable[Document | ItemError]) -> tuple[dict[str, Document], list[ItemError]]:
    """Documents by id and the item errors of a reader's output (e.g. ``corpora.files.iter_path``)."""
    docs, errors = {}, []
    for it in items:
        if isinstance(it, Document):
            docs[it.id] = it
        else:
            errors.append(it)
    return docs, errors


def changed(scenario: Mapping[str, Any], changes: Mapping[str, Any], sep: str = ".") -> dict:
    """A deep copy of ``scenario`` with each ``changes`` key (a path of keys joined by ``sep``) set to its value."""
    out = json.loads(json.dumps(scenario))
    for key, value in changes.items():
        node = out
        *path, last = key.split(sep)
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    return out
