"""Stand-ins for the outside world of the integration tier: the Kubernetes API, Prometheus,
the clock and kopf's daemon stopper.

`FakeCluster` is an in-memory Kubernetes API behind the real `KubernetesAdapter`.

It implements the client methods the adapter calls (same names and arguments as the
official client's CoreV1Api / AppsV1Api / BatchV1Api / CustomObjectsApi), raises the same
`ApiException`s (404, 409, 422), and applies the patch kinds the adapter sends
(strategic merge on Deployments, merge patch on status and on the rollout's annotations, JSON
patch on the rollback annotation), so the adapter's code runs for real. `annotation_bytes`
plays the API server's limit on the total size of an object's annotations (422 past it). `roll_out` and `finish_job` play the Deployment and Job
controllers.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import hashlib
import itertools
import queue
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from fillprob_operator.adapters.kubernetes import KubernetesAdapter
from fillprob_operator.adapters.logs import PodLog, scan_line
from promql_reading import in_answer, read_query

GROUP, VERSION, PLURAL = "grinder.io", "v1alpha1", "fillprobrollouts"


def _labels_match(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def apply_strategic_merge(target: dict, patch: dict) -> dict:
    out = copy.deepcopy(target)

    def merge(dst: dict, src: dict) -> None:
        for key, value in src.items():
            if value is None:
                dst.pop(key, None)
            elif key in ("containers", "env") and isinstance(value, list):
                items = dst.setdefault(key, [])
                for item in value:
                    index = next((i for i, x in enumerate(items) if x["name"] == item["name"]), None)
                    if item.get("$patch") == "delete":
                        if index is not None:
                            items.pop(index)
                    elif index is None:
                        items.append({k: v for k, v in item.items() if v is not None})
                    else:
                        merge(items[index], item)
            elif isinstance(value, dict):
                merge(dst.setdefault(key, {}), value)
            else:
                dst[key] = value

    merge(out, patch)
    return out


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.events: list[dict] = []
        self.calls: collections.Counter = collections.Counter()
        self.fail_next: dict[str, ApiException] = {}
        self.annotation_bytes = 256 * 1024
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)
        # Every write as a watch event (rv, kind, type, object), one counter for all kinds as
        # etcd's: `WatchFeed` delivers them to watch-backed caches when a test says so.
        self.watch_log: list[tuple[int, str, str, dict]] = []
        self.core = _Api(self, "core")
        self.apps = _Api(self, "apps")
        self.batch = _Api(self, "batch")
        self.custom = _Api(self, "custom")

    # -- plumbing ------------------------------------------------------------------------

    def adapter(self, clock: Any, caches: Any = None) -> KubernetesAdapter:
        return KubernetesAdapter(
            core=self.core, apps=self.apps, batch=self.batch, custom=self.custom,
            to_dict=copy.deepcopy, executor=None, timeout=5.0, clock=clock, instance="test",
            logs=FakeLogs(self), caches=caches,
        )

    def put(self, kind: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta.setdefault("generation", 1)
        key = (kind, meta.get("namespace", ""), meta["name"])
        meta["resourceVersion"] = str(next(self._rv))
        self.watch_log.append((int(meta["resourceVersion"]), kind, "MODIFIED" if key in self.objects else "ADDED",
                               copy.deepcopy(obj)))
        self.objects[key] = obj
        return obj

    def touch(self, kind: str, namespace: str, name: str) -> None:
        """A write made in place (a controller's status update): a new resourceVersion, an event."""
        obj = self.objects[(kind, namespace, name)]
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.watch_log.append((int(obj["metadata"]["resourceVersion"]), kind, "MODIFIED", copy.deepcopy(obj)))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects.pop((kind, namespace, name))
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.watch_log.append((int(obj["metadata"]["resourceVersion"]), kind, "DELETED", copy.deepcopy(obj)))

    def current_rv(self) -> str:
        return str(max([rv for rv, *_ in self.watch_log] or [0]))

    def get(self, kind: str, namespace: str, name: str) -> dict:
        try:
            return self.objects[(kind, namespace, name)]
        except KeyError:
            raise ApiException(status=404, reason="Not Found") from None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict]:
        return [
            copy.deepcopy(obj) for (k, ns, _), obj in self.objects.items()
            if k == kind and ns == namespace and _labels_match(selector, obj["metadata"].get("labels") or {})
        ]

    def record(self, method: str) -> None:
        self.calls[method] += 1
        if method in self.fail_next:
            raise self.fail_next.pop(method)

    # -- controllers ---------------------------------------------------------------------

    def roll_out(self, namespace: str, name: str, *, log: str, ready: bool = True) -> list[str]:
        """What the Deployment controller and kubelet do after a template change."""
        dep = self.get("Deployment", namespace, name)
        template = dep["spec"]["template"]
        pod_hash = hashlib.sha1(repr(template).encode()).hexdigest()[:8]
        owned = [o for o in self.objects.values()
                 if o.get("kind") == "ReplicaSet" and o["metadata"]["namespace"] == namespace]
        for old in owned:  # old pods go away
            for key in [k for k, o in self.objects.items() if k[0] == "Pod" and
                        any(r["uid"] == old["metadata"]["uid"] for r in o["metadata"].get("ownerReferences", []))]:
                self.delete(*key)
        revision = 1 + max((int(o["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for o in owned), default=0)
        labels = {**template["metadata"]["labels"], "pod-template-hash": pod_hash}
        rs = self.put("ReplicaSet", {
            "kind": "ReplicaSet",
            "metadata": {"name": f"{name}-{pod_hash}", "namespace": namespace, "labels": labels,
                         "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                         "ownerReferences": [{"uid": dep["metadata"]["uid"], "kind": "Deployment"}]},
            # the Deployment's template (annotations and all, our restart token too), as the controller copies it
            "spec": {"replicas": dep["spec"].get("replicas", 1),
                     "template": {**copy.deepcopy(template),
                                  "metadata": {**copy.deepcopy(template["metadata"]), "labels": labels}}},
        })
        pods = []
        for i in range(dep["spec"].get("replicas", 1)):
            pod_name = f"{name}-{pod_hash}-p{revision}{i}"
            self.put("Pod", {
                "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace, "labels": labels,
                             "creationTimestamp": f"2024-05-01T12:00:0{i}Z",
                             "ownerReferences": [{"uid": rs["metadata"]["uid"], "kind": "ReplicaSet"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
            })
            self.logs[(namespace, pod_name)] = log
            pods.append(pod_name)
        replicas = dep["spec"].get("replicas", 1)
        dep["status"] = {"observedGeneration": dep["metadata"]["generation"], "replicas": replicas,
                         "updatedReplicas": replicas, "availableReplicas": replicas if ready else 0}
        self.touch("Deployment", namespace, name)
        return pods

    def finish_job(self, namespace: str, name: str, *, exit_code: int, output: str) -> None:
        job = self.get("Job", namespace, name)
        job["status"] = {"conditions": [{"type": "Complete" if exit_code == 0 else "Failed", "status": "True"}]}
        self.touch("Job", namespace, name)
        pod_name = f"{name}-x1"
        self.put("Pod", {
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace,
                         "labels": {"batch.kubernetes.io/job-name": name},
                         "ownerReferences": [{"uid": job["metadata"]["uid"], "kind": "Job"}]},
            "status": {"containerStatuses": [{"name": "preflight", "state": {"terminated": {"exitCode": exit_code}}}]},
        })
        self.logs[(namespace, pod_name)] = output


class WatchFeed:
    """The caches' side of `FakeCluster.watch_log`, synchronous: `sync` lists (the cache is then
    synced at the current resourceVersion), `deliver` hands over the events written since
    (`upto` of them, to play a watch that lags), `drop` is a watch that broke."""

    KINDS = {"deployments": "Deployment", "replica_sets": "ReplicaSet", "pods": "Pod", "jobs": "Job",
             "rollouts": "FillProbRollout"}

    def __init__(self, cluster: "FakeCluster", namespace: str = "trading") -> None:
        from fillprob_operator.adapters.kubernetes import Caches
        from fillprob_operator.adapters.watches import (
            WatchCache, project_deployment, project_job, project_pod, project_replica_set, project_rollout,
        )

        self.cluster, self.namespace = cluster, namespace
        projections = {"deployments": project_deployment, "replica_sets": project_replica_set,
                       "pods": project_pod, "jobs": project_job, "rollouts": project_rollout}
        self.caches = Caches(**{
            attr: WatchCache(kind, source=None, namespaces=(namespace,), project=projections[attr])
            for attr, kind in self.KINDS.items()
        })
        self.seen = {attr: 0 for attr in self.KINDS}

    def sync(self) -> None:
        rv = self.cluster.current_rv()
        for attr, kind in self.KINDS.items():
            getattr(self.caches, attr).apply_list(
                self.namespace, self.cluster.items(kind, self.namespace), rv)
            self.seen[attr] = len(self.cluster.watch_log)

    def deliver(self, upto: int | None = None) -> None:
        for attr, kind in self.KINDS.items():
            cache = getattr(self.caches, attr)
            pending = self.cluster.watch_log[self.seen[attr]:]
            if upto is not None:
                pending = pending[:upto]
            for rv, event_kind, type_, obj in pending:
                if event_kind == kind and obj["metadata"].get("namespace") == self.namespace:
                    cache.apply_event(self.namespace, {"type": type_, "object": copy.deepcopy(obj)})
                else:  # another kind's write: what a bookmark tells the watch
                    cache.apply_event(self.namespace, {"type": "BOOKMARK",
                                                       "object": {"metadata": {"resourceVersion": str(rv)}}})
            self.seen[attr] += len(pending)

    def drop(self) -> None:
        for cache in self.caches.all():
            cache.mark_down(self.namespace)


class FakeLogs:
    """`LogFollower`'s interface over `FakeCluster.logs`, synchronous: each `observe` sees the
    whole log as it is now (what a follower that has caught up knows), so ticks stay
    deterministic. `fail_next["read_log"]` makes one pod's stream down (missing data)."""

    def __init__(self, cluster: "FakeCluster") -> None:
        self.cluster = cluster
        self.followed: dict[tuple[str, str], set[str]] = {}
        self.wake = None

    def wake_with(self, wake) -> None:
        self.wake = wake

    async def observe(self, owner, namespace, pods, container, *, timeout):
        self.followed[owner] = {name for name, _ in pods}
        seen = {}
        for name, uid in pods:
            try:
                self.cluster.record("read_log")
            except ApiException:
                seen[uid] = PodLog(readable=False)
                continue
            resolution, trips = None, []
            for line in self.cluster.logs.get((namespace, name), "").splitlines():
                startup, trip = scan_line(line)
                resolution = resolution or startup
                trips += [trip] if trip else []
            seen[uid] = PodLog(resolution, tuple(trips), readable=True)
        return seen

    def forget(self, owner) -> None:
        self.followed.pop(owner, None)

    def close(self) -> None:
        self.followed.clear()

    async def aclose(self) -> None:
        self.close()


class _Api:
    """One object serves all four API classes; methods are the official client's names."""

    def __init__(self, cluster: FakeCluster, group: str) -> None:
        self.c = cluster
        self.group = group

    # CustomObjectsApi
    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        self.c.record("get_rollout")
        return copy.deepcopy(self.c.get("FillProbRollout", namespace, name))

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **kw):
        self.c.record("patch_status")
        assert kw.get("_content_type") == "application/merge-patch+json"
        obj = self.c.get("FillProbRollout", namespace, name)
        obj["status"] = apply_merge_patch(obj.get("status") or {}, body["status"])
        self.c.touch("FillProbRollout", namespace, name)
        return copy.deepcopy(obj)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        if kw.get("_content_type") == "application/merge-patch+json":
            self.c.record("merge_rollout")
            assert set(body) == {"metadata"} and set(body["metadata"]) == {"annotations"}, body
            obj = self.c.get("FillProbRollout", namespace, name)
            annotations = apply_merge_patch(obj["metadata"].get("annotations") or {}, body["metadata"]["annotations"])
            if sum(len(k) + len(v) for k, v in annotations.items()) > self.c.annotation_bytes:
                raise ApiException(status=422, reason="metadata.annotations: Too long")
            obj["metadata"]["annotations"] = annotations
            self.c.touch("FillProbRollout", namespace, name)
            return copy.deepcopy(obj)
        self.c.record("patch_rollout")
        assert kw.get("_content_type") == "application/json-patch+json"
        obj = self.c.get("FillProbRollout", namespace, name)
        annotations = dict(obj["metadata"].get("annotations") or {})
        for op in body:
            key = op["path"].removeprefix("/metadata/annotations/").replace("~1", "/").replace("~0", "~")
            if op["op"] == "test" and annotations.get(key) != op["value"]:
                raise ApiException(status=422, reason="test failed")
            if op["op"] == "remove":
                if key not in annotations:
                    raise ApiException(status=422, reason="path not found")
                del annotations[key]
        obj["metadata"]["annotations"] = annotations
        self.c.touch("FillProbRollout", namespace, name)
        return copy.deepcopy(obj)

    # AppsV1Api
    def read_namespaced_deployment(self, name, namespace, **_):
        self.c.record("read_deployment")
        return copy.deepcopy(self.c.get("Deployment", namespace, name))

    def patch_namespaced_deployment(self, name, namespace, body, **kw):
        self.c.record("patch_deployment")
        assert kw.get("_content_type") == "application/strategic-merge-patch+json"
        dep = self.c.get("Deployment", namespace, name)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != dep["metadata"].get("resourceVersion"):
            raise ApiException(status=409, reason="Conflict")  # the API server's precondition
        patched = apply_strategic_merge(dep, body)
        if patched["spec"] != dep["spec"]:
            patched["metadata"]["generation"] = dep["metadata"]["generation"] + 1
        self.c.objects[("Deployment", namespace, name)] = patched
        self.c.touch("Deployment", namespace, name)
        self.c.last_deployment_patch = body
        return copy.deepcopy(patched)

    def list_namespaced_replica_set(self, namespace, label_selector=None, **_):
        self.c.record("list_replica_sets")
        return {"items": self.c.items("ReplicaSet", namespace, label_selector)}

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=None, **_):
        self.c.record("list_pods")
        return {"items": self.c.items("Pod", namespace, label_selector)}

    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None, limit_bytes=None, **_):
        self.c.record("read_log")
        if (namespace, name) not in self.c.logs:
            raise ApiException(status=400, reason="container is waiting to start")
        text = self.c.logs[(namespace, name)]
        if tail_lines is not None:
            text = "\n".join(text.splitlines()[-tail_lines:])
        if limit_bytes is not None:
            text = text[:limit_bytes]
        return text

    def create_namespaced_event(self, namespace, body, **_):
        self.c.record("create_event")
        self.c.events.append(copy.deepcopy(body))
        return body

    # BatchV1Api
    def read_namespaced_job(self, name, namespace, **_):
        self.c.record("read_job")
        return copy.deepcopy(self.c.get("Job", namespace, name))

    def create_namespaced_job(self, namespace, body, **_):
        self.c.record("create_job")
        if ("Job", namespace, body["metadata"]["name"]) in self.c.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        return copy.deepcopy(self.c.put("Job", {**copy.deepcopy(body), "kind": "Job", "status": {}}))


T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
SECOND = 1_000_000_000


def stamp(nanos: int) -> str:
    """The kubelet's RFC3339Nano with 9 digits."""
    whole = datetime.fromtimestamp(nanos // SECOND, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{nanos % SECOND:09d}Z"


END, DROP = object(), object()


class FakeResponse:
    """A `follow` response: the chunks queued so far, then it blocks for more until ended,
    dropped (a broken connection) or closed (from another thread, as `interrupt` does)."""

    def __init__(self) -> None:
        self.chunks: queue.Queue = queue.Queue()
        self.closed = threading.Event()

    def stream(self, amt=None, decode_content=False):
        while True:
            item = self.chunks.get()
            if item is END or self.closed.is_set():
                return
            if item is DROP:
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            yield item

    def close(self) -> None:
        self.closed.set()
        self.chunks.put(END)


class FakeKubelet:
    """Pod logs (by pod name) with timestamps, a quarter second apart; `open` answers as
    `open_log_stream` does against the API server: every line at or after `sinceTime` (whole
    seconds), then what is written later, or raises what `refuse[pod]` says."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logs: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
        self.live: dict[str, list[FakeResponse]] = collections.defaultdict(list)
        self.refuse: dict[str, BaseException] = {}
        self.opens: list[tuple[str, str | None]] = []
        self.clock = itertools.count(int(T0.timestamp()) * SECOND, SECOND // 4)

    def write(self, pod: str, text: str) -> None:
        with self.lock:
            at = next(self.clock)
            line = f"{stamp(at)} {text}\n"
            self.logs[pod].append((at, line))
            for response in self.live[pod]:
                response.chunks.put(line.encode())

    def open(self, namespace: str, pod: str, container: str, since: str | None) -> FakeResponse:
        with self.lock:
            self.opens.append((pod, since))
            if pod in self.refuse:
                raise self.refuse[pod]
            response = FakeResponse()
            start = None if since is None else int(
                datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()) * SECOND
            for at, line in self.logs[pod]:
                if start is None or at >= start:
                    response.chunks.put(line.encode())
            self.live[pod].append(response)
            return response

    def drop(self, pod: str) -> None:
        with self.lock:
            for response in self.live.pop(pod, []):
                response.chunks.put(DROP)

    def streams_open(self, pod: str) -> int:
        with self.lock:
            return sum(not r.closed.is_set() for r in self.live[pod])


class FakeClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class FakePrometheus:
    """A `PrometheusConnect` stand-in: `pods[(ns, pod)][query] = value or {symbol: value}`
    (the query without its label matchers); each pod also has `timestamp(up)`, two seconds
    before now, unless `up` is False (a pod that is gone). A series is in the answer when the
    query's matchers match it, as Prometheus would. `down` = unreachable; `answering` cleared =
    every query waits (a Prometheus that is slow to answer) until it is set again."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.down = False
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: collections.Counter = collections.Counter()
        self.answering = threading.Event()
        self.answering.set()

    def custom_query(self, query: str) -> list[dict[str, Any]]:
        base, arms = read_query(query)
        self.calls[base] += 1
        assert self.answering.wait(30), "the test never let the fake Prometheus answer"
        if self.down:
            raise ConnectionError("connection refused")
        now = self.clock.now().timestamp()
        out = []
        for (ns, pod), values in self.pods.items():
            labels = {"namespace": ns, "pod": pod}
            if base == "timestamp(up)" and values.get("up", True):
                out.append({"metric": labels, "value": [now, str(now - 2)]})
            value = values.get(base)
            if isinstance(value, dict):
                out += [{"metric": {**labels, "symbol": sym}, "value": [now, str(v)]} for sym, v in value.items()]
            elif value is not None:
                out.append({"metric": labels, "value": [now, str(value)]})
        return [series for series in out if in_answer(arms, series["metric"])]


class FakeStopped:
    """kopf's `stopped` flag as an async daemon sees it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = None

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self, reason) -> None:
        self.reason = reason
        self._event.set()

    async def _wait(self, timeout):
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self

    def wait(self, timeout=None):
        return self._wait(timeout)


async def until(predicate, deadline: float = 5.0) -> None:
    """Poll with a deadline (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not predicate():
        assert loop.time() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


NS, NAME = "trading", "grinder"


def rollout_body(**spec: Any) -> dict:
    return {
        "apiVersion": "grinder.io/v1alpha1",
        "kind": "FillProbRollout",
        "metadata": {"name": NAME, "namespace": NS, "generation": 1, "annotations": {}},
        "spec": {"deploymentName": "grinder", "targetPhase": "Canary", "canarySymbols": ["SYM1"], **spec},
    }


def deployment_body() -> dict:
    """runbook 32's starting state (0.3), plus an env entry that is none of ours."""
    env = {
        "GRINDER_FILL_MODEL_DIR": "/tmp/model", "GRINDER_FILL_PROB_EVAL_DIR": "/tmp/eval",
        "GRINDER_ARTIFACT_DIR": "/tmp/artifacts", "GRINDER_FILL_MODEL_ENFORCE": "0",
        "GRINDER_FILL_PROB_MIN_BPS": "2500", "UNRELATED": "keep-me",
    }
    return {
        "kind": "Deployment",
        "metadata": {"name": "grinder", "namespace": NS, "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "grinder"}},
            "template": {
                "metadata": {"labels": {"app": "grinder"}},
                "spec": {"containers": [{
                    "name": "grinder", "image": "grinder-sim:local", "command": ["python3", "grinder_sim.py"],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }]},
            },
        },
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
    }


def env_of(cluster: FakeCluster) -> dict:
    container = cluster.get("Deployment", NS, "grinder")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}
