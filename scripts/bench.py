#!/usr/bin/env python3
"""`make bench`: the operator at N real rollouts on the testbed. Figures, no verdict.

`.venv/bin/python scripts/bench.py [--sizes 1,10,100,300] [--interval 2s] [--window 60]
[--probes 10] [--seed S] [--sim lite|python] [--ramp 25] [--nice N]` (the testbed up: `make testbed-up`; run alone,
nothing else on it).

The grinders run `--sim lite` (the default: grinder-lite:local, sim/grinder-lite, a static Go
binary with the Python simulator's env, log lines, metrics and faults; 300 of them fit on this
machine) or `--sim python` (grinder-sim:local, sim/grinder/grinder_sim.py; past about 100 they
saturate 2 cores).

For each N, in namespaces of its own (up to 10, rollouts spread evenly):
1. N grinder Deployments (1 replica, the simulator at 1 order/s per symbol, its breaker
   unable to trip by block rate), then the operator (`python -m fillprob_operator`, one process,
   watching those namespaces, as a user runs it with `make run`), then N FillProbRollouts with
   target Shadow, no preflight Job, a 24h window, `prometheus.interval` INTERVAL: every
   rollout guarding, nothing changing (steady state). The rollouts are created RAMP at a time,
   the next batch when these are Shadow Observing (their grinders restarted).
2. Once all are Shadow Observing with their metrics: WINDOW seconds measured from the outside
   (/proc: CPU, the event loop's thread apart from the others, RSS, RSS by kind from smaps)
   and from the operator's own /metrics (Kubernetes requests it sent, its watches and log
   streams included; Prometheus queries and samples; event-loop lag).
3. Detection, with the N rollouts still there: PROBES more rollouts walked to Canary
   (10 orders/s per symbol), and one fault each at a random moment within 2 intervals:
   half a circuit-breaker trip (`POST /sim/faults {"cbTrip": true}`: one log line and the
   counter; Canary -> R1), half every enforced order blocked (`{"blockAll": true}`: only
   Prometheus sees it, the "all orders blocked" gate; Canary -> R2). Timed from the fault
   (the POST's answer) to the Deployment's env patched (seen by a watch). For the
   Prometheus-only no-go also from the first instant Prometheus's data shows it (the gate's
   ratio over the operator's lookback, asked of Prometheus afterwards at 0.1 s steps): before
   that, no operator could know.

Then one table, and the slope per rollout between the smallest and largest N. The machine is
shared (2 cores, the N grinders and Prometheus beside the operator): compare figures with each
other in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
GROUP, VERSION, PLURAL = "grinder.io", "v1alpha1", "fillprobrollouts"
LOOKBACK = "10s"
SIM_IMAGES = {"lite": "grinder-lite:local", "python": "grinder-sim:local"}
MAX_NAMESPACES = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(what: str, probe, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def seconds(duration: str) -> float:
    return float(duration[:-1]) * {"s": 1, "m": 60}[duration[-1]]


# --- the world ----------------------------------------------------------------------------
class World:
    def __init__(self, run: str, image: str) -> None:
        config.load_kube_config()
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.run = run
        self.image = image  # the grinders' simulator (--sim)
        # The CRD as a user installs it (kubectl apply -f crds/), and established before use.
        subprocess.run(["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds")],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["kubectl", "wait", "--for=condition=Established", "--timeout=60s",
                        f"crd/{PLURAL}.{GROUP}"], check=True, stdout=subprocess.DEVNULL)

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name, "labels": {"fillprob-bench": self.run}}})
        return name

    def grinder(self, namespace: str, name: str, orders_per_sec: float) -> None:
        body = yaml.safe_load((EXAMPLES / "grinder-deployment.yaml").read_text())
        body["metadata"].update(name=name, namespace=namespace)
        body["spec"]["replicas"] = 1
        labels = {"app": name, "fillprob_rollout": name}
        body["spec"]["selector"] = {"matchLabels": {"app": name}}
        body["spec"]["template"]["metadata"]["labels"] = labels
        container = body["spec"]["template"]["spec"]["containers"][0]
        container["image"] = self.image
        container["env"] += [
            {"name": "GRINDER_SIM_ORDERS_PER_SEC", "value": str(orders_per_sec)},
            {"name": "GRINDER_SIM_SYMBOLS", "value": "SYM1,SYM2,SYM3"},
            # Only a cbTrip fault trips the breaker: blockAll stays a Prometheus-only no-go.
            {"name": "GRINDER_SIM_CB_BLOCK_RATE", "value": "1.0"},
        ]
        # Many grinders on one small node: ask for little, so the scheduler packs them.
        container["resources"] = {"requests": {"cpu": "1m", "memory": "16Mi"}}
        # The example probes readiness every 2 s with a 1 s timeout: 150 probes a second from
        # the kubelet at N=300, which on this 2-core node missed their timeouts (the kubelet's
        # housekeeping took up to 17 s) and kept a quarter of the pods unready for 10 minutes.
        # The bench measures the operator; the probe only gates the rollout's availability.
        probe = container.get("readinessProbe")
        if probe:
            probe.update(periodSeconds=10, timeoutSeconds=5)
        self.apps.create_namespaced_deployment(namespace, body)

    def rollout(self, namespace: str, name: str, target: str, interval: str) -> None:
        spec = {
            "deploymentName": name,
            "containerName": "grinder",
            "targetPhase": target,
            "canarySymbols": ["SYM1", "SYM2"],
            "expandBatches": [["SYM3"]],
            "safeSymbols": ["SYM1"],
            "minBps": 2500,
            "observation": {"shadow": "24h" if target == "Shadow" else "5s", "canary": "24h"},
            "preflight": {"enabled": False},
            "prometheus": {"interval": interval},
            "gates": {"maxBlockRatio": 0.9, "minOrders": 20},
            "progressDeadline": "5m",
        }
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FillProbRollout",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def available(self, namespaces: list[str], want: int) -> int:
        n = 0
        for ns in namespaces:
            for d in self.apps.list_namespaced_deployment(ns).items:
                s = d.status
                if (s.observed_generation == d.metadata.generation and (s.updated_replicas or 0) == 1
                        and (s.available_replicas or 0) == 1 and (s.replicas or 0) == 1):
                    n += 1
        return n >= want and n

    def observing(self, namespaces: list[str], step: str, want: int) -> int:
        n = 0
        for ns in namespaces:
            for r in self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
                st = r.get("status") or {}
                if (st.get("state") == "Observing" and st.get("step") == step and any(
                        c["type"] == "MetricsAvailable" and c["status"] == "True" for c in st.get("conditions", []))):
                    n += 1
        return n >= want and n

    def delete_run(self, namespaces: list[str]) -> None:
        for ns in namespaces:
            try:
                self.core.delete_namespace(ns)
            except client.ApiException:
                pass

        def gone() -> bool:
            left = [ns.metadata.name for ns in self.core.list_namespace(
                label_selector=f"fillprob-bench={self.run}").items]
            return not left

        wait_for("the bench namespaces deleted", gone, 900, every=3)


# --- the operator ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARENA_ALIGN = 64 << 20  # glibc's thread arenas: heaps of HEAP_MAX_SIZE, aligned to it (64-bit)


def rss_by_kind(pid: int) -> dict[str, float]:
    """Where the process's RSS is, in MiB, from /proc/<pid>/smaps: `files` (code and data of
    mapped files), `main_heap` (glibc's main arena, [heap]), `thread_arenas` (glibc's other
    arenas: anonymous mappings aligned to 64 MiB), `thread_stacks` (anonymous mappings right
    after a guard page), `other_anon` (pymalloc's arenas, large blocks, SSL buffers)."""
    out = dict.fromkeys(("files", "main_heap", "thread_arenas", "thread_stacks", "other_anon"), 0.0)
    previous_guard_end = None
    start = end = 0
    kind = "other_anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            path = head[5] if len(head) > 5 else ""
            if path == "[heap]":
                kind = "main_heap"
            elif path and not path.startswith("["):
                kind = "files"
            elif path:
                kind = "other_anon"  # [stack], [vdso], ...
            elif start % ARENA_ALIGN == 0:
                kind = "thread_arenas"
            elif previous_guard_end == start and "rw" in head[1]:
                kind = "thread_stacks"
            else:
                kind = "other_anon"
            # A no-access anonymous page or more: a thread stack's guard (or an arena's reserve).
            previous_guard_end = end if head[1].startswith("---") and not path else None
        elif head[0] == "Rss:":
            out[kind] += int(head[1]) / 1024
    return {key: round(value, 1) for key, value in out.items()}


class Operator:
    def __init__(self, namespaces: list[str], log_path: Path, pods: int, nice: int = 0) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.update({
            "FILLPROB_NAMESPACES": ",".join(namespaces),
            "FILLPROB_METRICS_ADDR": f"127.0.0.1:{self.port}",
            "FILLPROB_PROMETHEUS_URL": os.environ["PROMETHEUS_URL"],
            "FILLPROB_PROMETHEUS_LOOKBACK": LOOKBACK,
            "FILLPROB_WEBHOOK_ADDR": "off",
            # One followed log per pod (a thread each); past the bound a pod is missing data.
            "FILLPROB_LOG_STREAMS": str(max(200, pods + 20)),
            "PYTHONUNBUFFERED": "1",
        })
        self.log = open(log_path, "ab")  # noqa: SIM115 - the child's for its lifetime
        # --nice: the operator's scheduling priority (its threads inherit it), as a CPU request of
        # its own would give it on a node it shares; 0 (the default) leaves it as it is.
        self.proc = subprocess.Popen([sys.executable, "-m", "fillprob_operator"], cwd=REPO, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)
        if nice:
            # Where the kernel groups by session (kernel.sched_autogroup_enabled, the testbed's
            # node: the operator's session is one entity beside each daemon's session and the
            # pods' cgroup), a thread's niceness weighs only inside its group: the group's own
            # niceness is what a CPU request would set. Without autogroups there is no file.
            try:
                Path(f"/proc/{self.proc.pid}/autogroup").write_text(str(nice))
            except OSError as exc:
                log(f"operator niceness: the session's autogroup not set ({exc}); its threads' is")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def cpu_by_thread(self) -> dict[int, float]:
        """CPU seconds by thread id, of the threads alive now (the loop's thread is the pid's)."""
        out = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, IndexError, ValueError):
                pass
        return out

    def run_queue_seconds(self) -> float:
        """Seconds the operator's threads waited for a CPU, runnable (schedstat's second field,
        summed over its threads alive now): how starved the machine left it."""
        waited = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                waited += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
        return waited / 1e9

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_by_kind(self) -> dict[str, float]:
        return rss_by_kind(self.proc.pid)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:  # noqa: S310
            text = r.read().decode()
        out: dict[tuple[str, tuple], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
            if m:
                labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or "")))
                out[(m.group(1), labels)] = float(m.group(4))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def total(snapshot: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in snapshot.items()
               if n == name and all((k, val) in labels for k, val in match.items()))


