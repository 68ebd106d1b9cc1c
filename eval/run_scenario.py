"""Run a sandbox scenario: ``python eval/run_scenario.py SCENARIO.yaml --out DIR [--allow-live]``.

The same as ``heterag sandbox run``; see ``eval/scenarios/`` for the ready-made scenarios.
"""

from __future__ import annotations

import sys

import _common  # noqa: F401  (puts the checkout on sys.path)

from heterag.cli import main

if __name__ == "__main__":
    sys.exit(main(["sandbox", "run", *sys.argv[1:]]))
