"""Probes: parsing a probe spec (pure), running one probe, and the per-run probe loops.

httpGet goes to the pod IP (or `host`) on the container's port (a number or a named port of the
container); 200 <= status < 400 is success, as for the kubelet. exec runs the command (no `$(VAR)`
expansion, like the kubelet) in the image folder with the container's env; exit 0 is success.
tcpSocket succeeds when a connection opens. grpc is not supported (always a failure, said so).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

USER_AGENT = "kube-probe/1.36"


@dataclass(frozen=True)
class ProbeSpec:
    action: str  # httpGet | exec | tcpSocket | grpc
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace: int | None = None
    command: tuple[str, ...] = ()
    host: str = ""
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class ProbeError(ValueError):
    pass


def resolve_port(port: int | str | None, container: Mapping) -> int:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ProbeError(f"port {port!r} is not a named port of container {container.get('name')!r}")


def parse_probe(probe: Mapping, container: Mapping, pod_ip: str) -> ProbeSpec:
    common = dict(
        initial_delay=probe.get("initialDelaySeconds") or 0,
        period=probe.get("periodSeconds") or 10,
        timeout=probe.get("timeoutSeconds") or 1,
        success_threshold=probe.get("successThreshold") or 1,
        failure_threshold=probe.get("failureThreshold") or 3,
        termination_grace=probe.get("terminationGracePeriodSeconds"),
    )
    if "httpGet" in probe:
        h = probe["httpGet"]
        path = h.get("path") or "/"
        return ProbeSpec(
            "httpGet",
            host=h.get("host") or pod_ip,
            port=resolve_port(h.get("port"), container),
            path=path if path.startswith("/") else "/" + path,
            scheme=(h.get("scheme") or "HTTP").upper(),
            headers=tuple((x["name"], x.get("value", "")) for x in h.get("httpHeaders") or []),
            **common,
        )
    if "exec" in probe:
        return ProbeSpec("exec", command=tuple(probe["exec"].get("command") or []), **common)
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        return ProbeSpec("tcpSocket", host=t.get("host") or pod_ip, port=resolve_port(t.get("port"), container), **common)
    if "grpc" in probe:
        return ProbeSpec("grpc", host=pod_ip, port=int(probe["grpc"].get("port", 0)), **common)
    raise ProbeError(f"probe has no handler: {sorted(probe)}")


def run_probe(spec: ProbeSpec, env: Mapping[str, str], cwd: str) -> tuple[bool, str]:
    """One probe attempt: (success, message)."""
    try:
        if spec.action == "httpGet":
            return _http(spec)
        if spec.action == "exec":
            if not spec.command:
                return False, "exec probe has no command"
            done = subprocess.run(
                list(spec.command), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=spec.timeout, start_new_session=True,
            )  # fmt: skip
            out = (done.stdout + done.stderr).decode("utf-8", "replace").strip()[:1024]
            return done.returncode == 0, out or f"exit code {done.returncode}"
        if spec.action == "tcpSocket":
            with socket.create_connection((spec.host, spec.port), timeout=spec.timeout):
                return True, ""
        return False, f"{spec.action} probes are not supported by procnode"
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {spec.timeout}s"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{spec.action} {spec.host}:{spec.port}: {exc}"


def _http(spec: ProbeSpec) -> tuple[bool, str]:
    if spec.scheme == "HTTPS":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            spec.host, spec.port, timeout=spec.timeout, context=ssl._create_unverified_context()  # noqa: S323 (kubelet does not verify)
        )
    else:
        conn = http.client.HTTPConnection(spec.host, spec.port, timeout=spec.timeout)
    try:
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        headers.update(dict(spec.headers))
        conn.request("GET", spec.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read(10 * 1024)
        if 200 <= resp.status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {resp.status} {body[:200].decode('utf-8', 'replace')}".strip()
    finally:
        conn.close()


class Health:
    """Probe results of one container run; read by the pod worker."""

    def __init__(self, has_startup: bool, has_readiness: bool) -> None:
        self.stop = threading.Event()
        self.started = threading.Event()
        if not has_startup:
            self.started.set()
        self.has_readiness = has_readiness
        self.ready = False
        self.failure: str | None = None  # liveness or startup failed: the container must be killed
        self.failure_grace: int | None = None


Prober = Callable[[ProbeSpec], "tuple[bool, str]"]
Notify = Callable[[str, str], None]  # (event reason, message): Unhealthy events; "" wakes only


def probe_loop(kind: str, spec: ProbeSpec, health: Health, prober: Prober, notify: Notify) -> None:
    """Run one probe (startup | readiness | liveness) until the run stops, kubelet-style."""
    if kind != "startup":
        while not health.started.wait(0.5):
            if health.stop.is_set():
                return
    if health.stop.wait(spec.initial_delay):
        return
    successes = failures = 0
    label = {"startup": "Startup", "readiness": "Readiness", "liveness": "Liveness"}[kind]
    while not health.stop.is_set():
        ok, message = prober(spec)
        if health.stop.is_set():
            return
        successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
        if not ok:
            notify("Unhealthy", f"{label} probe failed: {message}")
        if kind == "readiness":
            if ok and not health.ready and successes >= spec.success_threshold:
                health.ready = True
                notify("", "")
            elif not ok and health.ready and failures >= spec.failure_threshold:
                health.ready = False
                notify("", "")
        elif kind == "startup":
            if ok:
                health.started.set()
                notify("", "")
                return
            if failures >= spec.failure_threshold:
                health.failure, health.failure_grace = f"Startup probe failed: {message}", spec.termination_grace
                notify("", "")
                return
        elif kind == "liveness" and not ok and failures >= spec.failure_threshold:
            health.failure, health.failure_grace = f"Liveness probe failed: {message}", spec.termination_grace
            notify("", "")
            return
        health.stop.wait(spec.period)
