"""A status write the API server refuses never blocks a rollback (issue 9, point 4).

The real domain through the real wiring (as in test_real_decide.py); `RefusingStatus` plays an
API server that answers the status patch with 422 (invalid: every write) or 413 (too large:
when the resulting status is over a size). The promises:
- a rollback still narrows the env, and an Event and a log line say the status was refused;
- a status too large because of its history is written with the oldest entries dropped;
- a climb does not happen while the status cannot be written;
- nothing is applied twice: the next tick sees the Deployment ahead of status and holds;
- an unanswered write (unreachable) or a 5xx keeps status-first: nothing runs.
"""

from __future__ import annotations

import asyncio
import json
import logging

import kopf
import pytest
from fake_world import (
    NAME,
    NS,
    FakeClock,
    FakeCluster,
    FakePrometheus,
    apply_merge_patch,
    deployment_body,
    env_of,
    rollout_body,
)
from kubernetes.client.exceptions import ApiException
from test_real_decide import RESOLUTION_OK, observe_shadow, scrape, status, tick

from fillprob_operator import handlers
from fillprob_operator.adapters.kubernetes import KubernetesError
from fillprob_operator.domain.observations import RollbackRequest
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import DomainPort
from fillprob_operator.settings import Settings


class RefusingStatus:
    """The status subresource of an API server that refuses: `invalid` answers every write
    with 422; `max_bytes` answers 413 when the status after the patch is larger."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.accept = cluster.custom.patch_namespaced_custom_object_status
        cluster.custom.patch_namespaced_custom_object_status = self
        self.invalid = False
        self.max_bytes: int | None = None
        self.refused = 0

    def __call__(self, group, version, namespace, plural, name, body, **kw):
        current = self.cluster.get("FillProbRollout", namespace, name).get("status") or {}
        size = len(json.dumps(apply_merge_patch(current, body["status"])))
        if self.invalid:
            raise self._refuse(422, "Unprocessable Entity", 'FillProbRollout.grinder.io "grinder" is invalid: '
                                                             "status.lastRollback.reason: Invalid value")
        if self.max_bytes is not None and size > self.max_bytes:
            raise self._refuse(413, "Request Entity Too Large", f"the status is {size} bytes")
        return self.accept(group, version, namespace, plural, name, body, **kw)

    def _refuse(self, code: int, reason: str, message: str) -> ApiException:
        self.refused += 1
        self.cluster.calls["patch_status_refused"] += 1
        exc = ApiException(status=code, reason=reason)
        exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": code})
        return exc


@pytest.fixture
def world():
    cluster = FakeCluster()
    clock = FakeClock()
    prometheus = FakePrometheus(clock)
    memo = kopf.Memo()
    handlers.build_runtime(
        memo,
        Settings(prometheus_url="http://prometheus.test:9090", metrics_addr=""),
        kube=cluster.adapter(clock),
        connect=lambda url: prometheus,
        domain=DomainPort.load(),
        clock=clock,
        metrics=OperatorMetrics(),
    )
    cluster.put("FillProbRollout", rollout_body(
        observation={"shadow": "60s", "canary": "60s"}, prometheus={"interval": "10s"}))
    cluster.put("Deployment", deployment_body())
    yield cluster, clock, prometheus, memo, RefusingStatus(cluster)
    asyncio.run(handlers.cleanup(memo=memo))


async def canary_observing(cluster, clock, prometheus, memo) -> list[str]:
    """Preflight, Shadow observed and passed, Canary rolled out and observing (SYM1 enforced)."""
    await observe_shadow(cluster, clock, prometheus, memo)
    await tick(memo, clock, 61)
    await tick(memo, clock)
    pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
    scrape(prometheus, pods, enforce=1.0, allowlist=1.0, blocks={"SYM1": 3.0, "SYM2": 0.0})
    await tick(memo, clock)
    assert (status(cluster)["phase"], status(cluster)["state"]) == ("Canary", "Observing"), status(cluster)
    assert env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "1"
    return pods


def refused_events(cluster: FakeCluster) -> list[str]:
    return [e["message"] for e in cluster.events if e["reason"] == "StatusRefused"]


def test_a_refused_status_does_not_block_a_rollback_and_nothing_is_applied_twice(world, caplog):
    cluster, clock, prometheus, memo, api = world
    rollbacks = {"namespace": NS, "name": NAME, "playbook": "R1", "reason": "CircuitBreakerTripped"}

    async def scenario():
        pods = await canary_observing(cluster, clock, prometheus, memo)
        before = status(cluster)
        patches = cluster.calls["patch_deployment"]

        api.invalid = True  # from now on every status write is refused (422)
        scrape(prometheus, pods, enforce=1.0, allowlist=1.0, trips=1.0, blocks={"SYM1": 3.0, "SYM2": 0.0})
        with caplog.at_level(logging.INFO, logger="fillprob_operator"):
            await tick(memo, clock)  # returns: the refusal is handled, not raised
        # The rollback narrowed the env (R1: ENFORCE=0, nothing else changed) ...
        env = env_of(cluster)
        assert (env["GRINDER_FILL_MODEL_ENFORCE"], env["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"]) == ("0", "SYM1")
        assert cluster.calls["patch_deployment"] == patches + 1
        # ... though the status still says what it said
        assert status(cluster) == before
        # and it is said: a log line and an Event, with the API server's reason
        [line] = [r.getMessage() for r in caplog.records if "event=status_not_written" in r.getMessage()]
        assert "status=422" in line and "narrowing=true" in line and "Invalid value" in line
        [message] = refused_events(cluster)
        assert "422" in message and "narrowing the env anyway (R1, CircuitBreakerTripped)" in message
        assert "CircuitBreakerTripped" in [e["reason"] for e in cluster.events]  # the rollback's own Event
        get = memo.metrics.registry.get_sample_value
        assert get("fillprob_rollout_rollbacks_total", rollbacks) == 1

        # Next ticks, still refused: the Deployment carries a newer token than status, the
        # domain holds; nothing is patched again, nothing is counted again.
        for _ in range(3):
            await tick(memo, clock)
        assert cluster.calls["patch_deployment"] == patches + 1
        assert get("fillprob_rollout_rollbacks_total", rollbacks) == 1
        assert env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "0"

        # The API server takes writes again: the hold is recorded, still no second patch.
        api.invalid = False
        await tick(memo, clock)
        ready = next(c for c in status(cluster)["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "StatusBehindDeployment")
        await tick(memo, clock)
        assert cluster.calls["patch_deployment"] == patches + 1

    asyncio.run(scenario())


def test_a_climb_does_not_happen_while_the_status_is_refused(world, caplog):
    cluster, clock, prometheus, memo, api = world

    async def scenario():
        await observe_shadow(cluster, clock, prometheus, memo)
        await tick(memo, clock, 61)
        assert status(cluster)["state"] == "Passed"  # the next tick climbs to Canary
        patches, jobs = cluster.calls["patch_deployment"], cluster.calls["create_job"]
        api.invalid = True
        with caplog.at_level(logging.INFO, logger="fillprob_operator"):
            for _ in range(3):
                await tick(memo, clock)
        assert cluster.calls["patch_deployment"] == patches and cluster.calls["create_job"] == jobs
        env = env_of(cluster)
        assert env["GRINDER_FILL_MODEL_ENFORCE"] == "0" and "GRINDER_FILL_PROB_ENFORCE_SYMBOLS" not in env
        assert status(cluster)["phase"] == "Shadow"
        lines = [r.getMessage() for r in caplog.records if "event=status_not_written" in r.getMessage()]
        assert lines and all("narrowing=false" in line for line in lines)
        assert "skipped=PatchEnv" in lines[0]  # the climb was decided, and held back
        assert all("nothing applied" in m for m in refused_events(cluster))

        api.invalid = False  # written again: the climb goes ahead, once
        await tick(memo, clock)
        assert (status(cluster)["phase"], env_of(cluster)["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"]) == ("Canary", "SYM1")
        assert cluster.calls["patch_deployment"] == patches + 1

    asyncio.run(scenario())


def test_a_status_too_large_for_its_history_is_written_with_the_oldest_entries_dropped(world, caplog):
    """History has no maxItems in the CRD: a status bloated by long entries (here 3000, 2 KB of
    text each) is refused as too large until its history is trimmed; the rollback goes through
    and the newest entries, the rollback's among them, are kept."""
    cluster, clock, prometheus, memo, api = world

    async def scenario():
        pods = await canary_observing(cluster, clock, prometheus, memo)
        body = cluster.get("FillProbRollout", NS, NAME)
        own = body["status"]["history"]
        filler = [{"at": "2024-05-01T11:00:00Z", "phase": "Shadow", "step": "Shadow", "action": "Note",
                   "reason": "Filler", "evidence": {"text": "ü" * 1000 + str(i)}} for i in range(3000)]
        body["status"]["history"] = filler + own
        api.max_bytes = 120_000
        patches = cluster.calls["patch_deployment"]

        scrape(prometheus, pods, enforce=1.0, allowlist=1.0, trips=1.0, blocks={"SYM1": 3.0, "SYM2": 0.0})
        with caplog.at_level(logging.INFO, logger="fillprob_operator"):
            await tick(memo, clock)
        s = status(cluster)
        assert (s["state"], s["lastRollback"]["playbook"]) == ("RolledBack", "R1")
        assert env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "0"
        assert cluster.calls["patch_deployment"] == patches + 1
        assert s["history"][-1]["action"] == "RollbackR1"
        assert len(json.dumps(s)) <= api.max_bytes
        [line] = [r.getMessage() for r in caplog.records if "event=status_written_trimmed" in r.getMessage()]
        kept = len(s["history"])
        assert f"history_dropped={100 - kept} history_kept={kept}" in line  # of the 100 decide() keeps
        [message] = refused_events(cluster)
        assert "413" in message and f"{100 - kept} oldest history entries dropped" in message

        refusals = api.refused
        await tick(memo, clock)  # nothing new: no write at all, no patch
        assert api.refused == refusals and cluster.calls["patch_deployment"] == patches + 1

    asyncio.run(scenario())


