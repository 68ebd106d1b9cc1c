"""One sandbox run in its own process: ``python -m sandbox.app.worker SPEC.json`` (started by
:class:`sandbox.app.runs.RunManager`).

``SPEC.json`` holds ``run_id``, ``scenario`` (the scenario as a mapping), ``base_dir``, ``allow_live``,
``out`` (the report folder), ``status`` (the status file) and ``parent`` (the app's pid). The worker
writes its progress to the status file (JSON, replaced atomically, at most every
:data:`MIN_INTERVAL` seconds): ``state`` (``running`` -> ``done`` | ``cancelled`` | ``failed``),
the current ``stage`` and its progress bar (``bar``: ``desc``, ``n``, ``total``), the finished
``stages`` with their seconds, the ``collection``, ``fingerprint_before`` and, at the end,
``fingerprint_after``, ``identical`` and ``error`` (one line).

Cancelling is SIGTERM (or SIGINT): the run stops where it is and removes what it injected
(:class:`~sandbox.injection.ReversibleInjection`), then the worker fingerprints the collection
again. If the app dies, the worker notices within a second (its parent changes) and cancels
itself the same way; a worker killed outright leaves a journal, which the app cleans at its next
start (:meth:`sandbox.app.runs.RunManager.recover`).

Progress bars: the sandbox's stages use ``tqdm.auto.tqdm``; this process replaces it, before the
sandbox is imported, by a bar that reports to the status file instead of a terminal. The status shows
one bar per stage, the stage's *outer* bar: the first bar opened in the stage that is still open. Bars
opened inside it (a per-query "encode images" of one step) do not replace it, so ``n``/``total`` move
with the stage; a bar of at most one step gives way to a longer one.

A cancel that comes while the worker still starts (importing the sandbox, before anything was injected)
ends it as ``cancelled`` with ``note`` saying nothing was injected, never as a crash.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Least seconds between two writes of the status file for progress-bar updates.
MIN_INTERVAL = 0.25
#: Seconds between two checks that the app (the parent process) is still alive.
PARENT_CHECK = 0.5


def one_line(message: object) -> str:
    return " ".join(str(message).split()) or type(message).__name__


class StatusFile:
    """The worker's status, written atomically to ``path`` as JSON (see the module docs)."""

    def __init__(self, path: Path, **fields: Any):
        self.path = path
        self.data: dict[str, Any] = {"state": "running", "pid": os.getpid(), "started": time.time(), "stage": None,
                                     "stage_started": None, "bar": None, "stages": [], "collection": None,
                                     "fingerprint_before": None, "fingerprint_after": None, "identical": None,
                                     "error": None, "finished": None, **fields}
        self._last = 0.0
        self._lock = threading.Lock()
        self._bar_lock = threading.Lock()
        self._bar_owner: Any = None  # the key of the stage's outer bar while it is open
        self._bar_total: int | None = None
        self.write()

    def write(self) -> None:
        with self._lock:
            self.data["updated"] = time.time()
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)
            self._last = time.monotonic()

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        """A listener of :func:`sandbox.experiment.notify`: stages and the fingerprint before."""
        if event == "stage" and data.get("phase") == "begin":
            with self._bar_lock:
                self._bar_owner, self._bar_total = None, None
            self.data.update(stage=data["name"], stage_started=time.time(), bar=None)
        elif event == "stage" and data.get("phase") == "end":
            self.data["stages"].append([data["name"], round(float(data.get("seconds", 0.0)), 2)])
        elif event == "fingerprint":
            self.data.update(collection=data["collection"], fingerprint_before=data["before"])
        self.write()

    def on_bar(self, desc: str, n: int, total: int | None, closing: bool = False, key: Any = None) -> None:
        """Progress bar ``key`` moved (or closes). Only the stage's outer bar is shown: the first bar opened in
        the stage that is still open; a bar opened while it is open is ignored, unless the outer one has at most
        one step and the new one more. Written at most every :data:`MIN_INTERVAL` seconds, and when it closes."""
        steps = int(total) if total else None
        with self._bar_lock:
            owner = self._bar_owner
            if owner is not None and owner != key and not ((self._bar_total or 0) <= 1 and (steps or 0) > 1):
                return  # a bar inside the stage's own bar
            self._bar_owner, self._bar_total = (None if closing else key), steps
            self.data["bar"] = {"desc": desc or "", "n": int(n), "total": steps}
        if closing or time.monotonic() - self._last >= MIN_INTERVAL:
            self.write()

    def finish(self, state: str, **fields: Any) -> None:
        self.data.update(state=state, finished=time.time(), bar=None, **fields)
        before, after = self.data.get("fingerprint_before"), self.data.get("fingerprint_after")
        if before and after:
            self.data["identical"] = before == after
        self.write()