def lag_quantiles(before: dict, after: dict, qs=(0.5, 0.99),
                  histogram: str = "fillprob_rollout_event_loop_lag_seconds", **match: str) -> list[float]:
    """Quantiles of a histogram (the event loop's lag unless told) over the window, from its
    buckets (linear inside a bucket, as histogram_quantile does); `match`: its other labels."""
    name = f"{histogram}_bucket"
    buckets = sorted(
        (float(dict(labels)["le"]), after[(n, labels)] - before.get((n, labels), 0.0))
        for (n, labels) in after if n == name and all((k, v) in labels for k, v in match.items())
    )
    count = buckets[-1][1] if buckets else 0
    out = []
    for q in qs:
        if not count:
            out.append(float("nan"))
            continue
        rank, lower, below = q * count, 0.0, 0.0
        for le, cum in buckets:
            if cum >= rank:
                if le == float("inf"):
                    out.append(lower)
                else:
                    out.append(lower + (le - lower) * (rank - below) / max(cum - below, 1e-9))
                break
            lower, below = le, cum
    return out


# --- detection ------------------------------------------------------------------------------
class EnvWatch:
    """When each probe Deployment's container env last changed, as a watch delivers it."""

    def __init__(self, world: World, namespace: str) -> None:
        self.changed: dict[str, list[tuple[float, dict]]] = {}
        self.world, self.namespace = world, namespace
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.world.apps.list_namespaced_deployment, self.namespace, timeout_seconds=60):
                    at = time.time()
                    d = ev["object"]
                    env = {e.name: e.value for e in d.spec.template.spec.containers[0].env or []}
                    seen = self.changed.setdefault(d.metadata.name, [])
                    if not seen or seen[-1][1] != env:
                        seen.append((at, env))
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a dropped watch is re-opened
                time.sleep(0.5)

    def patched_after(self, name: str, t: float) -> float | None:
        for at, _ in self.changed.get(name, []):
            if at > t:
                return at
        return None

    def stop(self) -> None:
        self._stop.set()


