"""Container processes: start one run through the shim, adopt a run a previous node started, signal
its process group, and learn how it ended. Files of container NAME in the pod dir:

    NAME.log  NAME.previous.log      CRI-format log of the current / previous run
    NAME.pid                         the container's pid while it runs (testbed-down kills these)
    NAME.run.json NAME.exit.json     written by the shim at start / at exit
    NAME.previous.exit.json          how the previous run ended
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .shim import proc_starttime

log = logging.getLogger("procnode.runtime")
SHIM = str(Path(__file__).with_name("shim.py"))


@dataclass(frozen=True)
class Files:
    pod_dir: Path
    name: str

    def _p(self, suffix: str) -> Path:
        return self.pod_dir / f"{self.name}{suffix}"

    @property
    def log(self) -> Path:
        return self._p(".log")

    @property
    def previous_log(self) -> Path:
        return self._p(".previous.log")

    @property
    def pid(self) -> Path:
        return self._p(".pid")

    @property
    def run(self) -> Path:
        return self._p(".run.json")

    @property
    def exit(self) -> Path:
        return self._p(".exit.json")

    @property
    def previous_exit(self) -> Path:
        return self._p(".previous.exit.json")

    def rotate(self) -> None:
        """Before a new run: the current run's log and exit become the previous ones."""
        for src, dst in ((self.log, self.previous_log), (self.exit, self.previous_exit)):
            if src.exists():
                os.replace(src, dst)
        for leftover in (self.run, self.pid):
            leftover.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


class ContainerRun:
    """One run of one container."""

    def __init__(self, files: Files, info: dict, shim: subprocess.Popen | None) -> None:
        self.files = files
        self.pid: int = info["pid"]
        self.starttime = info.get("starttime")
        self.started_ns: int = info["startedAt"]
        self.log_inode = info.get("logInode")
        self._shim = shim
        self._exit: dict | None = None

    @classmethod
    def start(cls, files: Files, argv: list[str], env: dict[str, str], cwd: str, timeout: float = 15.0) -> ContainerRun | dict:
        """Start a run; a dict (the shim's exit record) when the process could not even start."""
        files.pod_dir.mkdir(parents=True, exist_ok=True)
        with open(files.pod_dir / "shim.log", "ab") as shim_log:
            shim = subprocess.Popen(
                [sys.executable, "-I", "-S", SHIM, "--log", str(files.log), "--pid-file", str(files.pid),
                 "--run-file", str(files.run), "--exit-file", str(files.exit), "--cwd", cwd, "--", *argv],
                env=env, stdin=subprocess.DEVNULL, stdout=shim_log, stderr=shim_log,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = read_json(files.run)
            if info is not None:
                return cls(files, info, shim)
            ended = read_json(files.exit)
            if ended is not None:
                shim.wait(timeout=5)
                return ended
            if shim.poll() is not None:
                break
            time.sleep(0.01)
        if shim.poll() is None:
            shim.kill()
        shim.wait()
        now = time.time_ns()
        return {"exitCode": 128, "reason": "StartError", "startedAt": now, "finishedAt": now,
                "message": f"procnode shim failed (exit {shim.returncode}); see {files.pod_dir / 'shim.log'}"}  # fmt: skip

    @classmethod
    def adopt(cls, files: Files) -> ContainerRun | dict | None:
        """A run a previous node process started: still running, its exit record, or None (no run)."""
        info = read_json(files.run)
        ended = read_json(files.exit)
        if ended is not None:
            return ended
        if info is None:
            return None
        run = cls(files, info, None)
        if run.alive():
            return run
        # The shim is gone without writing an exit record (killed): the outcome is unknown.
        now = time.time_ns()
        return {"exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": run.started_ns, "finishedAt": now,
                "message": "The container could not be located when the node restarted"}  # fmt: skip

    @property
    def container_id(self) -> str:
        return f"procnode://{self.pid}"

    def alive(self) -> bool:
        return self.starttime is not None and proc_starttime(self.pid) == self.starttime

    def poll(self) -> dict | None:
        """The exit record once the run has ended (and the shim wrote it), else None."""
        if self._exit is not None:
            return self._exit
        shim_done = True
        if self._shim is not None:
            shim_done = self._shim.poll() is not None
        ended = read_json(self.files.exit)
        if ended is not None and ended.get("logInode") in (None, self.log_inode):
            if self._shim is not None and not shim_done:
                try:
                    self._shim.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self._exit = ended
        elif shim_done and (self._shim is not None or not self.alive()):
            if not self.alive():
                now = time.time_ns()
                self._exit = {"exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": self.started_ns,
                              "finishedAt": now, "message": "the container's shim ended without an exit record"}  # fmt: skip
        return self._exit

    def signal(self, signum: int) -> None:
        """Signal the container's whole process group (pgid == pid: the shim started a session)."""
        if not self.alive():
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.warning("signal %s to process group %s: %s", signum, self.pid, exc)


def kill_leftover(pid_file: Path, run_file: Path, grace: float = 5.0) -> None:
    """Stop a container run nobody owns any more (SIGTERM, grace, SIGKILL)."""
    info = read_json(run_file) or {}
    pid = info.get("pid")
    if pid is None:
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
    starttime = info.get("starttime")
    if starttime is not None and proc_starttime(pid) != starttime:
        return  # gone, or the pid was recycled
    if starttime is None and proc_starttime(pid) is None:
        return
    log.info("killing leftover process group %s (%s)", pid, pid_file)
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc_starttime(pid) is None:
                return
            time.sleep(0.1)