def install_progress_hook(status: StatusFile) -> None:
    """Make every ``tqdm.auto.tqdm`` bar created from now on report to ``status`` instead of printing."""
    import tqdm.auto
    import tqdm.std

    class ReportingBar(tqdm.std.tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.update(disable=False, file=open(os.devnull, "w"), mininterval=MIN_INTERVAL)  # noqa: SIM115
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            status.on_bar(self.desc, self.n, self.total, key=id(self))
            return True

        def close(self) -> None:
            if not self.disable:
                status.on_bar(self.desc, self.n, self.total, closing=True, key=id(self))
            fp = self.fp
            super().close()
            if fp is not None and not fp.closed:
                fp.close()

    tqdm.auto.tqdm = ReportingBar  # type: ignore[misc]


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def watch_parent(parent: int) -> threading.Thread:
    """A daemon thread that sends this process SIGTERM (a cancel) once ``parent`` is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        log.warning("the app (pid %d) is gone: cancelling the sandbox run", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=watch, name="sandbox-parent-watch", daemon=True)
    t.start()
    return t


def fingerprint_of(collection: str | None) -> str | None:
    """The content fingerprint digest of ``collection`` now (None if it cannot be read)."""
    if not collection:
        return None
    from heterag import content_fingerprint, open_collection

    try:
        pipe = open_collection(collection, create=False)
    except Exception:
        log.warning("could not open %r to fingerprint it", collection, exc_info=True)
        return None
    try:
        return content_fingerprint(pipe).digest
    finally:
        pipe.close()


#: ``note`` of a run cancelled before anything was injected.
CANCELLED_EARLY = "cancelled while the worker was starting: nothing was injected, the index was not touched"


def _cancelled(status: StatusFile) -> int:
    """Finish ``status`` as ``cancelled``: the fingerprint after where one was taken before, else the note that
    nothing was injected yet."""
    stage = status.data.get("stage")
    if status.data.get("fingerprint_before"):
        status.finish("cancelled", fingerprint_after=fingerprint_of(status.data.get("collection")))
    elif not stage:
        status.finish("cancelled", note=CANCELLED_EARLY)
    else:
        status.finish("cancelled", note=f"cancelled in stage {stage}, before anything was injected: "
                                        "the index was not touched")
    return 130


def run(spec: dict[str, Any], status: StatusFile) -> int:
    """Run the scenario of ``spec``, report to ``status``; returns the exit status. A cancel (SIGTERM, raised as
    :class:`KeyboardInterrupt`) at any point, the imports included, ends it as ``cancelled``."""
    listeners: list[Any] | None = None
    try:
        from .. import experiment
        from ..report import write_report
        from ..runner import run_scenario
        from ..scenario import parse_scenario

        listeners = experiment.listeners
        listeners.append(status.on_event)
        scn = parse_scenario(spec["scenario"], base_dir=spec["base_dir"], where=str(spec["scenario"].get("name", "scenario")))
        report = run_scenario(scn, allow_live=bool(spec.get("allow_live")), run_id=spec["run_id"])
        status.on_event("stage", {"name": "report", "phase": "begin"})
        t = time.perf_counter()
        write_report(report, Path(spec["out"]))
        status.data["stages"].append(["report", round(time.perf_counter() - t, 2)])
        status.finish("done", collection=report.get("collection"), fingerprint_before=report.get("fingerprint_before"),
                      fingerprint_after=report.get("fingerprint_after"), wall_seconds=report.get("wall_seconds"),
                      fingerprint_explained=report.get("fingerprint_explained") or [])
        return 0
    except KeyboardInterrupt:
        return _cancelled(status)
    except Exception as exc:
        heterag = sys.modules.get("heterag")
        if heterag is not None and isinstance(exc, heterag.HeteragError):  # a user error: one line
            status.finish("failed", error=one_line(exc), fingerprint_after=fingerprint_of(status.data.get("collection")))
            return 2
        # a bug: the app shows one line, the log has the traceback
        log.exception("sandbox run %s failed", spec.get("run_id"))
        status.finish("failed", error=f"{type(exc).__name__}: {one_line(exc)}",
                      fingerprint_after=fingerprint_of(status.data.get("collection")))
        return 1
    finally:
        if listeners is not None and status.on_event in listeners:
            listeners.remove(status.on_event)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_signal)  # first: a cancel from now on is a clean "cancelled"
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m sandbox.app.worker SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    status: StatusFile | None = None
    try:
        spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        status = StatusFile(Path(spec["status"]), run_id=spec["run_id"], out=spec["out"],
                            name=spec["scenario"].get("name"),
                            collection=(spec["scenario"].get("rag") or {}).get("collection"))
        install_progress_hook(status)
        if spec.get("parent"):
            watch_parent(int(spec["parent"]))
        try:
            os.nice(int(spec.get("nice", 5)))  # the chat in the app process comes first
        except OSError:
            pass
    except KeyboardInterrupt:
        return _cancelled(status) if status is not None else 130
    return run(spec, status)


if __name__ == "__main__":
    sys.exit(main())
