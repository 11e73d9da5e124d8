"""procnode: the pod list+watch loop (fakes for the API and the workers): relist on 410, gone pods, no revival."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode import manager as manager_mod  # noqa: E402
from procnode.ipam import IPAllocator  # noqa: E402
from procnode.kubeapi import Gone  # noqa: E402


def pod(uid: str, rv: str = "1") -> dict:
    return {"metadata": {"uid": uid, "namespace": "ns", "name": f"pod-{uid}", "resourceVersion": rv}, "spec": {}}


class FakeWorker:
    def __init__(self, ctx, pod, on_finished) -> None:
        self.uid, self.namespace, self.name = pod["metadata"]["uid"], "ns", pod["metadata"]["name"]
        self.key, self.updates, self.gone, self.on_finished = f"ns/{self.name}", [pod], False, on_finished

    def start(self) -> None:
        pass

    def update(self, pod) -> None:
        self.updates.append(pod)

    def mark_gone(self) -> None:
        self.gone = True


class FakeKube:
    def __init__(self, lists, watches, stop: threading.Event) -> None:
        self.lists, self.watches, self.stop, self.watch_queries = list(lists), list(watches), stop, []

    def request(self, method, path, query=None, **_):
        assert (method, path, query) == ("GET", "/api/v1/pods", {"fieldSelector": "spec.nodeName=procnode"})
        return self.lists.pop(0)

    def watch(self, path, query, timeout):
        self.watch_queries.append(query)
        if not self.watches:
            self.stop.set()
            return
        for event in self.watches.pop(0):
            if isinstance(event, Exception):
                raise event
            yield event


def test_list_watch_relist_and_gone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(manager_mod, "PodWorker", FakeWorker)
    stop = threading.Event()
    kube = FakeKube(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [pod("a"), pod("b")]},
            {"metadata": {"resourceVersion": "20"}, "items": [pod("a", "15")]},  # b vanished while the watch was broken
        ],
        watches=[
            [{"type": "MODIFIED", "object": pod("a", "11")}, Gone(410, "Expired")],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "25"}}}, {"type": "ADDED", "object": pod("c", "26")},
             {"type": "DELETED", "object": pod("a", "27")}],
        ],
        stop=stop,
    )  # fmt: skip
    ctx = type("Ctx", (), {"node_name": "procnode", "pods_dir": tmp_path / "pods", "state_dir": tmp_path,
                           "ipam": IPAllocator(tmp_path / "ipam.json")})()  # fmt: skip
    pods = manager_mod.PodManager(ctx, kube)
    pods.run(stop)

    assert [q["resourceVersion"] for q in kube.watch_queries] == ["10", "20", "27"]
    workers = {w.uid: w for w in pods.workers()}
    assert set(workers) == {"a", "b", "c"}
    assert [p["metadata"]["resourceVersion"] for p in workers["a"].updates] == ["1", "11", "15"]
    assert workers["b"].gone and workers["a"].gone and not workers["c"].gone
    assert pods.find("ns", "pod-c") is workers["c"]

    workers["a"].on_finished(workers["a"])
    pods.upsert(pod("a", "28"))  # a late event must not start the finished pod again
    assert "a" not in {w.uid for w in pods.workers()}


def test_first_list_cleans_leftover_pod_dirs_and_ips(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(manager_mod, "PodWorker", FakeWorker)
    (tmp_path / "pods" / "old").mkdir(parents=True)
    (tmp_path / "pods" / "old" / "main.log").write_text("x")
    (tmp_path / "pods" / "a").mkdir()
    ipam = IPAllocator(tmp_path / "ipam.json")
    ipam.allocate("old")
    ipam.allocate("a")
    ctx = type("Ctx", (), {"node_name": "procnode", "pods_dir": tmp_path / "pods", "state_dir": tmp_path, "ipam": ipam})()
    manager_mod.PodManager(ctx, kube=None).sync([pod("a")])
    assert not (tmp_path / "pods" / "old").exists() and (tmp_path / "pods" / "a").exists()
    assert (tmp_path / "terminated-logs" / "leftover_old" / "main.log").read_text() == "x"
    assert set(ipam.owners()) == {"a"}
