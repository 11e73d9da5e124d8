"""Pods bound to this node: list + watch (fieldSelector spec.nodeName), one PodWorker per pod.

A watch that expires (410 Gone) or breaks starts over with a fresh list; the list is also redone
every `resync` seconds. A pod missing from a fresh list is gone: its worker kills its processes.
On the first list, pod dirs of pods that no longer exist (a node restart) are cleaned up: their
processes are killed and their IPs released; the others are adopted by their workers.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from .kubeapi import Gone, Kube
from .runtime import kill_leftover
from .worker import NodeContext, PodWorker

log = logging.getLogger("procnode.pods")


class PodManager:
    def __init__(self, ctx: NodeContext, kube: Kube, resync: float = 300.0) -> None:
        self.ctx, self.kube, self.resync = ctx, kube, resync
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._cleaned = False
        self._done: dict[str, None] = {}  # uids whose worker finished: late events must not revive them

    # ------------------------------------------------------------------ lookups (log server)
    def find(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            found = [w for w in self._workers.values() if w.namespace == namespace and w.name == name]
        return found[-1] if found else None

    def workers(self) -> list[PodWorker]:
        with self._lock:
            return list(self._workers.values())

    # ------------------------------------------------------------------ events
    def _finished(self, worker: PodWorker) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
            self._done[worker.uid] = None
            while len(self._done) > 10000:
                del self._done[next(iter(self._done))]

    def upsert(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._done:
                return
            worker = self._workers.get(uid)
            if worker is None:
                worker = PodWorker(self.ctx, pod, self._finished)
                self._workers[uid] = worker
                fresh = True
            else:
                fresh = False
        if fresh:
            log.info("pod %s/%s (uid %s) assigned to this node", worker.namespace, worker.name, uid)
            worker.start()
        else:
            worker.update(pod)

    def gone(self, uid: str) -> None:
        with self._lock:
            worker = self._workers.get(uid)
        if worker is not None:
            worker.mark_gone()

    def sync(self, pods: list[dict]) -> None:
        present = {p["metadata"]["uid"] for p in pods}
        if not self._cleaned:
            self._clean_leftovers(present)
            self._cleaned = True
        for pod in pods:
            self.upsert(pod)
        for worker in self.workers():
            if worker.uid not in present:
                log.info("pod %s (uid %s) no longer exists", worker.key, worker.uid)
                worker.mark_gone()

    def _clean_leftovers(self, present: set[str]) -> None:
        pods_dir = self.ctx.pods_dir
        for pod_dir in sorted(pods_dir.glob("*")) if pods_dir.is_dir() else []:
            if pod_dir.name in present or not pod_dir.is_dir():
                continue
            log.info("leftover pod dir %s (pod no longer exists): killing its processes, removing it", pod_dir)
            for pid_file in pod_dir.glob("*.pid"):
                kill_leftover(pid_file, pod_dir / (pid_file.name[: -len(".pid")] + ".run.json"))
            _archive_logs(pod_dir, self.ctx.state_dir)
            shutil.rmtree(pod_dir, ignore_errors=True)
        for owner in self.ctx.ipam.owners():
            if owner not in present:
                self.ctx.ipam.release(owner)

    # ------------------------------------------------------------------ list + watch
    def run(self, stop: threading.Event) -> None:
        selector = f"spec.nodeName={self.ctx.node_name}"
        rv: str | None = None
        listed_at = 0.0
        while not stop.is_set():
            try:
                if rv is None or time.monotonic() - listed_at > self.resync:
                    data = self.kube.request("GET", "/api/v1/pods", query={"fieldSelector": selector}, timeout=60) or {}
                    rv = data["metadata"]["resourceVersion"]
                    listed_at = time.monotonic()
                    self.sync(data.get("items") or [])
                query = {"fieldSelector": selector, "resourceVersion": rv, "allowWatchBookmarks": True,
                         "timeoutSeconds": int(min(self.resync, 300))}  # fmt: skip
                for event in self.kube.watch("/api/v1/pods", query, timeout=self.resync + 30):
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    kind = event.get("type")
                    if kind in ("ADDED", "MODIFIED"):
                        self.upsert(obj)
                    elif kind == "DELETED":
                        self.gone(obj["metadata"]["uid"])
                    if stop.is_set():
                        return
            except Gone:
                log.info("pod watch expired (410): listing again")
                rv = None
            except Exception as exc:  # noqa: BLE001 - API down, connection reset: list again after a pause
                log.warning("pod list/watch failed: %s; retrying", exc)
                rv = None
                stop.wait(2.0)


def _archive_logs(pod_dir: Path, state_dir: Path) -> None:
    logs = list(pod_dir.glob("*.log"))
    if not logs:
        return
    archive = state_dir / "terminated-logs" / f"leftover_{pod_dir.name}"
    archive.mkdir(parents=True, exist_ok=True)
    for f in logs:
        shutil.move(str(f), archive / f.name)