@pytest.mark.parametrize("failure", [
    ConnectionRefusedError("connection refused"),  # no answer: KubernetesError without a status
    ApiException(status=500, reason="etcd leader changed"),
    ApiException(status=429, reason="Too Many Requests"),
])
def test_an_unanswered_or_failed_status_write_keeps_status_first(world, failure):
    cluster, clock, prometheus, memo, api = world

    async def scenario():
        pods = await canary_observing(cluster, clock, prometheus, memo)
        before, patches = status(cluster), cluster.calls["patch_deployment"]
        scrape(prometheus, pods, enforce=1.0, allowlist=1.0, trips=1.0, blocks={"SYM1": 3.0, "SYM2": 0.0})
        cluster.fail_next["patch_status"] = failure
        with pytest.raises(KubernetesError):
            await tick(memo, clock)
        assert status(cluster) == before and cluster.calls["patch_deployment"] == patches
        assert env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "1"
        await tick(memo, clock)  # answered again: status first, then the rollback
        assert status(cluster)["state"] == "RolledBack" and env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "0"

    asyncio.run(scenario())


def test_a_refused_alert_rollback_narrows_and_keeps_the_stored_alert(world):
    """The alert that asked is not removed while no status records that it was taken; it is
    not applied a second time either."""
    cluster, clock, prometheus, memo, api = world

    def stored() -> list[str]:
        annotations = cluster.get("FillProbRollout", NS, NAME)["metadata"].get("annotations") or {}
        return [k for k in annotations if k.startswith("alert.grinder.io/")]

    async def scenario():
        await canary_observing(cluster, clock, prometheus, memo)
        patches = cluster.calls["patch_deployment"]
        api.invalid = True
        request = RollbackRequest(playbook="R1", reason="AlertFired", source="alert test", key="alert:fp9:t0",
                                  evidence={"startsAt": "2024-05-01T12:00:00Z"})
        assert await handlers.submit_rollback(memo, request, NS, NAME) is True
        await tick(memo, clock)
        assert env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "0"
        assert len(stored()) == 1
        for _ in range(2):
            await tick(memo, clock)
        assert cluster.calls["patch_deployment"] == patches + 1

    asyncio.run(scenario())
