"""Pod IPs: one loopback address per pod, 127.1.0.2 .. 127.1.255.254, persisted in the state dir.

Like the host-local CNI plugin, allocation goes round-robin from the last address handed out, so
an address just released (a deleted pod Prometheus may still remember) is not reused at once.
Addresses ending in .0, .1 or .255 are skipped. The whole 127.0.0.0/8 routes to `lo` on Linux, so
a process can bind any of them without configuration.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from pathlib import Path

FIRST = int(ipaddress.IPv4Address("127.1.0.2"))
LAST = int(ipaddress.IPv4Address("127.1.255.254"))


class PoolExhausted(Exception):
    pass


def _usable(value: int) -> bool:
    return value & 0xFF not in (0, 1, 255)


class IPAllocator:
    def __init__(self, path: Path, first: int = FIRST, last: int = LAST) -> None:
        self._path = Path(path)
        self._first, self._last = first, last
        self._lock = threading.Lock()
        self._by_owner: dict[str, str] = {}
        self._last_given = last
        if self._path.exists():
            data = json.loads(self._path.read_text() or "{}")
            self._by_owner = dict(data.get("allocations", {}))
            self._last_given = int(ipaddress.IPv4Address(data.get("last", str(ipaddress.IPv4Address(last)))))

    def get(self, owner: str) -> str | None:
        with self._lock:
            return self._by_owner.get(owner)

    def owners(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_owner)

    def allocate(self, owner: str) -> str:
        """The owner's address; the same one again when it already has one."""
        with self._lock:
            if owner in self._by_owner:
                return self._by_owner[owner]
            taken = set(self._by_owner.values())
            size = self._last - self._first + 1
            for step in range(1, size + 1):
                value = self._first + (self._last_given - self._first + step) % size
                ip = str(ipaddress.IPv4Address(value))
                if _usable(value) and ip not in taken:
                    self._by_owner[owner] = ip
                    self._last_given = value
                    self._save()
                    return ip
            raise PoolExhausted(f"no free pod IP in {ipaddress.IPv4Address(self._first)}..{ipaddress.IPv4Address(self._last)}")

    def release(self, owner: str) -> None:
        with self._lock:
            if self._by_owner.pop(owner, None) is not None:
                self._save()

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last": str(ipaddress.IPv4Address(self._last_given)), "allocations": self._by_owner}, indent=1))
        os.replace(tmp, self._path)
