"""Pod status from container facts (pure): container statuses, phase and conditions as the kubelet
computes them (pkg/kubelet/kubelet_pods.go getPhase, pkg/kubelet/status/generate.go).

Times are API strings (RFC3339, seconds); `now` is passed in, and a condition keeps its
lastTransitionTime while its status does not change, so an unchanged pod yields an equal status
and nothing is patched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def api_time(ns_or_s: float | int | None = None) -> str:
    """metav1.Time: RFC3339 UTC with seconds precision (ns when given an int > 1e12)."""
    if ns_or_s is None:
        secs = time.time()
    elif isinstance(ns_or_s, int) and ns_or_s > 10**12:
        secs = ns_or_s / 1e9
    else:
        secs = float(ns_or_s)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(secs))


@dataclass(frozen=True)
class ContainerView:
    """What the node knows about one container right now."""

    name: str
    image: str
    state: str  # waiting | running | terminated
    reason: str = ""
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    container_id: str | None = None
    image_id: str = ""
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    last_terminated: Mapping | None = None  # API dict of lastState.terminated


def terminated_state(exit_code: int, started_at: str | None, finished_at: str | None, container_id: str | None,
                     reason: str | None = None, message: str = "", signal: int | None = None) -> dict:  # fmt: skip
    state: dict = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
    if signal:
        state["signal"] = signal
    if message:
        state["message"] = message
    if started_at:
        state["startedAt"] = started_at
    if finished_at:
        state["finishedAt"] = finished_at
    if container_id:
        state["containerID"] = container_id
    return state


def container_status(view: ContainerView) -> dict:
    if view.state == "running":
        state: dict = {"running": {"startedAt": view.started_at}}
    elif view.state == "terminated":
        state = {"terminated": terminated_state(
            view.exit_code or 0, view.started_at, view.finished_at, view.container_id, view.reason or None, view.message)}  # fmt: skip
    else:
        waiting: dict = {"reason": view.reason or "ContainerCreating"}
        if view.message:
            waiting["message"] = view.message
        state = {"waiting": waiting}
    status = {
        "name": view.name,
        "image": view.image,
        "imageID": view.image_id,
        "ready": view.ready and view.state == "running",
        "started": view.started and view.state == "running",
        "restartCount": view.restart_count,
        "state": state,
        "lastState": {"terminated": dict(view.last_terminated)} if view.last_terminated else {},
    }
    if view.container_id:
        status["containerID"] = view.container_id
    return status


def pod_phase(restart_policy: str, init_views: Sequence[ContainerView], views: Sequence[ContainerView], terminal: bool) -> str:
    pending_init = failed_init = 0
    for v in init_views:
        if v.state == "running":
            pending_init += 1
        elif v.state == "terminated":
            failed_init += v.exit_code != 0
        elif v.last_terminated is not None:
            failed_init += v.last_terminated.get("exitCode", 0) != 0
        else:
            pending_init += 1
    running = waiting = stopped = succeeded = 0
    for v in views:
        if v.state == "running":
            running += 1
        elif v.state == "terminated":
            stopped += 1
            succeeded += v.exit_code == 0
        elif v.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1

    if failed_init and restart_policy == "Never":
        phase = "Failed"
    elif pending_init or waiting:
        phase = "Pending"
    elif running:
        phase = "Running"
    elif stopped:
        if terminal:
            phase = "Succeeded" if stopped == succeeded else "Failed"
        elif restart_policy == "Always":
            phase = "Running"
        elif stopped == succeeded:
            phase = "Succeeded"
        elif restart_policy == "Never":
            phase = "Failed"
        else:
            phase = "Running"
    else:
        phase = "Pending"
    if terminal and phase not in ("Succeeded", "Failed"):
        phase = "Failed"
    return phase


def _cond(type_: str, ok: bool, reason: str = "", message: str = "") -> dict:
    c = {"type": type_, "status": "True" if ok else "False"}
    if not ok and reason:
        c["reason"] = reason
    if not ok and message:
        c["message"] = message
    return c


def pod_conditions(
    phase: str,
    sandbox_ready: bool,
    init_views: Sequence[ContainerView],
    views: Sequence[ContainerView],
    readiness_gates: Sequence[Mapping] = (),
    existing: Sequence[Mapping] = (),
) -> list[dict]:
    """PodReadyToStartContainers, Initialized, ContainersReady, Ready (without times)."""
    incomplete = [v.name for v in init_views if not (v.state == "terminated" and v.exit_code == 0)]
    containers_started = any(v.state == "running" or v.last_terminated or v.state == "terminated" for v in views)
    if phase == "Succeeded" and not incomplete:
        initialized = _cond("Initialized", True)
    elif not incomplete or containers_started:
        initialized = _cond("Initialized", True)
    else:
        initialized = _cond("Initialized", False, "ContainersNotInitialized", f"containers with incomplete status: [{' '.join(incomplete)}]")

    unready = [v.name for v in views if not (v.state == "running" and v.ready)]
    if phase == "Succeeded":
        containers_ready = _cond("ContainersReady", False, "PodCompleted")
    elif unready:
        containers_ready = _cond("ContainersReady", False, "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    else:
        containers_ready = _cond("ContainersReady", True)

    if containers_ready["status"] != "True":
        ready = {**containers_ready, "type": "Ready"}
    else:
        by_type = {c.get("type"): c for c in existing}
        gate_problems = []
        for gate in readiness_gates:
            cond = by_type.get(gate.get("conditionType"))
            if cond is None:
                gate_problems.append(f'corresponding condition of pod readiness gate "{gate.get("conditionType")}" does not exist.')
            elif cond.get("status") != "True":
                gate_problems.append(f'the status of pod readiness gate "{gate.get("conditionType")}" is not "True", but {cond.get("status")}')
        ready = _cond("Ready", not gate_problems, "ReadinessGatesNotReady", ", ".join(gate_problems))

    return [_cond("PodReadyToStartContainers", sandbox_ready), initialized, containers_ready, ready]


def with_transition_times(new: Sequence[Mapping], previous: Sequence[Mapping], now: str, generation: int | None = None) -> list[dict]:
    """Carry lastTransitionTime over from `previous` while a condition's status is unchanged."""
    before = {c.get("type"): c for c in previous}
    out = []
    for c in new:
        old = before.get(c["type"])
        keep = old is not None and old.get("status") == c["status"] and old.get("lastTransitionTime")
        # reason/message always present: null removes a stale one under a strategic merge patch
        item = {"reason": None, "message": None, **c, "lastTransitionTime": old["lastTransitionTime"] if keep else now}
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out
