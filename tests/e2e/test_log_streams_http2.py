"""Pod logs followed over HTTP/2 against the real API server and kubelet (issue 10: the RSS per
followed pod): `Http2LogStreams` + `LogFollower(open_async=...)`, as the operator runs them by
default. Several pods' `follow` streams share one TCP connection, each delivers its lines (a
resolution line, a circuit-breaker line that wakes its rollout), and a stream stopped is closed
on the server's side too while the others go on.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from kubernetes import client
from support import wait_for

from fillprob_operator.adapters.kubernetes import Http2LogStreams
from fillprob_operator.adapters.logs import LogFollower

pytestmark = pytest.mark.e2e

IMAGE = "grinder-sim:local"
OK_LINE = "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only effective_bps=2500"
CB_LINE = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=3 symbol=SYM1"
# Logs a resolution line, a line every 0.2 s, a CB line after 3 s; exits on SIGTERM.
TALKER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    f"print({OK_LINE!r}, flush=True)\n"
    "for i in range(10**6):\n"
    "    print(f'tick {i}', flush=True)\n"
    f"    if i == 15: print({CB_LINE!r}, flush=True)\n"
    "    time.sleep(0.2)\n"
)
PODS = ("talker-a", "talker-b", "talker-c")


@pytest.fixture
def ns(k8s_api) -> Iterator[str]:
    core = client.CoreV1Api(k8s_api)
    name = f"e2e-h2-logs-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for("the default ServiceAccount", lambda: core.read_namespaced_service_account("default", name), timeout=30)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def talker(name: str) -> dict:
    return {"metadata": {"name": name},
            "spec": {"containers": [{"name": "grinder", "image": IMAGE, "command": ["python3", "-c", TALKER],
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}],
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "terminationGracePeriodSeconds": 2}}


def start_talkers(k8s_api: client.ApiClient, ns: str) -> client.CoreV1Api:
    """The PODS, running."""
    core = client.CoreV1Api(k8s_api)
    for pod in PODS:
        core.create_namespaced_pod(ns, talker(pod))
    for pod in PODS:
        wait_for(f"pod {pod} running", lambda p=pod: core.read_namespaced_pod(p, ns).status.phase == "Running",
                 timeout=120)
    return core


def connections_to(host: str, port: int) -> int:
    """This process's established TCP connections to host:port (/proc: its socket inodes)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    want = f"{int.from_bytes(bytes(map(int, host.split('.'))), 'little'):08X}:{port:04X}"
    count = 0
    with open("/proc/self/net/tcp") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if fields[2] == want and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


def test_pod_logs_are_followed_over_one_http2_connection(k8s_api, ns):
    core = start_talkers(k8s_api, ns)
    server = urlsplit(k8s_api.configuration.host)
    host = "127.0.0.1" if server.hostname == "localhost" else server.hostname
    streams = Http2LogStreams(k8s_api, timeout=10)
    versions: list[str] = []

    async def open_recorded(*args):
        response = await streams.open(*args)
        versions.append(response.http_version)
        return response

    woken: list[tuple[str, str]] = []
    follower = LogFollower(open_async=open_recorded, wake=lambda namespace, name: woken.append((namespace, name)))
    pods = [(pod, core.read_namespaced_pod(pod, ns).metadata.uid) for pod in PODS]
    uids = dict(pods)
    base = connections_to(host, server.port)  # the kubernetes client's own, kept alive

    async def scenario() -> None:
        deadline = time.monotonic() + 60
        seen = await follower.observe((ns, "r"), ns, pods, "grinder", timeout=10)
        while not all(seen[uids[p]].circuit_breaker_lines for p in PODS):
            assert time.monotonic() < deadline, f"every pod's CB line, got {seen}"
            await asyncio.sleep(0.2)
            seen = await follower.observe((ns, "r"), ns, pods, "grinder", timeout=10)
        for pod in PODS:
            log = seen[uids[pod]]
            assert (log.resolution_line, log.circuit_breaker_lines[0], log.readable) == (OK_LINE, CB_LINE, True)
        assert (ns, "r") in woken
        assert versions == ["HTTP/2"] * len(PODS), versions
        assert streams.connections == 1
        assert connections_to(host, server.port) == base + 1, "three follow streams, one TCP connection"
        # one pod left: its stream stops (cancelled mid-read), the others go on reading over the
        # same connection (their newest line's timestamp moves on)
        await follower.observe((ns, "r"), ns, pods[1:], "grinder", timeout=10)
        assert [key[1] for key in follower._streams] == [uids[p] for p in PODS[1:]]
        before = {key: stream.cursor.last for key, stream in follower._streams.items()}
        await asyncio.sleep(2)
        after = {key: stream.cursor.last for key, stream in follower._streams.items()}
        assert all(after[key] > before[key] for key in before), (before, after)
        assert connections_to(host, server.port) == base + 1
        await follower.aclose()
        await streams.aclose()
        assert connections_to(host, server.port) == base

    asyncio.run(scenario())


def long_running_log_requests(api: client.ApiClient) -> float:
    """The API server's own gauge of the pods/log requests it is serving now (every client's)."""
    response = api.call_api(*api.param_serialize(method="GET", resource_path="/metrics", auth_settings=["BearerToken"]),
                            _request_timeout=10)
    response.read()
    return sum(float(line.rsplit(" ", 1)[1]) for line in response.data.decode().splitlines()
               if line.startswith("apiserver_longrunning_requests{")
               and 'resource="pods"' in line and 'subresource="log"' in line)


@pytest.mark.serial(reason="reads the API server's cluster-wide gauge of pods/log requests; every other "
                           "test's operator follows logs too")
def test_a_stream_let_go_ends_on_the_api_server_while_the_connection_stays(k8s_api, ns):
    """What the API server feels when a rollout stops following a pod: that one request ends
    there at once (RST_STREAM), the others and their connection go on. httpx/httpcore, tried
    before, left every let-go stream running on the API server until the connection closed."""
    core = start_talkers(k8s_api, ns)
    streams = Http2LogStreams(k8s_api, timeout=10)
    base = long_running_log_requests(k8s_api)

    async def scenario() -> None:
        responses = [await streams.open(ns, pod, "grinder", None) for pod in PODS]
        for response in responses:
            async for _ in response.chunks():
                break
        assert long_running_log_requests(k8s_api) == base + 3
        await responses[0].aclose()
        deadline = time.monotonic() + 10
        while (now := long_running_log_requests(k8s_api)) != base + 2:
            assert time.monotonic() < deadline, f"the let-go stream still served: {now} (base {base})"
            await asyncio.sleep(0.2)
        assert streams.connections == 1
        for response in responses[1:]:
            async for _ in response.chunks():  # still delivering
                break
            await response.aclose()
        deadline = time.monotonic() + 10
        while (now := long_running_log_requests(k8s_api)) != base:
            assert time.monotonic() < deadline, f"streams still served after every one was let go: {now}"
            await asyncio.sleep(0.2)
        assert streams.connections == 1, "letting streams go keeps the connection"
        await streams.aclose()

    asyncio.run(scenario())
