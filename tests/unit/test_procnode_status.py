"""procnode: pod phase, conditions and container statuses as the kubelet computes them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode.status import ContainerView, api_time, container_status, pod_conditions, pod_phase, with_transition_times  # noqa: E402

T0 = "2026-01-01T00:00:00Z"


def v(state: str, **kw) -> ContainerView:
    return ContainerView(name=kw.pop("name", "main"), image="echo:local", state=state, **kw)


def test_api_time_formats() -> None:
    assert api_time(0) == "1970-01-01T00:00:00Z"
    assert api_time(1_700_000_000_123_456_789) == "2023-11-14T22:13:20Z"


def test_phase_pending_running_and_init() -> None:
    assert pod_phase("Always", [], [v("waiting")], False) == "Pending"
    assert pod_phase("Always", [], [v("running")], False) == "Running"
    assert pod_phase("Always", [v("running", name="init")], [v("waiting")], False) == "Pending"
    assert pod_phase("Never", [v("terminated", name="init", exit_code=1)], [v("waiting")], False) == "Failed"
    failed_init_retry = v("waiting", name="init", reason="CrashLoopBackOff", last_terminated={"exitCode": 1})
    assert pod_phase("OnFailure", [failed_init_retry], [v("waiting")], False) == "Pending"


def test_phase_after_exit_per_restart_policy() -> None:
    ok, bad = v("terminated", exit_code=0), v("terminated", exit_code=1)
    assert pod_phase("Never", [], [ok], False) == "Succeeded"
    assert pod_phase("Never", [], [bad], False) == "Failed"
    assert pod_phase("OnFailure", [], [ok], False) == "Succeeded"
    assert pod_phase("OnFailure", [], [bad], False) == "Running"  # about to restart
    assert pod_phase("Always", [], [ok], False) == "Running"
    crash_loop = v("waiting", reason="CrashLoopBackOff", last_terminated={"exitCode": 1})
    assert pod_phase("Always", [], [crash_loop], False) == "Running"


def test_phase_of_a_terminal_pod() -> None:
    assert pod_phase("Always", [], [v("terminated", exit_code=0)], True) == "Succeeded"
    assert pod_phase("Always", [], [v("terminated", exit_code=143)], True) == "Failed"
    assert pod_phase("Always", [], [v("waiting", reason="ErrImagePull")], True) == "Failed"


def test_container_status_shapes() -> None:
    running = container_status(v("running", started_at=T0, ready=True, started=True, container_id="procnode://42",
                                  restart_count=2, last_terminated={"exitCode": 1, "reason": "Error"}))  # fmt: skip
    assert running["state"] == {"running": {"startedAt": T0}}
    assert running["ready"] and running["started"] and running["restartCount"] == 2
    assert running["lastState"] == {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert running["containerID"] == "procnode://42"

    done = container_status(v("terminated", exit_code=0, started_at=T0, finished_at=T0, ready=True))
    assert done["state"]["terminated"]["reason"] == "Completed"
    assert done["ready"] is False and done["started"] is False and done["lastState"] == {}
    failed = container_status(v("terminated", exit_code=1))
    assert failed["state"]["terminated"] == {"exitCode": 1, "reason": "Error"}

    waiting = container_status(v("waiting", reason="ErrImagePull", message='image "x" unknown'))
    assert waiting["state"] == {"waiting": {"reason": "ErrImagePull", "message": 'image "x" unknown'}}


def conds(phase: str, init: list, main: list, **kw) -> dict:
    return {c["type"]: c for c in pod_conditions(phase, True, init, main, **kw)}


def test_conditions_ready_and_not_ready() -> None:
    c = conds("Running", [], [v("running", ready=True, name="a"), v("running", ready=False, name="b")])
    assert c["PodReadyToStartContainers"]["status"] == "True"
    assert c["Initialized"]["status"] == "True"
    assert c["ContainersReady"] == {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                                    "message": "containers with unready status: [b]"}  # fmt: skip
    assert c["Ready"]["status"] == "False" and c["Ready"]["message"] == "containers with unready status: [b]"
    c = conds("Running", [], [v("running", ready=True)])
    assert c["ContainersReady"] == {"type": "ContainersReady", "status": "True"}
    assert c["Ready"] == {"type": "Ready", "status": "True"}


def test_conditions_init_and_completed() -> None:
    c = conds("Pending", [v("running", name="setup")], [v("waiting")])
    assert c["Initialized"]["reason"] == "ContainersNotInitialized"
    assert c["Initialized"]["message"] == "containers with incomplete status: [setup]"
    c = conds("Succeeded", [v("terminated", name="setup", exit_code=0)], [v("terminated", exit_code=0)])
    assert c["Initialized"]["status"] == "True"
    assert c["Ready"]["reason"] == "PodCompleted" and c["ContainersReady"]["reason"] == "PodCompleted"


def test_readiness_gates() -> None:
    gates = [{"conditionType": "example.com/lb"}]
    c = conds("Running", [], [v("running", ready=True)], readiness_gates=gates)
    assert c["Ready"]["reason"] == "ReadinessGatesNotReady"
    c = conds("Running", [], [v("running", ready=True)], readiness_gates=gates, existing=[{"type": "example.com/lb", "status": "True"}])
    assert c["Ready"]["status"] == "True"


def test_transition_times_are_kept_while_status_is_unchanged() -> None:
    first = with_transition_times([{"type": "Ready", "status": "False", "reason": "X"}], [], T0, generation=1)
    assert first == [{"type": "Ready", "status": "False", "reason": "X", "message": None, "lastTransitionTime": T0, "observedGeneration": 1}]
    same = with_transition_times([{"type": "Ready", "status": "False", "reason": "Y"}], first, "2026-01-01T00:00:09Z")
    assert same[0]["lastTransitionTime"] == T0
    flipped = with_transition_times([{"type": "Ready", "status": "True"}], first, "2026-01-01T00:00:09Z")
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:00:09Z"
    assert flipped[0]["reason"] is None  # a null removes the old reason under a strategic merge patch
