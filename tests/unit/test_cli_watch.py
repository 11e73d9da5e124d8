"""`kubectl fillprob status --watch` (cli._watch) ends with exit 0 on Ctrl-C (SIGINT) and SIGTERM,
also when it was started with SIGINT ignored, as a non-interactive shell starts a background job
(the e2e test's SIGINT went unanswered in a CI started that way)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
WATCH = """
import itertools, sys
sys.path.insert(0, sys.argv[1])
from fillprob_operator import cli
counter = itertools.count()
sys.exit(cli._watch(lambda: (f"State: frame {next(counter)}", str(next(counter))), 0.05))
"""


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_exits_0_on_a_signal(sig, inherited, tmp_path):
    out = tmp_path / "out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", WATCH, str(OPERATOR)], stdout=sink, stderr=subprocess.STDOUT,
                                preexec_fn=ignore_sigint if inherited == "ignored" else None)
    try:
        end = time.monotonic() + 30
        while out.read_text().count("State:") < 2:
            assert proc.poll() is None and time.monotonic() < end, out.read_text()
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(10) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
