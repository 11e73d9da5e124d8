"""allocator.py against the real glibc, each case in a fresh interpreter (an arena limit and a
trim act on the whole process), beside the same program without it: the difference is what
the operator's call does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fillprob_operator import allocator

OPERATOR = Path(__file__).resolve().parents[2] / "operator"

# glibc's non-main arenas: anonymous mappings aligned to HEAP_MAX_SIZE (64 MiB on 64-bit).
COUNT_ARENAS = """
def arenas():
    starts = set()
    for line in open("/proc/self/maps"):
        parts = line.split()
        start = int(parts[0].split("-")[0], 16)
        if len(parts) < 6 and start % (64 << 20) == 0:
            starts.add(start)
    return len(starts)

def twelve_allocating_threads(report):
    # Twelve threads allocate from malloc (above pymalloc's 512 bytes); report() while they live.
    import threading
    started, done = threading.Barrier(13), threading.Event()
    kept = []

    def work():
        kept.append([bytearray(2048) for _ in range(50)])
        started.wait()
        done.wait()

    for thread in [threading.Thread(target=work) for _ in range(12)]:
        thread.start()
    started.wait()
    report()
    done.set()

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
"""


def run(program: str) -> dict:
    done = subprocess.run([sys.executable, "-c", COUNT_ARENAS + textwrap.dedent(program)], capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(OPERATOR), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


THREADS = """
import json, sys
from fillprob_operator import allocator
applied = allocator.limit_arenas(int(sys.argv[1]) if len(sys.argv) > 1 else {limit})
twelve_allocating_threads(lambda: print(json.dumps({{"applied": applied, "arenas": arenas()}})))
"""


def test_twelve_allocating_threads_share_the_arenas_the_limit_allows():
    glibcs = run(THREADS.format(limit=0))
    limited = run(THREADS.format(limit=2))
    assert glibcs == {"applied": False, "arenas": glibcs["arenas"]} and glibcs["arenas"] >= 4
    # the main arena and one more
    assert limited == {"applied": True, "arenas": 1}


MAIN = """
import json, os
import kopf
from fillprob_operator import __main__ as entry
# kopf's run, as far as arenas go: threads that allocate
kopf.run = lambda **_: twelve_allocating_threads(lambda: print(json.dumps({{"arenas": arenas()}})))
{env}
entry.main()
"""


def test_the_entry_point_limits_the_arenas_before_kopf_starts_a_thread():
    """`python -m fillprob_operator` sets the limit before kopf.run: by default twelve threads
    share one arena beside the main one (set in the startup handler only, the arenas kopf's
    first threads made were there before it)."""
    assert run(MAIN.format(env="")) == {"arenas": 1}
    assert run(MAIN.format(env="os.environ['FILLPROB_MALLOC_ARENAS'] = '1'")) == {"arenas": 0}
    assert run(MAIN.format(env="os.environ['FILLPROB_MALLOC_ARENAS'] = '0'"))["arenas"] >= 4


TRIM = """
import json
from fillprob_operator import allocator
blocks = [bytearray(64 * 1024) for _ in range(3000)]  # 188 MiB in the heap (below mmap's threshold)
pins = blocks[99::100]  # one block in a hundred stays: the freed ones are holes, not the heap's top
before = rss_mib()
del blocks
freed = rss_mib()
gave = allocator.trim() if {trim} else None
print(json.dumps({{"before": before, "freed": freed, "after": rss_mib(), "gave": gave}}))
"""


def test_trim_gives_back_what_free_kept():
    kept = run(TRIM.format(trim=False))
    trimmed = run(TRIM.format(trim=True))
    assert kept["before"] > 180 and kept["after"] > kept["before"] - 30  # free() alone: still resident
    assert trimmed["gave"] is True and trimmed["after"] < trimmed["before"] - 150


def test_a_negative_limit_is_refused():
    with pytest.raises(ValueError, match="arenas: want 0"):
        allocator.limit_arenas(-1)
