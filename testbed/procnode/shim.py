"""Container shim: runs one container process and outlives the node (stdlib only, run as a script).

    python -I -S shim.py --log L --pid-file P --run-file R --exit-file E --cwd DIR -- ARGV...

The node starts one shim per container run, in its own session. The shim starts ARGV in a new
session too (so the container's process group can be signalled as a whole: pgid == pid), with the
shim's own environment, writes
  - P: the container's pid (what `make testbed-down` kills; removed when the process is gone),
  - R: JSON {pid, starttime (from /proc), shimPid, startedAt (ns), logInode},
  - L: every stdout/stderr line in the CRI log format `<RFC3339Nano> <stream> <F|P> <content>`,
  - E: JSON {exitCode, signal, startedAt, finishedAt (ns), logInode}, when the process ended
    (exitCode 128+N for signal N, as container runtimes report it; a failed exec is exitCode 128
    with reason StartError).
Because the shim, not the node, holds the pipes and waits for the process, the node can restart and
adopt running containers. SIGTERM/SIGINT/SIGHUP sent to the shim are forwarded to the container.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

MAX_LINE = 16 * 1024  # longer lines are split into partial (P) records, as CRI runtimes do


def format_ts(ns: int) -> str:
    """RFC3339Nano as Go prints it: UTC, trailing zeros of the fraction trimmed."""
    secs, frac = divmod(ns, 10**9)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot): tells a process from a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class LogWriter:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.inode = os.fstat(self.fd).st_ino
        self.lock = threading.Lock()

    def pump(self, stream_name: str, pipe) -> None:
        prefix = f" {stream_name} ".encode()
        while True:
            chunk = pipe.readline(MAX_LINE)
            if not chunk:
                return
            if chunk.endswith(b"\n"):
                tag, content = b"F", chunk[:-1]
            elif len(chunk) >= MAX_LINE:
                tag, content = b"P", chunk
            else:  # last line without newline (at EOF)
                tag, content = b"F", chunk
            record = format_ts(time.time_ns()).encode() + prefix + tag + b" " + content + b"\n"
            with self.lock:
                os.write(self.fd, record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procnode-shim")
    parser.add_argument("--log", required=True)
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--run-file", required=True)
    parser.add_argument("--exit-file", required=True)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    log = LogWriter(args.log)
    started = time.time_ns()
    try:
        child = subprocess.Popen(
            command, cwd=args.cwd, env=os.environ, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        what = command[0] if command else ""
        write_json(args.exit_file, {
            "exitCode": 128, "signal": None, "reason": "StartError",
            "message": f"exec: {what!r}: {reason} (cwd {args.cwd}, PATH={os.environ.get('PATH', '')})",
            "startedAt": started, "finishedAt": time.time_ns(), "logInode": log.inode,
        })  # fmt: skip
        return 0

    def forward(signum, _frame):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    with open(f"{args.pid_file}.tmp", "w") as f:
        f.write(f"{child.pid}\n")
    os.replace(f"{args.pid_file}.tmp", args.pid_file)
    write_json(args.run_file, {
        "pid": child.pid, "starttime": proc_starttime(child.pid), "shimPid": os.getpid(),
        "startedAt": started, "logInode": log.inode,
    })  # fmt: skip

    pumps = [
        threading.Thread(target=log.pump, args=("stdout", child.stdout), daemon=True),
        threading.Thread(target=log.pump, args=("stderr", child.stderr), daemon=True),
    ]
    for t in pumps:
        t.start()
    rc = child.wait()
    finished = time.time_ns()
    # Like a container's PID namespace going away: what is left of its process group dies with it.
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for t in pumps:
        t.join(timeout=5)
    try:
        os.unlink(args.pid_file)
    except FileNotFoundError:
        pass
    write_json(args.exit_file, {
        "exitCode": rc if rc >= 0 else 128 - rc, "signal": -rc if rc < 0 else None,
        "startedAt": started, "finishedAt": finished, "logInode": log.inode,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
