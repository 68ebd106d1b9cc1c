"""Sandbox runs of the web app: each in a worker process (:mod:`sandbox.app.worker`) that the tab polls.

:class:`RunManager` starts one run at a time (a second is refused with the busy message naming the
first), reads its status file, cancels it (SIGTERM: the worker removes what it injected and
fingerprints the collection again), and cleans up after runs that did not end by themselves:
:meth:`RunManager.recover` (called when the app starts, and when a worker is found dead) removes
the injected items of every run whose process is gone, by its journal and its ``sandbox_run`` tags
(:func:`sandbox.injection.clean`), and says what it removed and whether the fingerprint is back to
the one taken before the run.

Each run has a folder ``$HETERAG_HOME/sandbox/app-runs/<run id>/``: ``spec.json`` (what the worker
runs), ``status.json`` (what it reports), ``worker.log``, ``report/`` (report.json, report.md, PNGs) and,
once cancel was pressed, ``cancel`` (so a worker that a cancel ended before it could report, while it was
still starting, is shown as cancelled, not as a crash). Every worker is waited for by a thread of its own,
so a finished worker never lingers as a zombie process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterag import open_collection

from ..injection import RunLock, SandboxBusyError, clean, list_journals, new_run_id, sandbox_dir
from ..scenario import Scenario
from .worker import CANCELLED_EARLY

log = logging.getLogger(__name__)

#: States of a run that has not ended.
ACTIVE = ("starting", "running")


def runs_root() -> Path:
    return sandbox_dir() / "app-runs"


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is dead for our purposes
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class RunStatus:
    """A run as its status file describes it (see :mod:`sandbox.app.worker`); ``data`` is the whole file."""

    run_id: str
    folder: Path
    data: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.data.get("state", "starting"))

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def report_dir(self) -> Path:
        return self.folder / "report"

    @property
    def collection(self) -> str | None:
        return self.data.get("collection")

    def fingerprint_line(self) -> str:
        """"fingerprint before X, after Y: identical" (or DIFFERENT), or "" before both are known."""
        b, a = self.data.get("fingerprint_before"), self.data.get("fingerprint_after")
        if not (b and a):
            return ""
        return f"fingerprint before {b[:16]}, after {a[:16]}: {'identical (index restored)' if a == b else 'DIFFERENT'}"


class RunManager:
    """Starts, polls, cancels and recovers the app's sandbox runs (thread-safe; one run at a time)."""

    def __init__(self, root: Path | None = None, *, python: str = sys.executable, nice: int = 5):
        self.root = root or runs_root()
        self.python = python
        self.nice = nice
        self._procs: dict[str, subprocess.Popen] = {}
        self._codes: dict[str, int | None] = {}  # exit status of the workers that ended (reaped)
        self._lock = threading.RLock()
        self.current: str | None = self._latest()

    # ---- starting ------------------------------------------------------------------------
    def start(self, scn: Scenario, *, allow_live: bool = False) -> str:
        """Start ``scn`` in a worker process; returns its run id. Raises :class:`SandboxBusyError` naming the
        running one while a run is active (here or, for ``rag.collection``, in another process)."""
        with self._lock:
            active = self.active()
            if active is not None:
                raise self._busy(active)
            if scn.rag.collection and RunLock(scn.rag.collection).busy():
                raise RunLock(scn.rag.collection).busy_error()
            run_id = new_run_id()
            folder = self.root / run_id
            (folder / "report").mkdir(parents=True)
            spec = {"run_id": run_id, "scenario": scn.model_dump(mode="json", by_alias=True, exclude={"base_dir"},
                                                                 exclude_unset=True),
                    "base_dir": str(scn.base_dir), "allow_live": allow_live, "out": str(folder / "report"),
                    "status": str(folder / "status.json"), "parent": os.getpid(), "nice": self.nice}
            (folder / "spec.json").write_text(json.dumps(spec, indent=1))
            (folder / "status.json").write_text(json.dumps({"state": "starting", "run_id": run_id, "started": time.time(),
                                                            "collection": scn.rag.collection, "name": scn.name}))
            env = {**os.environ, "HETERAG_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false",
                   "OMP_NUM_THREADS": os.environ.get("HETERAG_SANDBOX_THREADS", "1"), "OMP_WAIT_POLICY": "PASSIVE"}
            with open(folder / "worker.log", "w") as out:
                proc = subprocess.Popen([self.python, "-m", "sandbox.app.worker", str(folder / "spec.json")], env=env,
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(Path(__file__).resolve().parents[2]))
            self._procs[run_id] = proc
            threading.Thread(target=proc.wait, name=f"sandbox-reap-{run_id}", daemon=True).start()  # no zombie
            self.current = run_id
            log.warning("sandbox run %s (%s) started in worker pid %d", run_id, scn.name, proc.pid)
            return run_id

    def _busy(self, st: RunStatus) -> SandboxBusyError:
        coll = st.collection
        if coll and RunLock(coll).busy():
            return RunLock(coll).busy_error()
        since = time.strftime("%H:%M:%S", time.localtime(float(st.data.get("started") or time.time())))
        pid = st.data.get("pid") or (self._procs[st.run_id].pid if st.run_id in self._procs else "?")
        where = f"collection {coll!r}" if coll else "the sandbox"
        return SandboxBusyError(f"{where} is in use by sandbox run {st.run_id} (pid {pid}, since {since}); "
                                "wait for it to finish (or stop it)")

    # ---- polling -------------------------------------------------------------------------
    def status(self, run_id: str | None = None) -> RunStatus | None:
        """The status of run ``run_id`` (default: the latest); a run whose worker died is marked ``died``
        and its injected items are cleaned up (:meth:`recover`)."""
        run_id = run_id or self.current
        if not run_id:
            return None
        folder = self.root / run_id
        try:
            data = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            return None
        st = RunStatus(run_id, folder, data)
        if st.active and not self._running(run_id, data):
            time.sleep(0.2)  # the worker may just have written its last status
            try:
                data = json.loads((folder / "status.json").read_text())
            except (OSError, ValueError):
                pass
            st = RunStatus(run_id, folder, data)
            if st.active:
                code = self._procs[run_id].returncode if run_id in self._procs else self._codes.get(run_id)
                if (folder / "cancel").exists():  # a cancel ended it before it could report (still starting)
                    data.update(state="cancelled", finished=time.time(), error=None,
                                note=None if data.get("fingerprint_before") else CANCELLED_EARLY)
                else:
                    data.update(state="died", finished=time.time(),
                                error=f"the worker process ended without finishing (exit status {code})")
                self._write_status(folder, data)
                notes = self.recover()
                data = json.loads((folder / "status.json").read_text())
                if notes:
                    data["recovered"] = notes
                    self._write_status(folder, data)
                st = RunStatus(run_id, folder, data)
        if not st.active:
            self._forget(run_id)
        return st

    def _forget(self, run_id: str) -> None:
        """Drop the process of run ``run_id`` once it has exited (its exit status kept)."""
        with self._lock:
            proc = self._procs.get(run_id)
            if proc is not None and proc.poll() is not None:
                self._codes[run_id] = proc.returncode
                del self._procs[run_id]

    def _running(self, run_id: str, data: dict[str, Any]) -> bool:
        proc = self._procs.get(run_id)
        if proc is not None:
            return proc.poll() is None
        return alive(data.get("pid"))

    def active(self) -> RunStatus | None:
        """The run that has not ended, if any (of this app)."""
        with self._lock:
            for run_id in list(self._procs):
                st = self.status(run_id)
                if st is not None and st.active:
                    return st
        return None

    def wait(self, run_id: str | None = None, timeout: float = 600) -> RunStatus:
        """Poll until run ``run_id`` has ended (for scripts and tests); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(run_id)
            if st is not None and not st.active:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox run {run_id or self.current} did not end within {timeout:g} s")
            time.sleep(0.2)

    def _latest(self) -> str | None:
        if not self.root.is_dir():
            return None
        runs = sorted(p.name for p in self.root.iterdir() if (p / "status.json").is_file())
        return runs[-1] if runs else None

    # ---- cancelling ----------------------------------------------------------------------
    def cancel(self, run_id: str | None = None) -> str:
        """Ask run ``run_id`` (default: the active one) to stop; returns one line. The worker removes what it
        injected and reports ``cancelled`` with the fingerprints before and after."""
        st = self.status(run_id) if run_id else self.active()
        if st is None or not st.active:
            return "no sandbox run is active"
        proc = self._procs.get(st.run_id)
        pid = proc.pid if proc is not None else st.data.get("pid")
        if not pid:
            return f"run {st.run_id} is still starting; cancel again in a moment"
        try:
            (st.folder / "cancel").touch()
        except OSError:
            pass
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            return f"run {st.run_id} has already ended"
        log.warning("sandbox run %s: cancel requested", st.run_id)
        return f"cancelling run {st.run_id}: removing what it injected and checking the fingerprint"

    def stop_all(self, timeout: float = 30) -> None:
        """Cancel every active run and wait for its clean-up (at app exit)."""
        for run_id, proc in list(self._procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.error("sandbox run %s did not stop within %g s", run_id, timeout)

    # ---- recovery ------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Clean up after runs whose process is gone (killed, or the app died); returns one line per
        collection cleaned, naming the runs, what was removed and the fingerprint check."""
        notes = []
        with self._lock:
            befores: dict[str, str] = {}
            if self.root.is_dir():
                for folder in sorted(self.root.iterdir()):
                    try:
                        data = json.loads((folder / "status.json").read_text())
                    except (OSError, ValueError):
                        continue
                    if data.get("state") in ACTIVE and not self._running(folder.name, data):
                        if (folder / "cancel").exists():
                            data.update(state="cancelled", finished=time.time(), error=None,
                                        note=None if data.get("fingerprint_before") else CANCELLED_EARLY)
                        else:
                            data.update(state="interrupted", finished=time.time(),
                                        error="the run was interrupted (the app or its worker stopped)")
                        self._write_status(folder, data)
                    if data.get("fingerprint_before"):
                        befores[folder.name] = data["fingerprint_before"]
            for collection in sorted({j.collection for j in list_journals()}):
                try:
                    notes.append(self._clean(collection, befores))
                except SandboxBusyError:
                    continue  # its run still holds the collection (here or in another process): it cleans up itself
        return notes

    def _clean(self, collection: str, befores: dict[str, str]) -> str:
        """Clean ``collection`` (:class:`SandboxBusyError` while a live process holds its run lock: the lock
        itself, released by the OS when its holder dies, decides, not the holder's pid)."""
        from heterag import content_fingerprint

        pipe = open_collection(collection, create=False)
        try:
            report = clean(pipe, collection)
            after = content_fingerprint(pipe).digest
        finally:
            pipe.close()
        line = f"cleaned up after an interrupted sandbox run: {report.summary()}"
        owner = next((run for run in befores if any(r.startswith(run) for r in report.journals)), None)
        if owner is not None:  # a run of this app (its sub-runs are "<run id>-...")
            before = befores[owner]
            same = "identical (index restored)" if before == after else "DIFFERENT"
            line += f"; fingerprint before the run {before[:16]}, now {after[:16]}: {same}"
            self._note(owner, line, after)
        else:
            line += f"; fingerprint now {after[:16]}"
        log.warning("%s", line)
        return line

    def _note(self, run_id: str, line: str, after: str) -> None:
        folder = self.root / run_id
        try:
            data = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            return
        data.setdefault("recovered", []).append(line)
        data["fingerprint_after"] = after
        if data.get("fingerprint_before"):
            data["identical"] = data["fingerprint_before"] == after
        self._write_status(folder, data)

    @staticmethod
    def _write_status(folder: Path, data: dict[str, Any]) -> None:
        tmp = folder / f"status.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, folder / "status.json")

    def finished(self, collection: str, within: float = 600) -> RunStatus | None:
        """The latest run on ``collection`` that ended in the last ``within`` seconds (for the chat banner)."""
        if not self.root.is_dir():
            return None
        for folder in sorted(self.root.iterdir(), reverse=True)[:20]:
            st = self.status(folder.name) if folder.name == self.current else None
            if st is None:
                try:
                    st = RunStatus(folder.name, folder, json.loads((folder / "status.json").read_text()))
                except (OSError, ValueError):
                    continue
            if st.collection == collection and not st.active and time.time() - float(st.data.get("finished") or 0) < within:
                return st
        return None


__all__ = ["ACTIVE", "RunManager", "RunStatus", "alive", "runs_root"]
