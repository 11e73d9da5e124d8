"""The executor when the API server refuses the status (issue 9, point 4): what may still run.

Pure rules plus the executor against a recording kube whose status writes are refused. The
integration tier (tests/integration/test_status_refused.py) runs the same through the real
domain and adapters.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes.client.exceptions import ApiException

from fillprob_operator.adapters.executor import (
    STATUS_REFUSED,
    ExecutionContext,
    Executor,
    history_trims,
    narrows,
    refused_by_api_server,
)
from fillprob_operator.adapters.kubernetes import KubernetesError, api_message
from fillprob_operator.domain.actions import ClearRollbackAnnotation, EmitEvent, PatchEnv, RunPreflight
from fillprob_operator.domain.ladder import AUTO_THRESHOLD, ENFORCE, ENFORCE_SYMBOLS
from fillprob_operator.domain.observations import DeploymentObservation, MetricsObservation, Observations
from fillprob_operator.metrics import OperatorMetrics

CANARY = {ENFORCE: "1", ENFORCE_SYMBOLS: "SYM1", AUTO_THRESHOLD: "0"}
ROLLBACK = {"playbook": "R1", "reason": "AlertFired", "at": "2024-05-01T12:00:00Z"}


def test_only_an_answer_about_the_status_is_a_refusal():
    for status in (400, 403, 413, 422):
        assert refused_by_api_server(KubernetesError("x", status=status))
    for status in (None, 408, 429, 500, 503):
        assert not refused_by_api_server(KubernetesError("x", status=status))


def test_history_trims_halve_from_the_kept_maximum_down_to_none():
    assert history_trims(0) == []
    assert history_trims(1) == [0]
    assert history_trims(10) == [5, 2, 1, 0]
    assert history_trims(100) == [50, 25, 12, 6, 3, 1, 0]
    assert history_trims(5000) == [100, 50, 25, 12, 6, 3, 1, 0]


def test_narrows_means_enforcing_no_more_never_widening():
    r1 = PatchEnv("g", {ENFORCE: "0"}, (), "1-5")
    climb = PatchEnv("g", {ENFORCE_SYMBOLS: "SYM1,SYM2"}, (), "1-5")
    same = PatchEnv("g", dict(CANARY), (), "1-5")
    everything = PatchEnv("g", {}, (ENFORCE_SYMBOLS,), "1-5")  # no allowlist: every symbol
    assert narrows(r1, CANARY, rollback=False) and narrows(r1, CANARY, rollback=True)
    assert not narrows(climb, CANARY, rollback=False) and not narrows(climb, CANARY, rollback=True)
    assert not narrows(everything, CANARY, rollback=True)
    assert not narrows(same, CANARY, rollback=False)
    assert narrows(same, CANARY, rollback=True)  # a rollback's restart that changes no scope
    assert narrows(PatchEnv("g", {ENFORCE_SYMBOLS: "SYM1"}), {**CANARY, ENFORCE_SYMBOLS: "SYM1,★"}, False)


def test_api_message_is_the_status_body_message_clipped():
    exc = ApiException(status=422, reason="Unprocessable Entity")
    exc.body = json.dumps({"message": "status.history: Too long:\n must have at most 3 items " + "x" * 400})
    message = api_message(exc)
    assert message.startswith(": status.history: Too long: must have") and message.endswith("...")
    assert len(message) <= 310
    exc.body = b"<html>not json</html>"
    assert api_message(exc) == ""
    exc.body = None
    assert api_message(exc) == ""


class RefusingKube:
    """Records calls; refuses every status write with `code` (or accepts with `code=None`)."""

    def __init__(self, code: int | None = 422, accept_history_of: int | None = None) -> None:
        self.code = code
        self.accept_history_of = accept_history_of
        self.calls: list[tuple] = []

    async def patch_rollout_status(self, ns, name, patch):
        history = patch.get("history")
        self.calls.append(("status", None if history is None else len(history)))
        if self.code is not None and (self.accept_history_of is None or history is None
                                      or len(history) > self.accept_history_of):
            raise KubernetesError(f"patch status {ns}/{name}: {self.code} refused", status=self.code)
        return {}

    async def patch_env(self, ns, name, action):
        self.calls.append(("patch_env", action.restart_token))
        return True

    async def run_preflight(self, ns, owner, deployment, action):
        self.calls.append(("preflight", action.job_name))

    async def emit_event(self, owner, event):
        self.calls.append(("event", event.reason))

    async def clear_rollback_annotation(self, ns, name, expected, *, with_reason=False):
        self.calls.append(("clear", expected))


class Decision:
    def __init__(self, status, actions, changed=True):
        self.status, self.actions, self.changed = status, actions, changed


class Clock:
    def now(self):
        return None

    def monotonic(self):
        return 0.0


def context(previous, env=CANARY, exists=True):
    observations = Observations(
        deployment=DeploymentObservation(exists=exists, env=dict(env)),
        metrics=MetricsObservation(available=False),
    )
    return ExecutionContext(namespace="ns", name="r", body={"metadata": {"name": "r"}}, deployment_name="g",
                            previous_status=previous, observations=observations, rollback_annotation="R1")


def run(kube, ctx, decision, metrics=None):
    return asyncio.run(Executor(kube, metrics or OperatorMetrics(), Clock()).execute(ctx, decision))


def test_a_refused_rollback_narrows_and_nothing_else_runs():
    kube, metrics = RefusingKube(), OperatorMetrics()
    previous = {"state": "Observing", "history": [{"action": "A"}]}
    new = {"state": "RolledBack", "lastRollback": ROLLBACK, "history": [{"action": "A"}, {"action": "RollbackR1"}]}
    decision = Decision(new, (PatchEnv("g", {ENFORCE: "0"}, (), "1-5"), ClearRollbackAnnotation(),
                              EmitEvent("Warning", "AlertFired", "R1 applied")))
    result = run(kube, context(previous), decision, metrics)
    # the full status, then history trimmed to 1 and 0 entries, all refused; then the rollback,
    # its Event, and the Event that says the status was refused
    assert kube.calls == [("status", 2), ("status", 1), ("status", 0),
                          ("patch_env", "1-5"), ("event", "AlertFired"), ("event", STATUS_REFUSED)]
    assert result.status == previous and not result.status_patched
    assert "422 refused" in result.status_refused
    assert result.rollback == ROLLBACK  # the env was rolled back: counted
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_rollbacks_total",
        {"namespace": "ns", "name": "r", "playbook": "R1", "reason": "AlertFired"}) == 1


@pytest.mark.parametrize("action", [
    PatchEnv("g", {ENFORCE_SYMBOLS: "SYM1,SYM2"}, (), "1-6"),  # a climb
    PatchEnv("g", dict(CANARY), (), "1-6"),  # a re-apply of the same rung
    RunPreflight("r-preflight-2", "g", ("true",), 60),
    ClearRollbackAnnotation(),
])
def test_a_refused_status_runs_nothing_that_does_not_narrow(action):
    kube, metrics = RefusingKube(code=413), OperatorMetrics()
    decision = Decision({"state": "Restarting"}, (action, EmitEvent("Normal", "StepStarted", "Canary")))
    result = run(kube, context({"state": "Passed"}), decision, metrics)
    assert kube.calls == [("status", None), ("event", STATUS_REFUSED)]
    assert result.status == {"state": "Passed"} and result.rollback is None


def test_a_refused_rollback_never_widens_and_needs_a_deployment():
    widening = PatchEnv("g", {}, (ENFORCE_SYMBOLS,), "1-7")  # SYM1 -> every symbol
    decision = Decision({"state": "RolledBack", "lastRollback": ROLLBACK}, (widening,))
    kube = RefusingKube()
    run(kube, context({"state": "Observing"}), decision)
    assert ("patch_env", "1-7") not in kube.calls
    kube = RefusingKube()
    r1 = Decision({"state": "RolledBack", "lastRollback": ROLLBACK}, (PatchEnv("g", {ENFORCE: "0"}, (), "1-7"),))
    run(kube, context({"state": "Observing"}, exists=False), r1)
    assert ("patch_env", "1-7") not in kube.calls


def test_a_status_written_with_its_history_trimmed_runs_the_whole_decision():
    kube = RefusingKube(code=413, accept_history_of=25)
    history = [{"action": f"A{i}"} for i in range(100)]
    decision = Decision({"state": "Restarting", "history": history},
                        (PatchEnv("g", {ENFORCE_SYMBOLS: "SYM1,SYM2"}, (), "1-8"),))
    result = run(kube, context({"state": "Passed"}), decision)
    assert kube.calls == [("status", 100), ("status", 50), ("status", 25), ("patch_env", "1-8"),
                          ("event", STATUS_REFUSED)]
    assert result.status_patched and result.status_refused is None and result.history_dropped == 75
    assert result.status["history"] == history[75:]  # the newest kept


def test_no_answer_raises_before_anything_runs():
    class Unreachable(RefusingKube):
        async def patch_rollout_status(self, ns, name, patch):
            self.calls.append(("status", None))
            raise KubernetesError("patch_namespaced_custom_object_status: timed out after 30.0s")

    kube = Unreachable()
    decision = Decision({"state": "RolledBack", "lastRollback": ROLLBACK}, (PatchEnv("g", {ENFORCE: "0"}, (), "1-9"),))
    with pytest.raises(KubernetesError):
        run(kube, context({"state": "Observing"}), decision)
    assert kube.calls == [("status", None)]
