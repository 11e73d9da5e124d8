"""One pod on this node: a thread that keeps the pod's processes and its API status in line.

Every tick (1 s, or at once when something happened) `step()` looks at the pod object and at the
container processes, acts (start, restart after back-off, kill, delete), and `publish()` patches
the status when the computed status differs from the last one sent.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import envbuild
from .events import Recorder
from .images import ImageError, Images
from .ipam import IPAllocator
from .kubeapi import STRATEGIC_PATCH, ApiError, Kube
from .probes import Health, ProbeError, parse_probe, probe_loop, run_probe
from .runtime import ContainerRun, Files, kill_leftover
from .sandbox import MountError, ServiceAccountCredentials, setup_volumes, token_volume
from .status import ContainerView, api_time, container_status, pod_conditions, pod_phase, terminated_state, with_transition_times

log = logging.getLogger("procnode.pod")

RETRY_SECONDS = 10.0  # config errors, pull errors: retried like the kubelet's sync loop
RESET_AFTER = 600.0  # a run this long resets the crash back-off
MIN_GRACE = 2.0  # the kubelet's minimum grace period, even for force deletions


@dataclass
class NodeContext:
    kube: Kube
    recorder: Recorder
    images: Images
    ipam: IPAllocator
    state_dir: Path
    repo_root: Path
    node_name: str
    host_ip: str = "127.0.0.1"
    allocatable: Mapping[str, str] = field(default_factory=dict)
    service_env: Mapping[str, str] = field(default_factory=dict)
    backoff_initial: float = 10.0
    backoff_max: float = 300.0

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"


class Container:
    """One container of the pod: the current run, the previous outcome, back-off."""

    def __init__(self, spec: Mapping, files: Files, is_init: bool) -> None:
        self.spec, self.files, self.is_init = spec, files, is_init
        self.name: str = spec["name"]
        self.image: str = spec.get("image", "")
        self.image_id = ""
        self.restart_count = 0
        self.run: ContainerRun | None = None
        self.health: Health | None = None
        self.exited: dict | None = None  # terminated state (API dict) of the latest run
        self.prev_exited: dict | None = None  # lastState.terminated
        self.waiting: tuple[str, str] | None = ("ContainerCreating", "")
        self.next_start = 0.0
        self.delay = 0.0  # crash back-off before the next restart
        self.pull_delay = 0.0
        self.kill_deadline: float | None = None
        self.sigkill_sent = False
        self.env: dict[str, str] = {}
        self.cwd = "/"

    def view(self) -> ContainerView:
        base = dict(name=self.name, image=self.image, image_id=self.image_id, restart_count=self.restart_count)
        if self.run is not None:
            h = self.health
            started = h is None or h.started.is_set()
            ready = started and (h is None or not h.has_readiness or h.ready)
            return ContainerView(
                state="running", started_at=api_time(self.run.started_ns), container_id=self.run.container_id,
                ready=ready, started=started, last_terminated=self.prev_exited, **base,
            )  # fmt: skip
        if self.waiting is not None:
            reason, message = self.waiting
            return ContainerView(state="waiting", reason=reason, message=message, last_terminated=self.exited or self.prev_exited, **base)
        if self.exited is not None:
            t = self.exited
            return ContainerView(
                state="terminated", exit_code=t["exitCode"], reason=t.get("reason", ""), message=t.get("message", ""),
                started_at=t.get("startedAt"), finished_at=t.get("finishedAt"), container_id=t.get("containerID"),
                last_terminated=self.prev_exited, **base,
            )  # fmt: skip
        return ContainerView(state="waiting", reason="ContainerCreating", **base)


def _exit_to_terminated(record: Mapping, container_id: str | None) -> dict:
    return terminated_state(
        int(record.get("exitCode", 0)), api_time(record.get("startedAt")), api_time(record.get("finishedAt")), container_id,
        record.get("reason"), record.get("message", ""), record.get("signal"),
    )  # fmt: skip


class PodWorker:
    def __init__(self, ctx: NodeContext, pod: dict, on_finished: Callable[[PodWorker], None]) -> None:
        self.ctx, self.pod, self.on_finished = ctx, pod, on_finished
        meta, spec = pod["metadata"], pod["spec"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.key = f"{self.namespace}/{self.name}"
        self.dir = ctx.pods_dir / self.uid
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.init = [Container(c, Files(self.dir, c["name"]), True) for c in spec.get("initContainers") or []]
        self.main = [Container(c, Files(self.dir, c["name"]), False) for c in spec.get("containers") or []]
        status = pod.get("status") or {}
        self.terminal = status.get("phase") in ("Succeeded", "Failed")
        self.found_finished = self.terminal  # its status was written by an earlier node process: keep it
        self.ip: str | None = ctx.ipam.get(self.uid)
        self.sandbox_ready = False
        self.sandbox_retry_at = 0.0
        self.sa: ServiceAccountCredentials | None = None
        self.start_time: str | None = status.get("startTime")
        self.prev_conditions: list = list(status.get("conditions") or [])
        self.published: dict | None = None
        self.gone = False
        self.killing = False
        self.kill_started = 0.0
        self.deleted = False
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"pod {self.key}", daemon=True)
        if not self.terminal:
            self._adopt(status)

    # ------------------------------------------------------------------ inputs
    def start(self) -> None:
        self.thread.start()

    def update(self, pod: dict) -> None:
        self.pod = pod
        self.wake.set()

    def mark_gone(self) -> None:
        self.gone = True
        self.wake.set()

    @property
    def containers(self) -> list[Container]:
        return self.init + self.main

    def container(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    # ------------------------------------------------------------------ adoption after a node restart
    def _adopt(self, status: Mapping) -> None:
        if self.ip and self.dir.exists():
            self.sandbox_ready = True
            if token_volume(self.pod) is not None:
                self.sa = ServiceAccountCredentials(self.ctx.kube, self.pod, self.dir)  # refreshed on the first step
        known = {s["name"]: s for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])}
        for c in self.containers:
            old = known.get(c.name) or {}
            c.restart_count = int(old.get("restartCount") or 0)
            c.prev_exited = (old.get("lastState") or {}).get("terminated")
            found = ContainerRun.adopt(c.files) if self.dir.exists() else None
            if isinstance(found, ContainerRun):
                c.run, c.waiting = found, None
                self._start_probes(c, adopted=True)
                if c.health is not None and old.get("containerID") == found.container_id:
                    # keep what the probes had found (the kubelet does too): no readiness flap on a node restart
                    c.health.ready = bool(old.get("ready"))
                    if old.get("started"):
                        c.health.started.set()
                log.info("pod %s: adopted container %s (pid %s)", self.key, c.name, found.pid)
            elif isinstance(found, dict):
                c.exited, c.waiting = _exit_to_terminated(found, (old.get("containerID") or None)), None
            elif "running" in (old.get("state") or {}) or "terminated" in (old.get("state") or {}):
                # The API says it ran, but this node has no trace of it (state dir lost).
                now = time.time_ns()
                c.exited = _exit_to_terminated({"exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": now,
                                                "finishedAt": now, "message": "The container could not be located when the pod was adopted"}, None)  # fmt: skip
                c.waiting = None

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        log.info("pod %s (uid %s): worker started", self.key, self.uid)
        while not self.stopping.is_set():
            try:
                self.step()
                if not self.stopping.is_set():
                    self.publish()
            except Exception:  # noqa: BLE001 - a pod's trouble must not end its worker
                log.exception("pod %s: step failed", self.key)
            self.wake.wait(1.0)
            self.wake.clear()
        log.info("pod %s (uid %s): worker finished", self.key, self.uid)
        self.on_finished(self)

    def notify(self, reason: str = "", message: str = "", container: str | None = None) -> None:
        if reason:
            self.ctx.recorder.pod(self.pod, reason, message, warning=True, container=container)
        self.wake.set()

    def step(self) -> None:
        now = time.monotonic()
        for c in self.containers:
            self._poll(c, now)
        if self.gone or (self.pod["metadata"].get("deletionTimestamp") and not self.deleted):
            self._terminate(now)
            return
        if self.terminal or self.deleted:
            return
        if not self._ensure_sandbox(now):
            return
        for c in self.init:
            if c.run is not None:
                self._watch_health(c, now)
                return
            if c.exited is not None and c.exited["exitCode"] == 0:
                continue
            if c.exited is not None and self.restart_policy == "Never":
                self.terminal = True
                return
            self._start_or_wait(c, now)
            return
        for c in self.main:
            if c.run is not None:
                self._watch_health(c, now)
            elif c.exited is None or self._restarts(c):
                self._start_or_wait(c, now)
        if all(c.run is None and c.exited is not None and not self._restarts(c) for c in self.main):
            self.terminal = True
            log.info("pod %s: all containers ended for good (restartPolicy %s)", self.key, self.restart_policy)

    def _restarts(self, c: Container) -> bool:
        if c.exited is None:
            return False
        if self.restart_policy == "Always":
            return True
        return self.restart_policy == "OnFailure" and c.exited["exitCode"] != 0

    # ------------------------------------------------------------------ sandbox
    def _ensure_sandbox(self, now: float) -> bool:
        if self.sandbox_ready:
            if self.sa is not None and self.sa.due():
                try:
                    self.sa.refresh()
                except Exception as exc:  # noqa: BLE001 - keep the old token, retry
                    log.warning("pod %s: token refresh failed: %s", self.key, exc)
                    self.sa.refresh_at = now + RETRY_SECONDS
            return True
        if now < self.sandbox_retry_at:
            return False
        try:
            # hostNetwork pods share the node's address, like on a real node
            self.ip = self.ctx.host_ip if self.pod["spec"].get("hostNetwork") else self.ctx.ipam.allocate(self.uid)
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "home").mkdir(exist_ok=True)
            (self.dir / "pod.txt").write_text(f"{self.namespace}/{self.name} {self.uid} {self.ip}\n")
            setup_volumes(self.pod, self.dir)
            if token_volume(self.pod) is not None:
                self.sa = self.sa or ServiceAccountCredentials(self.ctx.kube, self.pod, self.dir)
                self.sa.refresh()
        except MountError as exc:
            self._sandbox_failed(now, "FailedMount", str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - API errors, pool exhausted: retry
            self._sandbox_failed(now, "FailedCreatePodSandBox", str(exc))
            return False
        if self.start_time is None:
            self.start_time = api_time()
        self.sandbox_ready = True
        log.info("pod %s: sandbox ready, IP %s", self.key, self.ip)
        return True

    def _sandbox_failed(self, now: float, reason: str, message: str) -> None:
        log.warning("pod %s: %s: %s", self.key, reason, message)
        self.ctx.recorder.pod(self.pod, reason, message, warning=True)
        for c in self.containers:
            c.waiting = ("ContainerCreating", message)
        self.sandbox_retry_at = now + 5.0

    def _runtime_env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.ctx.repo_root}/.venv/bin:/usr/local/bin:/usr/bin:/bin",
            "HOSTNAME": self.name,
            "HOME": str(self.dir / "home"),
            "POD_IP": self.ip or "",
        }
        if self.sa is not None:
            env["KUBECONFIG"] = str(self.sa.kubeconfig)
        return env

    # ------------------------------------------------------------------ starting
    def _lookup(self, kind: str):
        def lookup(namespace: str, name: str):
            obj = self.ctx.kube.get_or_none(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
            if obj is None:
                return None
            if kind == "secrets":
                return envbuild.decode_secret_data(obj.get("data"))
            return {**(obj.get("data") or {})}

        return lookup

    def _start_or_wait(self, c: Container, now: float) -> None:
        if now < c.next_start:
            if c.exited is not None and c.delay > 0:
                c.waiting = ("CrashLoopBackOff", f"back-off {int(c.delay)}s restarting failed container={c.name} pod={self.name}_{self.namespace}({self.uid})")
                self.ctx.recorder.pod(self.pod, "BackOff", f"Back-off restarting failed container {c.name} in pod {self.name}_{self.namespace}({self.uid})", warning=True, container=c.name)
            elif c.waiting and c.waiting[0] == "ErrImagePull":
                c.waiting = ("ImagePullBackOff", f'Back-off pulling image "{c.image}": {c.waiting[1]}')
            return
        try:
            folder = self.ctx.images.resolve(c.image)
        except ImageError as exc:
            c.waiting = ("ErrImagePull", str(exc))
            c.pull_delay = min(max(self.ctx.backoff_initial, c.pull_delay * 2), self.ctx.backoff_max)
            c.next_start = now + c.pull_delay
            self.ctx.recorder.pod(self.pod, "Failed", f'Failed to pull image "{c.image}": {exc}', warning=True, container=c.name)
            return
        c.pull_delay = 0.0
        c.image_id = f"procnode://{folder}"
        facts = envbuild.PodFacts(self.pod, self.ip or "", self.ctx.host_ip, self.ctx.allocatable)
        try:
            k8s_env = envbuild.container_env(
                facts, c.spec, service_env=self.ctx.service_env,
                configmap=self._lookup("configmaps"), secret=self._lookup("secrets"),
            )  # fmt: skip
        except envbuild.ContainerConfigError as exc:
            self._not_created(c, now, "CreateContainerConfigError", str(exc))
            return
        if not c.spec.get("command"):
            self._not_created(c, now, "CreateContainerError",
                              f'container "{c.name}" has no command: procnode images have no entrypoint, set command (args alone are not enough)')  # fmt: skip
            return
        argv = envbuild.expand_command(c.spec, k8s_env)
        env = envbuild.process_env(self._runtime_env(), k8s_env)
        if c.exited is not None:  # a restart
            c.prev_exited, c.exited = c.exited, None
            c.restart_count += 1
            c.delay = min(max(self.ctx.backoff_initial, c.delay * 2), self.ctx.backoff_max)
        c.files.rotate()
        c.env, c.cwd = env, _working_dir(c, folder)
        result = ContainerRun.start(c.files, argv, env, c.cwd)
        c.waiting = None
        if isinstance(result, dict):
            c.exited = _exit_to_terminated(result, None)
            c.next_start = now + c.delay
            log.warning("pod %s: container %s did not start: %s", self.key, c.name, result.get("message"))
            self.ctx.recorder.pod(self.pod, "Failed", f"Error: {result.get('message')}", warning=True, container=c.name)
            return
        c.run = result
        c.kill_deadline, c.sigkill_sent = None, False
        log.info("pod %s: container %s started (pid %s, restart %s): %s", self.key, c.name, result.pid, c.restart_count, argv)
        self.ctx.recorder.pod(self.pod, "Started", f"Started container {c.name}", container=c.name)
        self._start_probes(c)

    def _not_created(self, c: Container, now: float, reason: str, message: str) -> None:
        c.waiting = (reason, message)
        c.next_start = now + RETRY_SECONDS
        log.warning("pod %s: container %s: %s: %s", self.key, c.name, reason, message)
        self.ctx.recorder.pod(self.pod, "Failed", f"Error: {message}", warning=True, container=c.name)

    def _start_probes(self, c: Container, adopted: bool = False) -> None:
        spec = c.spec
        probes = {k: spec.get(f"{k}Probe") for k in ("startup", "readiness", "liveness")}
        if c.is_init:
            probes = {}
        health = Health(has_startup=bool(probes.get("startup")), has_readiness=bool(probes.get("readiness")))
        c.health = health
        if adopted and not c.env:
            c.env = self._adopted_env(c)
        for kind, probe in probes.items():
            if not probe:
                continue
            try:
                parsed = parse_probe(probe, spec, self.ip or "127.0.0.1")
            except ProbeError as exc:
                self.notify("Unhealthy", f"{kind} probe invalid: {exc}", c.name)
                continue

            def prober(p, c=c):
                return run_probe(p, c.env, c.cwd)

            def notify(reason, message, c=c):
                self.notify(reason, message, c.name)

            threading.Thread(target=probe_loop, args=(kind, parsed, health, prober, notify), daemon=True,
                             name=f"{kind} {self.key}/{c.name}").start()  # fmt: skip

    def _adopted_env(self, c: Container) -> dict[str, str]:
        """Best effort env/cwd for exec probes of a run started by an earlier node process."""
        try:
            folder = self.ctx.images.resolve(c.image)
            c.cwd, c.image_id = _working_dir(c, folder), f"procnode://{folder}"
            facts = envbuild.PodFacts(self.pod, self.ip or "", self.ctx.host_ip, self.ctx.allocatable)
            k8s_env = envbuild.container_env(facts, c.spec, service_env=self.ctx.service_env,
                                             configmap=self._lookup("configmaps"), secret=self._lookup("secrets"))  # fmt: skip
            return envbuild.process_env(self._runtime_env(), k8s_env)
        except Exception:  # noqa: BLE001
            return self._runtime_env()

    # ------------------------------------------------------------------ running / exits
    def _poll(self, c: Container, now: float) -> None:
        if c.run is None:
            return
        record = c.run.poll()
        if record is None:
            return
        run = c.run
        c.exited = _exit_to_terminated(record, run.container_id)
        c.run = None
        if c.health is not None:
            c.health.stop.set()
        ran_for = (int(record.get("finishedAt", 0)) - int(record.get("startedAt", 0))) / 1e9
        if ran_for >= RESET_AFTER:
            c.delay = 0.0
        c.next_start = now + c.delay
        log.info("pod %s: container %s (pid %s) exited with %s (%s) after %.1fs", self.key, c.name, run.pid,
                 c.exited["exitCode"], c.exited["reason"], ran_for)  # fmt: skip

    def _watch_health(self, c: Container, now: float) -> None:
        h = c.health
        if h is not None and h.failure and c.kill_deadline is None:
            grace = h.failure_grace if h.failure_grace is not None else self._grace()
            log.warning("pod %s: container %s: %s; killing it", self.key, c.name, h.failure)
            kind = h.failure.split(" ", 1)[0].lower()  # liveness | startup
            self.ctx.recorder.pod(self.pod, "Killing", f"Container {c.name} failed {kind} probe, will be restarted", container=c.name)
            self._kill(c, now, grace)
        self._escalate(c, now)

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        for value in (meta.get("deletionGracePeriodSeconds"), spec.get("terminationGracePeriodSeconds")):
            if value is not None:
                return float(value)
        return 30.0

    def _kill(self, c: Container, now: float, grace: float) -> None:
        """preStop hook (exec/sleep/httpGet), then SIGTERM to the process group; SIGKILL at the deadline."""
        grace = max(grace, MIN_GRACE)
        c.kill_deadline = now + grace
        run = c.run
        if run is None:
            return
        pre_stop = (c.spec.get("lifecycle") or {}).get("preStop")
        if not pre_stop or c.is_init:
            run.signal(signal.SIGTERM)
            return

        def hook_then_term() -> None:
            try:
                self._run_pre_stop(c, pre_stop, grace)
            finally:
                run.signal(signal.SIGTERM)
                self.wake.set()

        threading.Thread(target=hook_then_term, daemon=True, name=f"preStop {self.key}/{c.name}").start()

    def _run_pre_stop(self, c: Container, hook: Mapping, grace: float) -> None:
        try:
            if "exec" in hook:
                subprocess.run(hook["exec"].get("command") or [], env=c.env, cwd=c.cwd, timeout=max(grace, 1),
                               stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True)  # fmt: skip
            elif "sleep" in hook:
                self.stopping.wait(min(float(hook["sleep"].get("seconds", 0)), grace))
            elif "httpGet" in hook:
                probe = parse_probe({"httpGet": hook["httpGet"], "timeoutSeconds": max(int(grace), 1)}, c.spec, self.ip or "127.0.0.1")
                run_probe(probe, c.env, c.cwd)
        except Exception as exc:  # noqa: BLE001 - a failing hook does not stop the kill
            self.ctx.recorder.pod(self.pod, "FailedPreStopHook", f"PreStopHook failed: {exc}", warning=True, container=c.name)

    def _escalate(self, c: Container, now: float) -> None:
        if c.run is not None and c.kill_deadline is not None and now >= c.kill_deadline and not c.sigkill_sent:
            log.warning("pod %s: container %s outlived its grace period: SIGKILL", self.key, c.name)
            c.run.signal(signal.SIGKILL)
            c.sigkill_sent = True

    # ------------------------------------------------------------------ deletion
    def _terminate(self, now: float) -> None:
        grace = self._grace()
        if not self.killing:
            self.killing, self.kill_started = True, now
            why = "pod object is gone" if self.gone else "pod is being deleted"
            log.info("pod %s: %s: stopping containers (grace %ss)", self.key, why, grace)
            for c in self.containers:
                c.waiting = None if c.exited is not None else c.waiting
                if c.run is not None:
                    if not self.gone:
                        self.ctx.recorder.pod(self.pod, "Killing", f"Stopping container {c.name}", container=c.name)
                    self._kill(c, now, grace)
        for c in self.containers:
            if c.run is not None:
                if c.kill_deadline is None:
                    self._kill(c, now, grace)
                c.kill_deadline = min(c.kill_deadline, self.kill_started + max(grace, MIN_GRACE))
                self._escalate(c, now)
        if any(c.run is not None for c in self.containers):
            return
        self.terminal = True
        if not self.gone and not self.deleted:
            self.publish()
            path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"
            try:
                self.ctx.kube.request("DELETE", path, body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
                log.info("pod %s: containers stopped, pod object deleted", self.key)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
            self.deleted = True
        self._cleanup()

    def _cleanup(self) -> None:
        for c in self.containers:
            if c.health is not None:
                c.health.stop.set()
        if self.dir.exists():
            archive = self.ctx.state_dir / "terminated-logs" / f"{self.namespace}_{self.name}_{self.uid}"
            for f in self.dir.glob("*.log"):
                archive.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), archive / f.name)
            for c in self.containers:  # nothing of ours may outlive the pod
                kill_leftover(c.files.pid, c.files.run, grace=1.0)
            shutil.rmtree(self.dir, ignore_errors=True)
        self.ctx.ipam.release(self.uid)
        self.ctx.recorder.forget(self.uid)
        self.stopping.set()

    # ------------------------------------------------------------------ status
    def desired_status(self) -> dict:
        pod = self.pod
        init_views = [c.view() for c in self.init]
        views = [c.view() for c in self.main]
        phase = pod_phase(self.restart_policy, init_views, views, self.terminal)
        existing = (pod.get("status") or {}).get("conditions") or []
        generation = pod["metadata"].get("generation")
        conditions = pod_conditions(phase, self.sandbox_ready, init_views, views, pod["spec"].get("readinessGates") or [], existing)
        conditions = with_transition_times(conditions, self.prev_conditions, api_time(), generation)
        status: dict = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "containerStatuses": [container_status(v) for v in views],
        }
        if init_views:
            status["initContainerStatuses"] = [container_status(v) for v in init_views]
        if self.ip and self.sandbox_ready:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.start_time:
            status["startTime"] = self.start_time
        if generation is not None:
            status["observedGeneration"] = generation
        return status

    def publish(self) -> None:
        if self.deleted or self.gone:
            return
        if self.found_finished:
            return
        status = self.desired_status()
        if status == self.published:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        try:
            self.ctx.kube.request("PATCH", path, body=body, content_type=STRATEGIC_PATCH)
        except ApiError as exc:
            if exc.status in (404, 409):  # gone, or replaced by a new pod with the same name
                log.info("pod %s: not patching status: %s", self.key, exc)
                return
            raise
        log.info("pod %s: status %s [%s]", self.key, status["phase"], ", ".join(_describe(s) for s in status["containerStatuses"]))
        self.published = status
        self.prev_conditions = status["conditions"]


def _working_dir(c: Container, folder: Path) -> str:
    """The image folder, or workingDir: absolute = a host path (no remapping), relative = inside the folder."""
    return str(folder / c.spec["workingDir"]) if c.spec.get("workingDir") else str(folder)


def _describe(s: Mapping) -> str:
    state = s["state"]
    kind = next(iter(state))
    detail = state[kind].get("reason") or ""
    if kind == "terminated":
        detail = f"{detail} {state[kind]['exitCode']}"
    return f"{s['name']}={kind}{('(' + detail.strip() + ')') if detail else ''}{' ready' if s['ready'] else ''}"
