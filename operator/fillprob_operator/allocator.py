"""glibc's allocator, set for a process whose threads take turns.

glibc gives each thread that allocates its own arena, up to eight per core, and keeps what an
arena once held: the operator's watch and I/O threads (50 and 16 at 100 rollouts in 10
namespaces) held 16 MiB of arenas against 2 MiB at one rollout (docs/performance.md). Its
threads allocate Python objects holding the GIL, one at a time, so separate arenas spare them
no lock wait. And memory a tick freed stays resident in the heap until something trims it.

`limit_arenas` caps the arenas (`mallopt(M_ARENA_MAX)`); it counts for threads that allocate
for the first time afterwards, so it is called before the watches and I/O threads start.
`trim` gives the freed pages back (`malloc_trim(0)`: the heap's top and the free pages inside
every arena). Elsewhere than glibc both do nothing and say so (False).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any

M_ARENA_MAX = -8  # glibc's malloc.h


@lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library if it is glibc (it has `mallopt` and `malloc_trim`), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


def limit_arenas(count: int) -> bool:
    """At most `count` arenas from now on (0: glibc's default, nothing set). True when set."""
    if count < 0:
        raise ValueError(f"arenas: want 0 (glibc's default) or more, got {count}")
    libc = _libc()
    if count == 0 or libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Free pages back to the system. True when glibc gave any back."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
