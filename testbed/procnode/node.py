"""The Node object: registration, status, and the heartbeat Lease in kube-node-lease.

The node reports Ready=True (and no memory/disk/PID pressure) from the first moment, so the node
lifecycle controller never taints it; the Lease is renewed every 10 s and the status (with
lastHeartbeatTime) re-posted every minute, as the kubelet does with node leases on.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from pathlib import Path

from .kubeapi import MERGE_PATCH, STRATEGIC_PATCH, ApiError, Kube
from .status import api_time

log = logging.getLogger("procnode.node")

KUBELET_VERSION = "v1.36.3"
RUNTIME_VERSION = "procnode://0.1.0"
LEASE_NS = "kube-node-lease"
LEASE_SECONDS = 40


def micro_time(secs: float | None = None) -> str:
    secs = time.time() if secs is None else secs
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int(secs % 1 * 1e6):06d}Z"


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class NodeAgent:
    def __init__(self, kube: Kube, name: str, port: int, resources: dict[str, str], host_ip: str = "127.0.0.1") -> None:
        self.kube, self.name, self.port, self.resources, self.host_ip = kube, name, port, resources, host_ip
        self.uid: str | None = None
        self._transitions: dict[str, str] = {}

    def _conditions(self) -> list[dict]:
        now = api_time()
        wanted = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "procnode is posting ready status"),
        ]
        out = []
        for type_, status, reason, message in wanted:
            key = f"{type_}={status}"
            self._transitions.setdefault(key, now)
            out.append({"type": type_, "status": status, "reason": reason, "message": message,
                        "lastHeartbeatTime": now, "lastTransitionTime": self._transitions[key]})  # fmt: skip
        return out

    def status(self) -> dict:
        machine_id = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or "procnode"
        return {
            "capacity": dict(self.resources),
            "allocatable": dict(self.resources),
            "conditions": self._conditions(),
            "addresses": [{"type": "InternalIP", "address": self.host_ip}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": _read("/sys/class/dmi/id/product_uuid") or machine_id,
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": os.uname().release,
                "osImage": _os_image(),
                "containerRuntimeVersion": RUNTIME_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }

    def _labels(self) -> dict:
        arch = _arch()
        return {
            "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch,
        }  # fmt: skip

    def register(self) -> None:
        path = f"/api/v1/nodes/{self.name}"
        existing = self.kube.get_or_none(path)
        if existing is None:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": self.name, "labels": self._labels(),
                             "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
                "spec": {},
                "status": self.status(),
            }  # fmt: skip
            try:
                existing = self.kube.request("POST", "/api/v1/nodes", body=body)
                log.info("registered node %s", self.name)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                existing = self.kube.request("GET", path)
        else:
            for c in (existing.get("status") or {}).get("conditions") or []:
                self._transitions.setdefault(f"{c['type']}={c['status']}", c.get("lastTransitionTime") or api_time())
            self.kube.request("PATCH", path, body={"metadata": {"labels": self._labels()}}, content_type=MERGE_PATCH)
            log.info("node %s already registered: updating it", self.name)
        self.uid = existing["metadata"]["uid"]
        self.post_status()

    def post_status(self) -> None:
        self.kube.request("PATCH", f"/api/v1/nodes/{self.name}/status", body={"status": self.status()}, content_type=STRATEGIC_PATCH)

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_time()}
        try:
            self.kube.request("PATCH", path, body={"spec": spec}, content_type=MERGE_PATCH, timeout=10)
        except ApiError as exc:
            if exc.status != 404:
                raise
            owner = [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}] if self.uid else []
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": LEASE_NS, "ownerReferences": owner}, "spec": spec}  # fmt: skip
            self.kube.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases", body=body, timeout=10)
            log.info("created node lease %s/%s", LEASE_NS, self.name)

    def heartbeat(self, stop: threading.Event, lease_every: float = 10.0, status_every: float = 60.0) -> None:
        next_status = time.monotonic() + status_every
        while not stop.is_set():
            wait = lease_every
            try:
                self.renew_lease()
                if time.monotonic() >= next_status:
                    try:
                        self.post_status()
                    except ApiError as exc:
                        if exc.status != 404:
                            raise
                        log.warning("node %s disappeared: registering again", self.name)
                        self.register()
                    next_status = time.monotonic() + status_every
            except Exception as exc:  # noqa: BLE001 - API down: try again soon
                log.warning("node heartbeat failed: %s", exc)
                wait = 2.0
            stop.wait(wait)
