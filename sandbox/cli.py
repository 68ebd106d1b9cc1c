"""``heterag sandbox run|clean|runs``: thin shell over :mod:`sandbox.runner` and :mod:`sandbox.injection`."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from heterag import open_collection

from .injection import RunLock, active_runs, clean, list_journals
from .report import prepare_out, write_report
from .runner import run_scenario
from .scenario import Scenario, load_scenario, parse_scenario


def override_source(scn: Scenario, source: str) -> Scenario:
    """``scn`` with ``data.source`` replaced (``--data``; a relative path is taken from the current folder)."""
    data = scn.model_dump(mode="json", by_alias=True, exclude={"base_dir"}, exclude_unset=True)  # as written
    p = Path(source).expanduser()
    data["data"]["source"] = str(p.resolve()) if not source.startswith(("data:", "synthetic:")) else source
    return parse_scenario(data, base_dir=scn.base_dir, where="--data")


def override_store(scn: Scenario, store: str) -> Scenario:
    """``scn`` with ``rag.store`` replaced (``--store``: any store spec, e.g. ``chroma-http://127.0.0.1:8000``)."""
    data = scn.model_dump(mode="json", by_alias=True, exclude={"base_dir"}, exclude_unset=True)
    data.setdefault("rag", {})["store"] = store
    return parse_scenario(data, base_dir=scn.base_dir, where="--store")


def cmd_run(args: argparse.Namespace) -> int:
    scn = load_scenario(args.scenario)
    if getattr(args, "data", None):
        scn = override_source(scn, args.data)
    if getattr(args, "store", None):
        scn = override_store(scn, args.store)
    prepare_out(args.out)  # before the work, not after
    try:
        report = run_scenario(scn, allow_live=args.allow_live)
    except KeyboardInterrupt as exc:
        sigterm = str(exc) == f"signal {signal.SIGTERM}"
        print(f"heterag: {'terminated' if sigterm else 'interrupted'}; the injected items were removed", file=sys.stderr)
        return 143 if sigterm else 130
    md = write_report(report, Path(args.out))
    if report.get("kind") == "membership":
        from .mia_report import summary_line

        same = report["fingerprint_before"] == report["fingerprint_after"]
        print(f"{scn.name}: {report['wall_seconds']:.0f} s, {summary_line(report)}; index {'unchanged' if same else 'CHANGED'}; "
              f"report: {md}")
        return 0 if same else 1
    m = report["metrics"]
    k = scn.rag.top_k
    asr = m.get(f"asr@{k}")
    line = f"{scn.name}: {report['wall_seconds']:.0f} s"
    if asr:
        line += f", ASR@{k} {asr['value']:.3f} [{asr['ci_low']:.3f}, {asr['ci_high']:.3f}]"
    if f"asr_bound@{k}" in m:
        line += f", bound {m[f'asr_bound@{k}']['value']:.3f}"
    same = report["fingerprint_before"] == report["fingerprint_after"]
    print(f"{line}; index {'unchanged' if same else 'CHANGED'}; report: {md}")
    return 0 if same or report.get("fingerprint_explained") else 1


def cmd_clean(args: argparse.Namespace) -> int:
    pipe = open_collection(args.collection, create=False)
    try:
        print(clean(pipe, args.collection).summary())
    finally:
        pipe.close()
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    journals = list_journals()
    active = active_runs()
    for collection, holder in active:
        print(f"running: {holder} on collection={collection}")
    if not journals:
        print("no sandbox runs to clean up" if not active else "no injected items awaiting clean-up")
        return 0
    for j in journals:
        state = "running" if RunLock(j.collection).busy() else "leftover (run 'heterag sandbox clean')"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.started))
        print(f"{j.run_id}  collection={j.collection}  pid={j.pid}  started={started}  documents={len(j.doc_ids)}  {state}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    return {"run": cmd_run, "clean": cmd_clean, "runs": cmd_runs}[args.sandbox_command](args)
