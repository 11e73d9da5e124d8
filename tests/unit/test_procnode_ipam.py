"""procnode: pod IP allocation (unique loopback addresses, persisted, round-robin)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode.ipam import IPAllocator, PoolExhausted  # noqa: E402


def test_first_address_and_uniqueness(tmp_path: Path) -> None:
    ipam = IPAllocator(tmp_path / "ipam.json")
    ips = [ipam.allocate(f"pod-{i}") for i in range(600)]
    assert ips[0] == "127.1.0.2"
    assert len(set(ips)) == 600
    for ip in ips:
        addr = ipaddress.IPv4Address(ip)
        assert addr in ipaddress.IPv4Network("127.1.0.0/16")
        assert int(addr) & 0xFF not in (0, 1, 255)


def test_same_owner_same_address_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    first = IPAllocator(path)
    a = first.allocate("a")
    b = first.allocate("b")
    assert first.allocate("a") == a
    again = IPAllocator(path)
    assert again.get("a") == a and again.get("b") == b
    assert again.allocate("c") not in (a, b)


def test_released_address_is_not_reused_at_once(tmp_path: Path) -> None:
    ipam = IPAllocator(tmp_path / "ipam.json")
    a = ipam.allocate("a")
    ipam.release("a")
    assert ipam.get("a") is None
    assert ipam.allocate("b") != a
    assert "a" not in IPAllocator(tmp_path / "ipam.json").owners()


def test_pool_wraps_around_and_exhausts(tmp_path: Path) -> None:
    small = IPAllocator(tmp_path / "ipam.json", first=int(ipaddress.IPv4Address("127.1.0.2")), last=int(ipaddress.IPv4Address("127.1.0.4")))
    got = {small.allocate(x) for x in "abc"}
    assert got == {"127.1.0.2", "127.1.0.3", "127.1.0.4"}
    with pytest.raises(PoolExhausted):
        small.allocate("d")
    small.release("b")
    assert small.allocate("d") == small.owners()["d"]
