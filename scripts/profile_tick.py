#!/usr/bin/env python3
"""What one steady-state tick costs the operator's process: figures, no verdict (issue 10, point 5).

`PYTHONPATH=operator .venv/bin/python scripts/profile_tick.py [--rollouts 300] [--namespaces 10]
[--interval 2] [--intervals 5] [--daemons-seconds 10] [--top 25] [--no-profile]
[--gc-threshold A,B,C]... [--memory] [--views-ab K]`

The real `Reconciler`, executor, `KubernetesAdapter` (its watch-backed caches filled from the
fake API's objects, as their watch threads would), `LogFollower` (one followed stream per pod,
served by tests/integration/fake_world's `FakeKubelet`), `PrometheusGateway` (one shared query
per interval, split per rollout), the real domain and metrics. Only the API server
(`FakeCluster`) and Prometheus (a canned answer per query, with fresh timestamps: the HTTP and
JSON work of the real client is not in these figures) are stand-ins.

ROLLOUTS rollouts in NAMESPACES namespaces (as `make bench` spreads them), each with a
Deployment (1 replica), one ReplicaSet, one pod that logged its resolution line, three
symbols of metrics, `prometheus.interval` INTERVAL seconds, walked to Shadow Observing through
the real domain (no preflight), then:

1. INTERVALS intervals: at each interval's start all ROLLOUTS ticks at once (as the daemons,
   roughly), CPU (`time.process_time`: every thread) per interval and per tick, and the
   requests the fake API saw (steady state: none).
2. The same intervals under cProfile (main thread only: the executor's threads are not in
   it): the TOP functions by cumulative and by own time.
3. DAEMONS_SECONDS of the real kopf daemon function (`handlers.rollout`) for every rollout,
   each ticking every INTERVAL, with the event-loop lag probe (`loop_lag.measure_lag`): CPU
   per second as a share of one core, per rollout, lag p50/p99/max, and the garbage
   collector's pauses (they stop the loop); again for each `--gc-threshold A,B,C` given.

4. With `--memory`: every allocation traced (tracemalloc) from before the world is built: after
   the intervals, the live memory by the package that allocated it (the operator, kopf, the
   kubernetes client, pydantic, the stand-ins of this script, ...), per rollout, and the
   operator's own top lines. The tracing slows everything: the other figures of such a run are
   not comparable with a run without it.
5. With `--views-ab K`: 2K more intervals, taking turns between what `observe_deployment`
   derived kept from the last tick (as the operator runs) and cleared before the interval
   (derived again from the thawed objects): the median CPU per tick of each.

The machine is shared: compare the figures with each other, within one run.
"""

from __future__ import annotations

import argparse
import tracemalloc
import asyncio
import collections
import cProfile
import gc
import io
import logging
import math
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "tests" / "integration")]

import kopf  # noqa: E402
from fake_world import FakeCluster, FakeKubelet, FakeStopped  # noqa: E402

from fillprob_operator import handlers, loop_lag  # noqa: E402
from fillprob_operator.adapters.clock import SystemClock  # noqa: E402
from fillprob_operator.adapters.kubernetes import Caches, KubernetesAdapter  # noqa: E402
from fillprob_operator.adapters.logs import LogFollower  # noqa: E402
from fillprob_operator.adapters.watches import (  # noqa: E402
    WatchCache, project_deployment, project_job, project_pod, project_replica_set, project_rollout,
)
from fillprob_operator.metrics import OperatorMetrics  # noqa: E402
from fillprob_operator.reconciler import DomainPort  # noqa: E402
from fillprob_operator.settings import Settings  # noqa: E402

RESOLUTION_OK = (
    "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=2500 "
    "configured_bps=2500 effective_bps=2500"
)
SYMBOLS = ("SYM1", "SYM2", "SYM3")
KINDS = {"deployments": ("Deployment", project_deployment), "replica_sets": ("ReplicaSet", project_replica_set),
         "pods": ("Pod", project_pod), "jobs": ("Job", project_job), "rollouts": ("FillProbRollout", project_rollout)}


