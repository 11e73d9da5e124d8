"""Ask a DNS server for a name's A records and print them, one per line (stdlib only).

Usage: python3 dnsquery.py SERVER NAME. up.sh uses it to know CoreDNS answers through its
Service (this machine's own resolver is not the cluster's). Exit 1 when there is no answer.
"""

from __future__ import annotations

import random
import socket
import struct
import sys


def query(server: str, name: str, timeout: float = 2.0) -> list[str]:
    ident = random.randrange(1 << 16)
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # recursion desired, 1 question
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = header + qname + struct.pack(">HH", 1, 1)  # A, IN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        reply, _ = sock.recvfrom(4096)
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", reply[:12])
    if rid != ident or flags & 0x000F:
        return []
    pos = 12
    for _ in range(qd):
        pos = _skip_name(reply, pos) + 4
    found = []
    for _ in range(an):
        pos = _skip_name(reply, pos)
        rtype, _, _, length = struct.unpack(">HHIH", reply[pos : pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[pos : pos + 4]))
        pos += length
    return found


def _skip_name(msg: bytes, pos: int) -> int:
    while True:
        size = msg[pos]
        if size == 0:
            return pos + 1
        if size & 0xC0 == 0xC0:  # compression pointer ends the name
            return pos + 2
        pos += 1 + size


def main() -> int:
    server, name = sys.argv[1], sys.argv[2]
    try:
        answers = query(server, name)
    except OSError as exc:
        print(f"no answer from {server}: {exc}", file=sys.stderr)
        return 1
    for address in answers:
        print(address)
    return 0 if answers else 1


if __name__ == "__main__":
    sys.exit(main())
