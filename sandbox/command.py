"""``heterag sandbox``: the sandbox's subcommand, registered with the ``heterag`` command line.

The sandbox is a layer above :mod:`heterag`, so heterag's command line never imports it: this
module is named in the ``heterag.commands`` entry-point group (``pyproject.toml``), and
:func:`register` adds the ``sandbox`` parser. Only the arguments are defined here, so ``heterag
--help`` stays fast; the sandbox itself (:mod:`sandbox.cli`) is imported when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(sub: Any) -> Callable[[argparse.Namespace], int]:
    """Add the ``sandbox`` subcommand to ``sub`` (the ``heterag`` parser's subparsers) and return its handler."""
    p = sub.add_parser("sandbox", help="attack/defense sandbox: run scenarios against a live index, list and clean runs")
    ssub = p.add_subparsers(dest="sandbox_command", required=True)
    r = ssub.add_parser("run", help="run a scenario YAML; writes report.json, report.md and plots")
    r.add_argument("scenario", help="scenario YAML file (see eval/scenarios/)")
    r.add_argument("--out", required=True, help="output folder for the report")
    r.add_argument("--allow-live", action="store_true", help="allow injecting into a collection not made for experiments")
    r.add_argument("--data", help="use this data source instead of the scenario's data.source (a folder, data:NAME or synthetic:N)")
    r.add_argument("--store", help="store spec for the experiment collection instead of the scenario's rag.store "
                   "(chroma, faiss, chroma-http://HOST:PORT, postgresql://..., lancedb, milvus...)")
    c = ssub.add_parser("clean", help="remove leftovers of crashed sandbox runs from a collection")
    c.add_argument("--collection", required=True)
    ssub.add_parser("runs", help="list sandbox runs that have not been cleaned up (journals)")
    return run


def run(args: argparse.Namespace) -> int:
    """Run ``heterag sandbox run|clean|runs`` from parsed arguments; returns the exit status."""
    from sandbox.cli import run_command

    return run_command(args)