# -- the world -------------------------------------------------------------------------------


def fields_of(value: object) -> dict:
    """The fieldsV1 tree owning every field of `value`, as the API server writes it in
    managedFields (lists of named objects by `k:{"name":...}`, other lists whole)."""
    if not isinstance(value, dict):
        return {}
    out: dict = {".": {}} if value else {}
    for key, sub in value.items():
        if isinstance(sub, list) and all(isinstance(x, dict) and "name" in x for x in sub) and sub:
            out[f"f:{key}"] = {".": {}, **{f'k:{{"name":"{x["name"]}"}}': fields_of(x) for x in sub}}
        else:
            out[f"f:{key}"] = fields_of(sub)
    return out


def managed(manager: str, fields: dict, at: str, subresource: str = "") -> dict:
    entry = {"manager": manager, "operation": "Update", "apiVersion": "v1", "time": at,
             "fieldsType": "FieldsV1", "fieldsV1": fields}
    return {**entry, "subresource": subresource} if subresource else entry


def deployment(namespace: str, name: str) -> dict:
    env = {
        "GRINDER_FILL_MODEL_DIR": "/tmp/model", "GRINDER_FILL_PROB_EVAL_DIR": "/tmp/eval",
        "GRINDER_ARTIFACT_DIR": "/tmp/artifacts", "GRINDER_FILL_MODEL_ENFORCE": "0",
        "GRINDER_FILL_PROB_MIN_BPS": "2500", "GRINDER_SIM_SYMBOLS": ",".join(SYMBOLS),
    }
    obj = {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "fillprob_rollout": name}},
                "spec": {"containers": [{
                    "name": "grinder", "image": "grinder-sim:local", "command": ["python3", "grinder_sim.py"],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "resources": {"requests": {"cpu": "1m", "memory": "16Mi"}},
                }]},
            },
        },
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }
    # managedFields as the bench's grinders carry them (kubectl applied them; the controller
    # writes the status): the operator reads who set each env entry from them.
    obj["metadata"]["managedFields"] = [
        managed("kubectl-client-side-apply", {"f:metadata": fields_of({"labels": {"app": name}}),
                                              "f:spec": fields_of(obj["spec"])}, "2024-05-01T11:00:00Z"),
        managed("kube-controller-manager", {"f:status": fields_of(obj["status"])}, "2024-05-01T11:00:05Z", "status"),
    ]
    return obj


def rollout(namespace: str, name: str, interval: float) -> dict:
    return {
        "apiVersion": "grinder.io/v1alpha1", "kind": "FillProbRollout",
        "metadata": {"name": name, "namespace": namespace, "generation": 1, "annotations": {}},
        "spec": {
            "deploymentName": name, "containerName": "grinder", "targetPhase": "Shadow",
            "canarySymbols": ["SYM1", "SYM2"], "expandBatches": [["SYM3"]], "safeSymbols": ["SYM1"],
            "minBps": 2500, "observation": {"shadow": "24h", "canary": "24h"},
            "preflight": {"enabled": False}, "prometheus": {"interval": f"{interval:g}s"},
            "gates": {"maxBlockRatio": 0.9, "minOrders": 20}, "progressDeadline": "5m",
        },
    }


class Feed:
    """The caches' watch threads, played synchronously over every namespace: `sync` lists."""

    def __init__(self, cluster: FakeCluster, namespaces: list[str]) -> None:
        self.cluster, self.namespaces = cluster, namespaces
        self.caches = Caches(**{
            attr: WatchCache(kind, source=None, namespaces=tuple(namespaces), project=project)
            for attr, (kind, project) in KINDS.items()
        })

    def sync(self) -> None:
        rv = self.cluster.current_rv()
        by_kind_ns = collections.defaultdict(list)
        for (kind, ns, _), obj in self.cluster.objects.items():
            by_kind_ns[(kind, ns)].append(obj)
        for attr, (kind, _) in KINDS.items():
            for ns in self.namespaces:
                getattr(self.caches, attr).apply_list(ns, by_kind_ns[(kind, ns)], rv)


