"""`python app.py`: the terminal chat answers questions with sources until an empty line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from heterag.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_terminal_chat_answers_with_sources(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "tides.md").write_text("# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n")
    assert main(["ingest", str(notes), "--collection", "chat"]) == 0
    capsys.readouterr()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--collection", "chat"],
        input="What causes tides?\n\n", capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert "gravitational pull of the Moon" in proc.stdout
    assert "Sources:" in proc.stdout and "[1] Tides" in proc.stdout


def test_terminal_chat_reports_a_missing_collection(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--collection", "nope"],
        input="", capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 2 and "no collection named 'nope'" in proc.stderr
