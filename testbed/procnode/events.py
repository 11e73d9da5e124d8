"""Kubelet-style Events on pods (Pulled, Created, Started, Killing, BackOff, Unhealthy, Failed...).

Repeats of the same (pod, container, reason) within `repeat_after` seconds are dropped so a
failing probe or a crash loop does not flood the API. Failures to post are logged, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping

from .kubeapi import ApiError, Kube
from .status import api_time

log = logging.getLogger("procnode.events")


class Recorder:
    def __init__(self, kube: Kube, node_name: str, repeat_after: float = 30.0) -> None:
        self.kube, self.node_name, self.repeat_after = kube, node_name, repeat_after
        self._last: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def pod(self, pod: Mapping, reason: str, message: str, *, warning: bool = False, container: str | None = None) -> None:
        meta = pod.get("metadata", {})
        key = (meta.get("uid"), container, reason, message.split(":", 1)[0])  # e.g. "Readiness probe failed"
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.repeat_after and reason in ("Unhealthy", "BackOff", "Failed", "FailedMount"):
                return
            self._last[key] = now
        log.info("event %s/%s %s%s: %s", meta.get("namespace"), meta.get("name"), reason, f" [{container}]" if container else "", message)
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": meta.get("namespace"), "name": meta.get("name"),
                    "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}  # fmt: skip
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        stamp = api_time()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": meta.get("namespace")},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.kube.request("POST", f"/api/v1/namespaces/{meta.get('namespace')}/events", body=body, timeout=10)
        except (ApiError, OSError, Exception) as exc:  # noqa: BLE001 - events are best effort
            log.debug("posting event failed: %s", exc)

    def forget(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._last if k[0] == uid]:
                del self._last[key]