def pod_ip(world: World, namespace: str, name: str) -> str:
    pods = world.core.list_namespaced_pod(namespace, label_selector=f"app={name}").items
    ready = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"
             and p.status.pod_ip]
    return ready[0].status.pod_ip


def post_fault(ip: str, fault: dict) -> float:
    req = urllib.request.Request(f"http://{ip}:9090/sim/faults", data=json.dumps(fault).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - a pod IP on the testbed
        r.read()
    return time.time()


def evidence_time(namespace: str, name: str, start: float, end: float) -> float | None:
    """The first instant at which Prometheus's data shows the "all orders blocked" no-go for
    this probe: a canary symbol whose blocks/orders over the lookback reach 0.9 with at least
    20 orders (the gate's rule, domain/metric_gates.py), at 0.1 s steps."""
    scope = f'namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+",symbol=~"SYM1|SYM2"'
    expr = (f"(sum by (symbol) (increase(grinder_router_fill_prob_blocks_total{{{scope}}}[{LOOKBACK}]))"
            f" / sum by (symbol) (increase(grinder_router_orders_total{{{scope}}}[{LOOKBACK}])) >= 0.9)"
            f" and on (symbol) sum by (symbol) (increase(grinder_router_orders_total{{{scope}}}[{LOOKBACK}])) >= 20")
    q = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "0.1"})
    with urllib.request.urlopen(f"{os.environ['PROMETHEUS_URL']}/api/v1/query_range?{q}", timeout=30) as r:  # noqa: S310
        data = json.loads(r.read())["data"]["result"]
    firsts = [float(series["values"][0][0]) for series in data if series["values"]]
    return min(firsts) if firsts else None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