class CannedPrometheus:
    """Answers a gate query from the pods' canned values, fresh timestamps each time; the
    answer to a query string is built once (the scope is the same interval after interval)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds each query takes (a real Prometheus under load: 0.3-0.5 s)
        self.pods: list[tuple[str, str]] = []
        self._answers: dict[str, list[tuple[dict, float]]] = {}
        self.calls = 0

    def custom_query(self, query: str) -> list[dict]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        now = time.time()
        template = self._answers.get(query)
        if template is None:
            template = self._answers[query] = self._build(query)
        return [{"metric": labels, "value": [now, str(now - 2 if value is None else value)]}
                for labels, value in template]

    def _build(self, query: str) -> list[tuple[dict, float | None]]:
        out: list[tuple[dict, float | None]] = []
        for ns, pod in self.pods:
            labels = {"namespace": ns, "pod": pod, "job": "kubernetes-pods", "instance": f"{pod}:9090"}
            if query.startswith("timestamp(up"):
                out.append((labels, None))
            elif "_enforce_enabled" in query or "_allowlist_enabled" in query:
                out.append((labels, 0.0))
            elif "auto_threshold_bps" in query:
                out.append((labels, 2500.0))
            elif "cb_trips_total" in query:
                out.append((labels, 0.0))
            elif "blocks_total" in query:
                out += [({**labels, "symbol": s}, 0.0) for s in SYMBOLS]
            elif "orders_total" in query:
                out += [({**labels, "symbol": s}, 100.0) for s in SYMBOLS]
        return out


class World:
    def __init__(self, rollouts: int, namespaces: int, interval: float, log_streams: int,
                 prometheus_delay: float = 0.0) -> None:
        self.cluster = FakeCluster()
        self.kubelet = FakeKubelet()
        self.prometheus = CannedPrometheus(prometheus_delay)
        self.interval = interval
        self.namespaces = [f"bench-{i}" for i in range(min(namespaces, rollouts))]
        self.keys = [(self.namespaces[i % len(self.namespaces)], f"grinder-{i:03d}") for i in range(rollouts)]
        for ns, name in self.keys:
            self.cluster.put("Deployment", deployment(ns, name))
            self.cluster.put("FillProbRollout", rollout(ns, name, interval))
        self.feed = Feed(self.cluster, self.namespaces)
        self.feed.sync()
        clock = SystemClock()
        kube = KubernetesAdapter(
            core=self.cluster.core, apps=self.cluster.apps, batch=self.cluster.batch, custom=self.cluster.custom,
            to_dict=lambda obj: obj, executor=None, timeout=5.0, clock=clock, instance="profile",
            logs=LogFollower(lambda ns, pod, container, since: self.kubelet.open(ns, pod, container, since),
                             max_streams=log_streams),
            caches=self.feed.caches,
        )
        self.memo = kopf.Memo()
        handlers.build_runtime(
            self.memo,
            Settings(prometheus_url="http://prometheus.test:9090", metrics_addr="", prometheus_lookback="10s"),
            kube=kube, connect=lambda url: self.prometheus, domain=DomainPort.load(), clock=clock,
            metrics=OperatorMetrics(),
        )

    def roll_out(self, namespace: str, name: str) -> None:
        """The Deployment controller and kubelet after the operator's restart: one RS, one pod."""
        dep = self.cluster.get("Deployment", namespace, name)
        pod_hash = f"{abs(hash(repr(dep['spec']['template']))) % 16**8:08x}"[:8].replace("0", "a")
        labels = {**dep["spec"]["template"]["metadata"]["labels"], "pod-template-hash": pod_hash}
        for key in [k for k, o in self.cluster.objects.items() if k[0] in ("Pod", "ReplicaSet")
                    and k[1] == namespace and o["metadata"]["labels"].get("app") == name]:
            self.cluster.delete(*key)
        rs = self.cluster.put("ReplicaSet", {
            "kind": "ReplicaSet",
            "metadata": {"name": f"{name}-{pod_hash}", "namespace": namespace, "labels": labels,
                         "annotations": {"deployment.kubernetes.io/revision": str(dep["metadata"]["generation"])},
                         "ownerReferences": [{"uid": dep["metadata"]["uid"], "kind": "Deployment"}]},
            # the Deployment's template as the controller copies it (our restart token with it)
            "spec": {"template": {**dep["spec"]["template"],
                                  "metadata": {**dep["spec"]["template"]["metadata"], "labels": labels}}},
        })
        pod = f"{name}-{pod_hash}-x{dep['metadata']['generation']}z"
        self.cluster.put("Pod", {
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "labels": labels,
                         "creationTimestamp": "2024-05-01T12:00:00Z",
                         "ownerReferences": [{"uid": rs["metadata"]["uid"], "kind": "ReplicaSet"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        })
        self.kubelet.write(pod, "starting")
        self.kubelet.write(pod, RESOLUTION_OK)
        dep["status"] = {"observedGeneration": dep["metadata"]["generation"], "replicas": 1,
                         "updatedReplicas": 1, "availableReplicas": 1}
        self.cluster.touch("Deployment", namespace, name)
        self.prometheus.pods = [(ns, p) for (kind, ns, p) in self.cluster.objects if kind == "Pod"]
        self.prometheus._answers.clear()

    async def tick_all(self, cached: bool = True) -> list:
        wakeups = self.memo.wakeups
        return await asyncio.gather(*(
            self.memo.reconciler.tick(ns, name, cached=cached, seen=wakeups.floor(ns, name))
            for ns, name in self.keys
        ))

    async def to_steady_state(self) -> None:
        await self.tick_all(cached=False)  # Shadow, Restarting: the env patched
        for ns, name in self.keys:
            self.roll_out(ns, name)
        self.feed.sync()
        for _ in range(3):
            await next_bucket(self.interval)
            self.feed.sync()
            outcomes = await self.tick_all()
            states = collections.Counter((o.phase, o.state) for o in outcomes)
            if set(states) == {("Shadow", "Observing")}:
                break
        # managedFields as the bench's rollouts carry them: kubectl's (the spec), the operator's
        # status writes (the status subresource's entry: a quarter of a rollout).
        for ns, name in self.keys:
            obj = self.cluster.get("FillProbRollout", ns, name)
            obj["metadata"]["managedFields"] = [
                managed("kubectl-client-side-apply", {"f:spec": fields_of(obj["spec"])}, "2024-05-01T11:00:00Z"),
                managed("fillprob-operator", {"f:status": fields_of(obj.get("status") or {})},
                        "2024-05-01T12:00:00Z", "status"),
            ]
            self.cluster.touch("FillProbRollout", ns, name)
        self.feed.sync()
        print(f"steady state: {dict(states)}")


async def next_bucket(interval: float) -> None:
    """Sleep to just after the next interval bucket starts (the gateway's bucket)."""
    now = time.time()
    await asyncio.sleep((math.floor(now / interval) + 1) * interval - now + 0.01)


# -- the measurements ------------------------------------------------------------------------


async def intervals(world: World, count: int, profiler: cProfile.Profile | None = None) -> list[float]:
    cpu = []
    for _ in range(count):
        await next_bucket(world.interval)
        started = time.process_time()
        if profiler is not None:
            profiler.enable()
        outcomes = await world.tick_all()
        if profiler is not None:
            profiler.disable()
        cpu.append(time.process_time() - started)
        assert all(o.state == "Observing" for o in outcomes), collections.Counter(o.state for o in outcomes)
    return cpu


class GcPauses:
    """The garbage collector's pauses by generation (gc.callbacks): they stop the event loop."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = collections.defaultdict(list)
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def report(self, seconds: float) -> str:
        return "  ".join(
            f"gen{g}: {len(p) / seconds:.1f}/s, max {max(p) * 1000:.0f} ms, {sum(p) / seconds * 100:.1f} % of the time"
            for g, p in sorted(self.pauses.items())) or "none"


async def daemons(world: World, seconds: float) -> tuple[float, list[float], GcPauses]:
    memo, lags = world.memo, []
    stopped = FakeStopped()
    probe = asyncio.get_running_loop().create_task(loop_lag.measure_lag(lags.append))
    tasks = [asyncio.ensure_future(handlers.rollout(namespace=ns, name=name, memo=memo, stopped=stopped,
                                                    uid=f"uid-{ns}-{name}"))
             for ns, name in world.keys]
    await asyncio.sleep(world.interval)  # every daemon's first (direct) tick is behind us
    lags.clear()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    started, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - started, time.monotonic() - wall
    gc.callbacks.remove(pauses)
    stopped.set(None)
    for ns, name in world.keys:
        memo.wakeups.wake(ns, name)
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop_lag.stop(probe)
    return cpu / wall, lags, pauses


PACKAGES = (
    ("operator", "/fillprob_operator/"), ("stand-ins (tests, this script)", "/tests/"),
    ("stand-ins (tests, this script)", "/scripts/"), ("kopf", "/kopf/"), ("kubernetes client", "/kubernetes/"),
    ("pydantic", "/pydantic"), ("prometheus_client", "/prometheus_client/"), ("urllib3", "/urllib3/"),
    ("asyncio", "/asyncio/"), ("threading", "/threading.py"),
)


def package_of(filename: str) -> str:
    return next((name for name, part in PACKAGES if part in filename), "other")


def memory_report(snapshot: tracemalloc.Snapshot, rollouts: int, top: int) -> None:
    """Live traced memory by the package that allocated it, and the operator's top lines."""
    by_package: dict[str, int] = collections.Counter()
    for stat in snapshot.statistics("filename"):
        by_package[package_of(stat.traceback[0].filename)] += stat.size
    total = sum(by_package.values())
    print(f"\n== live memory traced after the intervals: {total / 2**20:.1f} MiB for {rollouts} rollouts "
          f"(RSS is more: the interpreter, modules loaded before tracing, allocator slack)")
    for name, size in sorted(by_package.items(), key=lambda item: -item[1]):
        print(f"  {name:32} {size / 2**20:7.2f} MiB  {size / rollouts / 1024:7.1f} KiB per rollout")
    print(f"\n-- the operator's top {top} lines by live memory")
    ours = [stat for stat in snapshot.statistics("lineno") if package_of(stat.traceback[0].filename) == "operator"]
    for stat in ours[:top]:
        frame = stat.traceback[0]
        where = frame.filename[frame.filename.index("fillprob_operator/"):]
        print(f"  {stat.size / 2**10:9.1f} KiB {stat.count:7d} blocks  {where}:{frame.lineno}")


def rss_mib() -> float:
    """This process's resident set (the stand-ins' objects are in it too: compare runs)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=300)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--daemons-seconds", type=float, default=10.0)
    parser.add_argument("--log-streams", type=int, default=1000,
                        help="LogFollower max_streams (the operator's default is 200)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--prometheus-delay", type=float, default=0.0, metavar="S",
                        help="seconds each Prometheus query takes (the bench's Prometheus: 0.3-0.5 s)")
    parser.add_argument("--gc-threshold", action="append", default=[],
                        help="gc.set_threshold(a,b,c) for one more daemons' run (repeatable), e.g. 700,10,10")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--memory", action="store_true", help="trace allocations: live memory by package")
    parser.add_argument("--views-ab", type=int, default=0, metavar="K",
                        help="K intervals with observe_deployment's derived views kept, K with them cleared, taking turns")
    args = parser.parse_args()
    if args.memory:
        tracemalloc.start(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

    world = World(args.rollouts, args.namespaces, args.interval, args.log_streams, args.prometheus_delay)
    await world.to_steady_state()
    # As the operator does after startup (handlers.startup): the fixtures are no part of its heap.
    gc.collect()
    gc.freeze()
    n = len(world.keys)
    print(f"RSS in steady state: {rss_mib():.0f} MiB, {threading.active_count()} threads")

    before = dict(world.cluster.calls)
    cpu = await intervals(world, args.intervals)
    made = {k: v - before.get(k, 0) for k, v in world.cluster.calls.items() if v - before.get(k, 0)}
    per_tick = [c / n * 1000 for c in cpu]
    print(f"\n== {args.intervals} intervals of {n} ticks at once ({len(world.namespaces)} namespaces, "
          f"python {sys.version.split()[0]})")
    print("CPU per interval (ms): " + " ".join(f"{c * 1000:.0f}" for c in cpu))
    print(f"CPU per tick (ms): median {statistics.median(per_tick):.3f}  min {min(per_tick):.3f}  "
          f"max {max(per_tick):.3f}")
    print(f"  = {statistics.median(per_tick) / args.interval / 10:.4f} % of a core per rollout at a "
          f"{args.interval:g}s interval")
    print(f"fake API requests during them: {made or 'none'}; Prometheus queries: {world.prometheus.calls}")

    if args.memory:
        memory_report(tracemalloc.take_snapshot(), n, args.top)
        tracemalloc.stop()

    if args.views_ab:
        # The same world, intervals taking turns: what observe_deployment derived kept from the
        # last tick (as the operator runs), or cleared before the interval (derived again).
        kube, per_tick = world.memo.reconciler.kube, {"kept": [], "cleared": []}
        for i in range(2 * args.views_ab):
            mode = "kept" if i % 2 else "cleared"
            if mode == "cleared":
                kube._views.clear()
                kube._derivations.clear()
            per_tick[mode] += [c / n * 1000 for c in await intervals(world, 1)]
        print(f"\n== views kept / cleared, {args.views_ab} intervals each, taking turns: CPU per tick (ms) median "
              + " / ".join(f"{statistics.median(v):.3f}" for v in per_tick.values()))

    if not args.no_profile:
        profiler = cProfile.Profile()
        cpu = await intervals(world, args.intervals, profiler)
        print(f"\n== under cProfile (main thread): CPU per tick {statistics.median(cpu) / n * 1000:.3f} ms")
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats(key).print_stats(args.top)
            text = out.getvalue()
            print(f"\n-- top {args.top} by {key} (calls are for {args.intervals * n} ticks)")
            print(text[text.index("   ncalls"):].rstrip())

    default_threshold = ",".join(str(t) for t in gc.get_threshold())
    for threshold in ([default_threshold, *args.gc_threshold] if args.daemons_seconds > 0 else []):
        gc.set_threshold(*(int(t) for t in threshold.split(",")))
        share, lags, pauses = await daemons(world, args.daemons_seconds)
        print(f"\n== {n} kopf daemons (handlers.rollout), {args.daemons_seconds:g}s, interval {args.interval:g}s, "
              f"gc threshold {threshold}")
        print(f"CPU: {share * 100:.1f} % of one core = {share * 100 / n:.4f} % per rollout "
              f"({share * args.interval / n * 1000:.3f} ms per rollout tick)")
        print(f"event-loop lag (ms, {len(lags)} probes): p50 {quantile(lags, 0.5) * 1000:.1f}  "
              f"p99 {quantile(lags, 0.99) * 1000:.1f}  max {max(lags or [float('nan')]) * 1000:.1f}")
        print(f"garbage collector's pauses: {pauses.report(args.daemons_seconds)}")
        print(f"RSS after them: {rss_mib():.0f} MiB, {threading.active_count()} threads")
    gc.set_threshold(*(int(t) for t in default_threshold.split(",")))

    await handlers.cleanup(memo=world.memo)


if __name__ == "__main__":
    asyncio.run(main())
