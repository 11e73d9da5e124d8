"""procnode: the container shim (real short-lived processes): logs, pid file, exit codes, adoption."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode.logs import parse_record  # noqa: E402
from procnode.runtime import ContainerRun, Files  # noqa: E402

ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "GREETING": "hi"}


def wait_exit(run: ContainerRun, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = run.poll()
        if record is not None:
            return record
        time.sleep(0.02)
    raise AssertionError("run did not end")


def test_run_logs_both_streams_and_exit_code(tmp_path: Path) -> None:
    files = Files(tmp_path, "main")
    code = "import os,sys; print(os.environ['GREETING'], os.getcwd()); print('oops', file=sys.stderr, flush=True); sys.exit(3)"
    run = ContainerRun.start(files, ["python3", "-c", code], ENV, str(tmp_path))
    assert isinstance(run, ContainerRun)
    record = wait_exit(run)
    assert record["exitCode"] == 3 and record["signal"] is None
    assert record["finishedAt"] >= record["startedAt"]
    records = [parse_record(line) for line in files.log.read_bytes().splitlines(keepends=True)]
    by_stream = {r.stream: r.content for r in records}
    assert by_stream[b"stdout"] == f"hi {tmp_path}".encode()
    assert by_stream[b"stderr"] == b"oops"
    assert not files.pid.exists(), "pid file must go with the process"


def test_signal_reaches_the_process_group(tmp_path: Path) -> None:
    files = Files(tmp_path, "main")
    run = ContainerRun.start(files, ["sh", "-c", "sleep 30 & sleep 30"], ENV, str(tmp_path))
    assert isinstance(run, ContainerRun)
    assert int(files.pid.read_text()) == run.pid and os.getpgid(run.pid) == run.pid
    run.signal(signal.SIGTERM)
    record = wait_exit(run)
    assert record["exitCode"] == 128 + signal.SIGTERM and record["signal"] == signal.SIGTERM


def test_exec_failure_is_start_error(tmp_path: Path) -> None:
    result = ContainerRun.start(Files(tmp_path, "main"), ["no-such-binary-xyz"], ENV, str(tmp_path))
    assert isinstance(result, dict)
    assert result["exitCode"] == 128 and result["reason"] == "StartError"
    assert "no-such-binary-xyz" in result["message"]


def test_rotation_keeps_the_previous_run(tmp_path: Path) -> None:
    files = Files(tmp_path, "main")
    wait_exit(ContainerRun.start(files, ["python3", "-c", "print('first')"], ENV, str(tmp_path)))
    files.rotate()
    wait_exit(ContainerRun.start(files, ["python3", "-c", "print('second')"], ENV, str(tmp_path)))
    assert b" F first" in files.previous_log.read_bytes()
    assert b" F second" in files.log.read_bytes() and b"first" not in files.log.read_bytes()
    assert files.previous_exit.exists() and files.exit.exists()


def test_adopt_a_running_and_a_finished_run(tmp_path: Path) -> None:
    files = Files(tmp_path, "main")
    started = ContainerRun.start(files, ["sleep", "30"], ENV, str(tmp_path))
    adopted = ContainerRun.adopt(files)
    assert isinstance(adopted, ContainerRun) and adopted.pid == started.pid and adopted.alive()
    adopted.signal(signal.SIGKILL)
    assert wait_exit(adopted)["exitCode"] == 137
    wait_exit(started)
    again = ContainerRun.adopt(files)
    assert isinstance(again, dict) and again["exitCode"] == 137
    assert ContainerRun.adopt(Files(tmp_path, "never-ran")) is None
