"""Shared by the grinder simulator tests: a simulator run as a real process on a free loopback
port, and the model and eval dirs its threshold resolution reads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

SIM_ROOT = Path(__file__).resolve().parents[1] / "sim" / "grinder"


class SimProcess:
    """One simulator process: its stdout lines, its port (from GRINDER_SIM_STARTED), HTTP."""

    def __init__(self, kind: str, cmd: list[str], env: dict[str, str], *, seed: str,
                 cwd: Path | None = None, deadline: float = 10.0):
        self.kind = kind
        self.deadline = deadline
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POD_IP": "127.0.0.1",
                    "GRINDER_SIM_PORT": "0", "GRINDER_SIM_SEED": seed, **env}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, prefix: str, after: int = 0) -> str:
        """The first line from index `after` on that starts with prefix."""
        end = time.monotonic() + self.deadline
        while time.monotonic() < end:
            for line in self.lines[after:]:
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"{self.kind}: no line starting with {prefix!r}; got {self.lines}")

    def started(self) -> SimProcess:
        self.port = int(re.search(r" port=(\d+) ", self.wait_line("GRINDER_SIM_STARTED ")).group(1))
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(self.url(path), timeout=5) as r:  # noqa: S310
            return r.status, r.read().decode()

    def post(self, path: str, data: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(self.url(path), data=data, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post_fault(self, body: dict) -> tuple[int, dict]:
        return self.post("/sim/faults", json.dumps(body).encode())

    def families(self) -> dict:
        return {f.name: f for f in text_string_to_metric_families(self.get("/metrics")[1])}

    def samples(self) -> dict[tuple[str, tuple], float]:
        """/metrics as {(sample name, sorted labels): value}."""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(self.get("/metrics")[1]) for s in f.samples}

    def wait_samples(self, predicate, what: str) -> dict[tuple[str, tuple], float]:
        """The samples once predicate(samples) holds."""
        end = time.monotonic() + self.deadline
        while True:
            got = self.samples()
            if predicate(got):
                return got
            assert time.monotonic() < end, f"{self.kind}: {what} never held; last {got}"
            time.sleep(0.05)

    def wait_metric(self, name: str, pred, labels: tuple = ()) -> float:
        """The sample's value once pred(value) holds."""
        key = (name, labels)
        return self.wait_samples(lambda s: key in s and pred(s[key]), f"{name}{labels}")[key]

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed if it does not exit within the deadline)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=self.deadline)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


class ModelDirs(NamedTuple):
    """A model dir and an eval dir, from write_model_dirs."""

    model: Path
    eval: Path

    def env(self, artifacts: Path | None = None) -> dict[str, str]:
        """The simulator's env naming these dirs (and the artifact dir, if given)."""
        env = {"GRINDER_FILL_MODEL_DIR": str(self.model), "GRINDER_FILL_PROB_EVAL_DIR": str(self.eval)}
        if artifacts is not None:
            env["GRINDER_ARTIFACT_DIR"] = str(artifacts)
        return env


def write_model_dirs(root: Path, recommended: object = 3000, *, eval_manifest: bool = True) -> ModelDirs:
    """root/model (manifest.json, model.json) and root/eval (eval_report.json with this
    recommended_bps, and manifest.json unless eval_manifest is false)."""
    model, ev = root / "model", root / "eval"
    model.mkdir()
    ev.mkdir()
    (model / "manifest.json").write_text("{}")
    (model / "model.json").write_text("{}")
    if eval_manifest:
        (ev / "manifest.json").write_text("{}")
    (ev / "eval_report.json").write_text(json.dumps({"recommended_bps": recommended}))
    return ModelDirs(model, ev)
