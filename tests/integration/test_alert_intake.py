"""Durable alert intake (API.md, Everyday change: "Alert intake is durable").

The receiver stores each accepted alert on the FillProbRollout (an `alert.grinder.io/`
annotation) before it answers 200; the rollout's tick takes it into `decide()` and removes the
annotation only after the status that records it is written. Through the real wiring: the
webhook app, `handlers.submit_rollback`, the adapter, the reconciler and the real domain; only
the API server (`fake_world.FakeCluster`) and Prometheus are stand-ins.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging

import kopf
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fake_world import NAME, NS, FakeClock, FakeCluster, FakePrometheus, deployment_body, rollout_body
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from kubernetes.client.exceptions import ApiException
from test_real_decide import PREFLIGHT_OUTPUT, RESOLUTION_OK, scrape

from fillprob_operator import handlers
from fillprob_operator.adapters.kubernetes import (
    KubernetesError,
    alert_annotation_name,
    decode_rollback_request,
    encode_rollback_request,
    is_alert_annotation,
)
from fillprob_operator.domain.observations import RollbackRequest
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import ALERTS_PER_TICK, DomainPort, taken_request_keys
from fillprob_operator.settings import Settings
from fillprob_operator.webhook import make_webhook_app

TOKEN = "t0ken"
PLAYBOOKS = ("R1", "", "R2", "R3")


class World:
    """One FillProbRollout and its Deployment behind a fake API server, and an operator process
    (`memo`) that can be restarted: a fresh one keeps nothing but what the cluster holds."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.cluster, self.clock = FakeCluster(), FakeClock()
        self.prometheus = FakePrometheus(self.clock)
        self.settings = settings or Settings(prometheus_url="http://prometheus.test:9090", metrics_addr="")
        self.cluster.put("FillProbRollout", rollout_body(
            observation={"shadow": "60s", "canary": "60s"}, prometheus={"interval": "10s"}))
        self.cluster.put("Deployment", deployment_body())
        self.memo = self._start()

    def _start(self) -> kopf.Memo:
        memo = kopf.Memo()
        handlers.build_runtime(
            memo, self.settings, kube=self.cluster.adapter(self.clock), connect=lambda url: self.prometheus,
            domain=DomainPort.load(), clock=self.clock, metrics=OperatorMetrics(),
        )
        return memo

    def restart(self) -> None:
        asyncio.run(handlers.cleanup(memo=self.memo))
        self.memo = self._start()

    def close(self) -> None:
        asyncio.run(handlers.cleanup(memo=self.memo))

    async def tick(self, seconds: float = 10.0) -> None:
        self.clock.advance(seconds)
        await self.memo.reconciler.tick(NS, NAME)

    async def to_canary_observing(self) -> None:
        """Preflight, Shadow (verified, window passed), Canary verified: enforcement on SYM1."""
        await self.tick(0)
        self.cluster.finish_job(NS, self.status()["preflight"]["jobName"], exit_code=0, output=PREFLIGHT_OUTPUT)
        await self.tick()
        pods = self.cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
        scrape(self.prometheus, pods, enforce=0.0, allowlist=0.0)
        await self.tick()
        await self.tick(61)
        await self.tick()
        pods = self.cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
        scrape(self.prometheus, pods, enforce=1.0, allowlist=1.0)
        await self.tick()
        assert (self.status()["phase"], self.status()["state"]) == ("Canary", "Observing"), self.status()

    def rollout(self) -> dict:
        return self.cluster.get("FillProbRollout", NS, NAME)

    def status(self) -> dict:
        return self.rollout().get("status") or {}

    def stored(self) -> dict[str, str]:
        return {k: v for k, v in (self.rollout()["metadata"].get("annotations") or {}).items() if is_alert_annotation(k)}

    def applied(self, key: str) -> list[dict]:
        return [h for h in self.status().get("history") or () if h.get("evidence", {}).get("requestKey") == key]

    def env(self) -> dict:
        container = self.cluster.get("Deployment", NS, "grinder")["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}


@pytest.fixture
def world():
    world = World()
    yield world
    world.close()


def alert(fingerprint: str = "fp1", starts_at: str = "2026-01-02T03:04:05Z", rollout: str = NAME,
          namespace: str = NS, **labels: str) -> dict:
    return {
        "status": "firing", "startsAt": starts_at, "fingerprint": fingerprint,
        "labels": {"alertname": "FillProbCircuitBreakerTripped", "fillprob_rollout": rollout,
                   "namespace": namespace, **labels},
        "annotations": {"summary": "circuit breaker tripped"},
    }


def request(i: int) -> RollbackRequest:
    """Alert i as the receiver makes it (the same request for each re-send)."""
    playbook = PLAYBOOKS[i % len(PLAYBOOKS)]
    return RollbackRequest(
        playbook=playbook, reason="AlertFired", source=f"FillProbCircuitBreakerTripped{{fp=\"{i}\"}}",
        evidence={"alertname": "FillProbCircuitBreakerTripped", "startsAt": f"2026-01-02T03:04:{i:02}Z",
                  "fingerprint": f"fp{i}", "labels": {"rollback": playbook}},
        key=f"alert:fp{i}:2026-01-02T03:04:{i:02}Z",
    )


async def post(world: World, *alerts: dict, client: TestClient | None = None) -> tuple[int, dict]:
    """POST /alertmanager to a receiver whose `submit` is the operator's (`submit_rollback`)."""
    body = json.dumps({"version": "4", "status": "firing", "alerts": list(alerts)})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    if client is not None:
        resp = await client.post("/alertmanager", data=body, headers=headers)
        return resp.status, await resp.json()
    app = make_webhook_app(lambda: TOKEN, functools.partial(handlers.submit_rollback, world.memo))
    async with TestClient(TestServer(app, host="127.0.0.1")) as fresh:
        return await post(world, *alerts, client=fresh)


# ---------------------------------------------------------------------------- the receiver


def test_200_means_stored_on_the_rollout(world):
    status, body = asyncio.run(post(world, alert(rollback="R1")))
    assert status == 200 and len(body["accepted"]) == 1, body
    ((name, value),) = world.stored().items()
    stored = decode_rollback_request(name, value)
    assert stored.key == "alert:fp1:2026-01-02T03:04:05Z" and name == alert_annotation_name(stored.key)
    assert (stored.playbook, stored.reason, stored.evidence["labels"]["rollback"]) == ("R1", "AlertFired", "R1")
    assert value == encode_rollback_request(stored)  # compact JSON of the request


def test_a_failed_write_is_503_and_the_retry_stores_it(world):
    world.cluster.fail_next["merge_rollout"] = ApiException(status=500, reason="etcdserver: request timed out")
    status, body = asyncio.run(post(world, alert()))
    assert status == 503 and body["accepted"] == [] and "500" in body["failed"][0]["reason"], body
    assert world.stored() == {}
    status, body = asyncio.run(post(world, alert()))  # Alertmanager retries 5xx
    assert status == 200 and len(body["accepted"]) == 1
    assert len(world.stored()) == 1


def test_an_unreachable_api_server_is_503(world):
    world.cluster.fail_next["merge_rollout"] = ConnectionRefusedError("connection refused")
    status, body = asyncio.run(post(world, alert("a"), alert("b")))
    assert status == 503 and [f["fingerprint"] for f in body["failed"]] == ["a", "b"], body
    assert body["failed"][1]["reason"].startswith("not tried")


def test_annotations_over_the_size_limit_are_503_and_the_others_of_the_payload_stay_stored(world):
    world.cluster.annotation_bytes = 3000
    huge = alert("huge", summary="x")
    huge["annotations"] = {f"a{i}": "y" * 1000 for i in range(3)}
    status, body = asyncio.run(post(world, alert("small"), huge))
    assert status == 503, body
    assert [a["fingerprint"] for a in body["accepted"]] == ["small"]
    assert "422" in body["failed"][0]["reason"]
    assert [decode_rollback_request(k, v).evidence["fingerprint"] for k, v in world.stored().items()] == ["small"]


def test_an_absent_rollout_or_an_unwatched_namespace_is_rejected(world):
    world.memo.config = Settings(namespaces=(NS,))
    status, body = asyncio.run(post(world, alert("a", rollout="nobody"), alert("b", namespace="elsewhere")))
    assert status == 200 and body["accepted"] == [], body
    assert {r["fingerprint"] for r in body["rejected"]} == {"a", "b"}
    assert world.cluster.calls["merge_rollout"] == 1  # the unwatched namespace: not even tried
    assert world.stored() == {}


def test_a_standby_or_starting_operator_accepts_and_the_active_one_applies(world):
    """No daemon runs in the process that answered; the annotation carries the alert over."""
    asyncio.run(world.to_canary_observing())
    assert world.memo.rollouts == set()
    status, body = asyncio.run(post(world, alert(rollback="R1")))
    assert status == 200 and body["accepted"], body
    world.restart()  # the active replica, or this one after a restart
    asyncio.run(world.tick())
    assert world.status()["lastRollback"]["reason"] == "AlertFired"
    assert world.env()["GRINDER_FILL_MODEL_ENFORCE"] == "0"
    assert world.stored() == {}


def test_duplicates_are_stored_once_and_re_sends_change_nothing(world):
    async def scenario():
        await world.to_canary_observing()
        app = make_webhook_app(lambda: TOKEN, functools.partial(handlers.submit_rollback, world.memo))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            status, body = await post(world, alert(rollback="R1"), alert(rollback="R1"), client=client)
            assert status == 200 and len(body["accepted"]) == 1 and len(body["ignored"]) == 1
            assert world.cluster.calls["merge_rollout"] == 1
            await world.tick()
            patches = world.cluster.calls["patch_deployment"]
            status, body = await post(world, alert(rollback="R1"), client=client)  # a re-send, here
            assert status == 200 and body["ignored"][0]["reason"].startswith("duplicate")
        # ... and to another replica, which does not remember it: stored again, not applied again.
        status, body = await post(world, alert(rollback="R1"))
        assert status == 200 and len(body["accepted"]) == 1
        await world.tick()
        assert world.stored() == {}
        assert world.cluster.calls["patch_deployment"] == patches
        assert len(world.applied("alert:fp1:2026-01-02T03:04:05Z")) == 1

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- the tick


def test_an_alert_stored_before_a_restart_is_applied_once_and_cleared(world):
    async def scenario():
        await world.to_canary_observing()
        status, _ = await post(world, alert(rollback="R1"))
        assert status == 200

    asyncio.run(scenario())
    world.restart()  # nothing in memory: only the annotation knows the alert
    asyncio.run(world.tick())
    key = "alert:fp1:2026-01-02T03:04:05Z"
    assert [h["action"] for h in world.applied(key)] == ["RollbackR1"]
    assert world.status()["lastRollback"]["reason"] == "AlertFired"
    assert world.stored() == {}
    patches = world.cluster.calls["patch_deployment"]
    world.restart()
    asyncio.run(world.tick())
    assert len(world.applied(key)) == 1 and world.cluster.calls["patch_deployment"] == patches


def test_a_crash_between_the_status_write_and_the_removal_applies_nothing_twice(world, caplog):
    asyncio.run(world.to_canary_observing())
    asyncio.run(handlers.submit_rollback(world.memo, request(0), NS, NAME))
    world.cluster.fail_next["merge_rollout"] = ApiException(status=503, reason="Service Unavailable")
    with caplog.at_level(logging.WARNING, logger="fillprob_operator"):
        asyncio.run(world.tick())
    assert "event=alerts_not_removed" in caplog.text
    assert len(world.applied(request(0).key)) == 1  # the status is written ...
    assert list(world.stored()) == [alert_annotation_name(request(0).key)]  # ... the alert not removed
    patches = world.cluster.calls["patch_deployment"]
    world.restart()
    asyncio.run(world.tick())
    assert len(world.applied(request(0).key)) == 1
    assert world.cluster.calls["patch_deployment"] == patches
    assert world.stored() == {}


def test_a_re_send_after_history_rolled_over_is_removed_not_applied(world):
    """History keeps 100 entries; status.requestKeys is what the domain dedupes by after that.
    A stored alert whose key is only there is taken all the same: removed, not applied, and
    never left to take a place among the ALERTS_PER_TICK of every later tick."""
    asyncio.run(world.to_canary_observing())
    asyncio.run(handlers.submit_rollback(world.memo, request(0), NS, NAME))
    asyncio.run(world.tick())
    status = world.status()
    status["history"] = [h for h in status["history"] if h.get("evidence", {}).get("requestKey") != request(0).key]
    assert request(0).key in status["requestKeys"]
    asyncio.run(handlers.submit_rollback(world.memo, request(0), NS, NAME))  # Alertmanager's re-send
    patches = world.cluster.calls["patch_deployment"]
    asyncio.run(world.tick())
    assert world.stored() == {}
    assert world.applied(request(0).key) == [] and world.cluster.calls["patch_deployment"] == patches


def test_hostile_alert_annotations_are_removed_with_a_warning_and_the_tick_goes_on(world, caplog):
    asyncio.run(world.to_canary_observing())
    good = request(0)
    annotations = world.rollout()["metadata"].setdefault("annotations", {})
    manual = json.loads(encode_rollback_request(request(1)))
    hostile = {
        "alert.grinder.io/notjson": "{oops",
        "alert.grinder.io/nested": "[" * 5000 + "]" * 5000,
        "alert.grinder.io/huge-evidence": json.dumps({**manual, "evidence": {"a": {"b": {"c": "d"}}}}),
        alert_annotation_name(request(1).key): json.dumps({**manual, "reason": "ManualRollback"}),
        alert_annotation_name(request(2).key): encode_rollback_request(request(3)),  # not its name
    }
    annotations.update(hostile)
    annotations[alert_annotation_name(good.key)] = encode_rollback_request(good)
    with caplog.at_level(logging.WARNING, logger="fillprob_operator"):
        asyncio.run(world.tick())
    assert caplog.text.count("event=alert_annotation_unreadable") == len(hostile)
    assert world.stored() == {}
    assert [h["action"] for h in world.applied(good.key)] == ["RollbackR1"]
    assert world.applied(request(1).key) == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fillprob_operator"):
        asyncio.run(world.tick())
    assert "alert_annotation_unreadable" not in caplog.text


def test_a_flood_is_taken_in_bounded_bites(world):
    asyncio.run(world.to_canary_observing())
    flood = [request(i) for i in range(ALERTS_PER_TICK + 10)]
    for r in flood:
        assert asyncio.run(handlers.submit_rollback(world.memo, r, NS, NAME))
    asyncio.run(world.tick())
    assert len(world.stored()) == 10
    assert sum(1 for r in flood if world.applied(r.key)) == ALERTS_PER_TICK
    asyncio.run(world.tick())
    assert world.stored() == {}
    assert all(r.key in taken_request_keys(world.status()) for r in flood)


# ---------------------------------------------------------------------------- the promise


class AlertIntake(RuleBasedStateMachine):
    """Random sequences of: store an alert, re-send one, tick, crash before the removal, restart,
    suspend/resume. After every step: no alert applied twice, none accepted and lost (its
    annotation is there, or the domain has taken its key). At the end every stored alert is
    applied or recorded, and cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        asyncio.run(self.world.to_canary_observing())
        self.accepted: dict[str, RollbackRequest] = {}

    def _store(self, r: RollbackRequest) -> None:
        try:
            if asyncio.run(handlers.submit_rollback(self.world.memo, r, NS, NAME)):
                self.accepted[r.key] = r
        except KubernetesError:
            pass  # 503: not accepted, Alertmanager retries

    @rule(i=st.integers(0, 7))
    def store_alert(self, i: int) -> None:
        self._store(request(i))

    @precondition(lambda self: self.accepted)
    @rule(data=st.data())
    def re_send(self, data: st.DataObject) -> None:
        self._store(data.draw(st.sampled_from(sorted(self.accepted.values(), key=lambda r: r.key))))

    @rule(i=st.integers(0, 7))
    def store_fails(self, i: int) -> None:
        self.world.cluster.fail_next["merge_rollout"] = ApiException(status=500, reason="Internal Server Error")
        self._store(request(i))
        self.world.cluster.fail_next.pop("merge_rollout", None)

    @rule()
    def tick(self) -> None:
        asyncio.run(self.world.tick())

    @rule()
    def crash_before_clear(self) -> None:
        self.world.cluster.fail_next["merge_rollout"] = ApiException(status=503, reason="Service Unavailable")
        asyncio.run(self.world.tick())
        self.world.cluster.fail_next.pop("merge_rollout", None)
        self.world.restart()

    @rule()
    def restart(self) -> None:
        self.world.restart()

    @rule()
    def toggle_suspend(self) -> None:
        spec = self.world.rollout()["spec"]
        spec["suspend"] = not spec.get("suspend", False)

    @invariant()
    def applied_at_most_once(self) -> None:
        for key in self.accepted:
            assert len(self.world.applied(key)) <= 1, key

    @invariant()
    def none_accepted_is_lost(self) -> None:
        taken = taken_request_keys(self.world.status())
        for key in self.accepted:
            assert alert_annotation_name(key) in self.world.stored() or key in taken, key

    def teardown(self) -> None:
        try:
            self.world.rollout()["spec"]["suspend"] = False
            asyncio.run(self.world.tick())
            asyncio.run(self.world.tick())
            assert self.world.stored() == {}
            taken = taken_request_keys(self.world.status())
            for key in self.accepted:
                assert key in taken and len(self.world.applied(key)) == 1, key
        finally:
            self.world.close()


TestAlertIntake = AlertIntake.TestCase
# ~30s. 100 examples are what it took to find "removed while suspended, before it was taken"
# (a deliberate mutation of the reconciler); 40 missed it.
TestAlertIntake.settings = settings(max_examples=100, stateful_step_count=12)