# --- one size ---------------------------------------------------------------------------------
def run_size(world: World, n: int, args, rng: random.Random, logs: Path) -> dict:
    tag = f"b{world.run}-{n}"
    k = min(n, MAX_NAMESPACES)
    namespaces = [world.namespace(f"{tag}-{j}") for j in range(k)]
    probe_ns = world.namespace(f"{tag}-probe")
    every = [*namespaces, probe_ns]
    names = [(namespaces[i % k], f"grinder-{i:03d}") for i in range(n)]
    op = None
    try:
        log(f"N={n}: {n} grinders in {k} namespaces")
        for ns, name in names:
            world.grinder(ns, name, orders_per_sec=1)
        # Pods start one after the other on one node: the waits grow with N.
        wait_for(f"{n} grinders available", lambda: world.available(namespaces, n), 300 + 4 * n, every=3)
        op = Operator(every, logs / f"operator-{n}.log", pods=n + args.probes, nice=args.nice)
        wait_for("the operator's /metrics", lambda: _safe(op.metrics), 60)
        t0 = time.monotonic()
        # In batches of RAMP: each rollout restarts its grinder once, and 300 restarts at once
        # are more than this one node's kubelet and containerd can do within the rollouts'
        # progressDeadline (they then halt RestartTimedOut, as they must).
        for start in range(0, n, args.ramp):
            batch = names[start:start + args.ramp]
            for ns, name in batch:
                world.rollout(ns, name, "Shadow", args.interval)
            done = start + len(batch)
            wait_for(f"{done} of {n} rollouts Shadow Observing", lambda done=done: world.observing(
                namespaces, "Shadow", done), 300 + 6 * len(batch), every=3)
        # Steady state: the last status writes are done, and every watch has had a bookmark since
        # (the API server sends one a minute): only then can a quiet cache vouch for itself.
        log(f"N={n}: all Shadow Observing after {time.monotonic() - t0:.0f}s; settling {args.settle:.0f}s")
        time.sleep(args.settle)

        m0, c0, w0, q0, th0 = op.metrics(), op.cpu_seconds(), time.monotonic(), op.run_queue_seconds(), op.cpu_by_thread()
        time.sleep(args.window)
        m1, c1, w1, q1, th1 = op.metrics(), op.cpu_seconds(), time.monotonic(), op.run_queue_seconds(), op.cpu_by_thread()
        load = os.getloadavg()[0]
        rss, rss_kinds = op.rss_mib(), op.rss_by_kind()
        # Steady means steady: every rollout still Observing with its metrics at the end.
        still = world.observing(namespaces, "Shadow", 0) or 0
        elapsed = w1 - w0
        intervals = elapsed / seconds(args.interval)
        requests = total(m1, "fillprob_operator_kubernetes_requests_total") - total(m0, "fillprob_operator_kubernetes_requests_total")
        queries = total(m1, "fillprob_rollout_prometheus_queries_total") - total(m0, "fillprob_rollout_prometheus_queries_total")
        samples = total(m1, "fillprob_rollout_prometheus_samples_total") - total(m0, "fillprob_rollout_prometheus_samples_total")
        by_verb: dict[str, float] = {}
        for (name, labels), v in m1.items():
            if name == "fillprob_operator_kubernetes_requests_total":
                key = "{verb} {resource}".format(**dict(labels))
                by_verb[key] = by_verb.get(key, 0) + v - m0.get((name, labels), 0.0)
        p50, p99 = lag_quantiles(m0, m1)
        gc_pauses = {}  # by generation: collections per second, share of the time, p99
        for generation in "012":
            count = (total(m1, "fillprob_operator_gc_pause_seconds_count", generation=generation)
                     - total(m0, "fillprob_operator_gc_pause_seconds_count", generation=generation))
            spent = (total(m1, "fillprob_operator_gc_pause_seconds_sum", generation=generation)
                     - total(m0, "fillprob_operator_gc_pause_seconds_sum", generation=generation))
            (gc_p99,) = lag_quantiles(m0, m1, (0.99,), "fillprob_operator_gc_pause_seconds", generation=generation)
            gc_pauses[f"gen{generation}"] = {"per_s": round(count / elapsed, 2), "time_share": round(spent / elapsed, 4),
                                             "p99_ms": round(gc_p99 * 1000, 1)}
        # The loop's thread (the pid's own) apart from the others (watches, I/O pool, log threads).
        by_thread = {tid: th1[tid] - th0.get(tid, 0.0) for tid in th1}
        loop_share = by_thread.pop(op.proc.pid, 0.0) / elapsed
        busiest = sorted(by_thread.items(), key=lambda kv: -kv[1])[:5]
        row = {
            "n": n, "cpu_share": (c1 - c0) / elapsed, "cpu_loop_thread_share": round(loop_share, 4),
            "cpu_other_threads_share": round(sum(by_thread.values()) / elapsed, 4),
            "cpu_busiest_other_threads": {str(tid): round(v / elapsed, 4) for tid, v in busiest}, "rss_mib": rss, "rss_by_kind": rss_kinds,
            "requests_per_rollout_interval": requests / n / intervals,
            "requests_by_kind": {key: round(v, 1) for key, v in sorted(by_verb.items()) if v},
            "queries_per_interval": queries / intervals, "samples_per_interval": samples / intervals,
            "lag_p50_ms": p50 * 1000, "lag_p99_ms": p99 * 1000, "gc_pauses": gc_pauses,
            "observing_after_window": still,
            # The machine, not the operator: the load average at the window's end, and the time
            # the operator's threads spent runnable but waiting for a CPU (per second of window).
            "prometheus_query_mean_ms": round(1000 * (
                total(m1, "fillprob_rollout_prometheus_query_seconds_sum")
                - total(m0, "fillprob_rollout_prometheus_query_seconds_sum")) / max(1.0, queries), 1),
            "machine_load_1m": round(load, 1), "operator_run_queue_share": round((q1 - q0) / elapsed, 3),
        }
        log(f"N={n}: steady state {json.dumps(row)}")
        row.update(detect(world, op, probe_ns, args, rng) if args.probes else {  # --probes 0: steady state only
            "cb_trip_s": [], "nogo_s": [], "nogo_after_evidence_s": [], "missed": [], "detection_skipped": "--probes 0"})
        row["rss_after_probes_mib"] = op.rss_mib()
        row["threads"] = len(list(Path(f"/proc/{op.proc.pid}/task").iterdir()))
        return row
    finally:
        if op is not None:
            op.stop()
        log(f"N={n}: deleting its namespaces")
        world.delete_run(every)


def _safe(probe):
    try:
        return probe()
    except OSError:
        return None


def detect(world: World, op: Operator, ns: str, args, rng: random.Random) -> dict:
    probes = [f"probe-{i:02d}" for i in range(args.probes)]
    for name in probes:
        world.grinder(ns, name, orders_per_sec=10)
    wait_for("probe grinders available", lambda: world.available([ns], len(probes)), 300, every=2)
    for name in probes:
        world.rollout(ns, name, "Canary", args.interval)
    try:
        wait_for("probes Canary Observing", lambda: world.observing([ns], "Canary", len(probes)), 600, every=2)
    except SystemExit as exc:
        # A machine too loaded to start the probes' pods (their progressDeadline halts them):
        # the steady state still counts; the detection is reported missing, with why.
        log(f"detection skipped: {exc}")
        return {"cb_trip_s": [], "nogo_s": [], "nogo_after_evidence_s": [], "missed": probes,
                "detection_skipped": str(exc)}
    # The canary pods have had a full lookback of orders (the gate's minOrders).
    time.sleep(seconds(LOOKBACK) + 2)
    envs = EnvWatch(world, ns)
    time.sleep(2)
    ips = {name: pod_ip(world, ns, name) for name in probes}
    plan = sorted((rng.uniform(0, 2 * seconds(args.interval)), name,
                   {"cbTrip": True} if i % 2 == 0 else {"blockAll": True}) for i, name in enumerate(probes))
    start = time.time()
    faults: list[tuple[str, dict, float]] = []
    for delay, name, fault in plan:
        time.sleep(max(0.0, start + delay - time.time()))
        faults.append((name, fault, post_fault(ips[name], fault)))
    deadline = time.time() + 90
    while time.time() < deadline and any(envs.patched_after(name, at) is None for name, _, at in faults):
        time.sleep(0.5)
    envs.stop()
    cb, nogo, nogo_evidence, missed = [], [], [], []
    for name, fault, at in faults:
        patched = envs.patched_after(name, at)
        if patched is None:
            missed.append(name)
            continue
        if "cbTrip" in fault:
            cb.append(patched - at)
        else:
            nogo.append(patched - at)
            seen = evidence_time(ns, name, at - 1, patched + 1)
            if seen is not None:
                nogo_evidence.append(patched - seen)
    out = {
        "cb_trip_s": [round(x, 2) for x in cb], "nogo_s": [round(x, 2) for x in nogo],
        "nogo_after_evidence_s": [round(x, 2) for x in nogo_evidence], "missed": missed,
    }
    log(f"detection: {json.dumps(out)}")
    return out


# --- report -------------------------------------------------------------------------------------
def table(rows: list[dict], interval: str) -> str:
    head = ("| N | operator CPU (share of one core) | per rollout | RSS MiB | Kubernetes API requests per rollout "
            "per interval | Prometheus queries / samples per interval | loop lag p50 / p99 ms | "
            "CB trip -> env patched p50 / p95 s | Prometheus-only no-go: fault -> patched p50 / p95 s "
            "| evidence in Prometheus -> patched p50 / p95 s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['n']} | {100 * r['cpu_share']:.1f} % | {100 * r['cpu_share'] / r['n']:.3f} % | {r['rss_mib']:.0f} "
            f"| {r['requests_per_rollout_interval']:.3f} | {r['queries_per_interval']:.1f} / {r['samples_per_interval']:.0f} "
            f"| {r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} "
            f"| {pct(r['cb_trip_s'], .5):.2f} / {pct(r['cb_trip_s'], .95):.2f} "
            f"| {pct(r['nogo_s'], .5):.2f} / {pct(r['nogo_s'], .95):.2f} "
            f"| {pct(r['nogo_after_evidence_s'], .5):.2f} / {pct(r['nogo_after_evidence_s'], .95):.2f} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        dn = b["n"] - a["n"]
        lines.append("")
        lines.append(
            f"Slope per rollout (N={a['n']} -> {b['n']}): CPU {100 * (b['cpu_share'] - a['cpu_share']) / dn:.3f} % "
            f"of a core, RSS {1024 * (b['rss_mib'] - a['rss_mib']) / dn:.0f} KiB, "
            f"Prometheus samples {(b['samples_per_interval'] - a['samples_per_interval']) / dn:.1f} per interval.")
    lines.append(f"(interval {interval}; requests by kind at the largest N: {json.dumps(rows[-1]['requests_by_kind'])})")
    lines.append("Machine load (1 min) at the window's end / operator threads runnable but waiting for a CPU, "
                 "seconds per second: " + ", ".join(
                     f"N={r['n']}: {r.get('machine_load_1m', float('nan'))} / {r.get('operator_run_queue_share', float('nan'))}"
                     for r in rows))
    lines.append("Operator CPU by thread, share of one core: " + "; ".join(
        f"N={r['n']}: the event loop's {100 * r.get('cpu_loop_thread_share', float('nan')):.1f} %, "
        f"the other threads' {100 * r.get('cpu_other_threads_share', float('nan')):.1f} %" for r in rows))
    lines.append("RSS by kind at the window's end, MiB (/proc smaps): " + "; ".join(
        f"N={r['n']}: " + ", ".join(f"{k} {v}" for k, v in r.get("rss_by_kind", {}).items()) for r in rows))
    for r in rows:
        if r.get("detection_skipped"):
            lines.append(f"N={r['n']}: no detection figures ({r['detection_skipped']})")
    unsteady = {r["n"]: r["observing_after_window"] for r in rows if r["observing_after_window"] != r["n"]}
    if unsteady:
        lines.append(f"Rollouts still Observing after the window, where fewer than N: {unsteady}")
    missed = {r["n"]: r["missed"] for r in rows if r["missed"]}
    if missed:
        lines.append(f"Probes not rolled back within 90 s: {missed}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,100,300")
    parser.add_argument("--interval", default="2s")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=75.0)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / ".testbed" / "bench"))
    parser.add_argument("--ramp", type=int, default=25,
                        help="rollouts created at once: the next batch when these are all Shadow Observing")
    parser.add_argument("--sim", choices=sorted(SIM_IMAGES), default="lite",
                        help="the grinders' simulator: lite (grinder-lite:local, Go) or python (grinder-sim:local)")
    parser.add_argument("--nice", type=int, default=0,
                        help="the operator's niceness (-20..19; below 0 needs root): e.g. -10 to see what the "
                             "operator does when it does not queue for a CPU behind the node's pods")
    args = parser.parse_args()
    if not re.fullmatch(r"[1-9][0-9]*[sm]", args.interval):
        parser.error(f"--interval {args.interval!r}: want seconds or minutes, like 2s")
    if args.ramp < 1:
        parser.error(f"--ramp {args.ramp}: want at least 1")
    if not -20 <= args.nice <= 19:
        parser.error(f"--nice {args.nice}: want -20..19")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: want numbers separated by commas")
    if "PROMETHEUS_URL" not in os.environ or "KUBECONFIG" not in os.environ:
        raise SystemExit("bench: the testbed's environment is missing: make testbed-up, then "
                         "set -a; . .testbed/env; set +a (make bench does it)")
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    logs = Path(args.out)
    logs.mkdir(parents=True, exist_ok=True)
    world = World(uuid.uuid4().hex[:4], SIM_IMAGES[args.sim])
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    log(f"bench run {world.run} at {commit or 'an unknown commit'}: sizes {sizes}, interval {args.interval}, "
        f"window {args.window:.0f}s, "
        f"{args.probes} probes, ramp {args.ramp}, seed {seed}, simulator {args.sim} ({world.image}), "
        f"operator niceness {args.nice}; operator logs in {logs}")
    rows = []
    for n in sizes:
        rows.append(run_size(world, n, args, rng, logs))
        (logs / "results.json").write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows, args.interval))
    print(f"Grinders: --sim {args.sim} ({world.image}). Pod logs followed over: "
          f"{os.environ.get('FILLPROB_LOG_TRANSPORT', 'http2')} (FILLPROB_LOG_TRANSPORT).")


if __name__ == "__main__":
    main()
