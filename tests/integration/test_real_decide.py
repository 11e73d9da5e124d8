"""The real domain through the real wiring: handlers -> reconciler -> decide -> executor -> adapters.

Only the API server and Prometheus are stand-ins (`fake_world`). A rollout walks
Preflight -> Shadow -> Canary, a circuit-breaker trip rolls it back with R1, and the
crash-safety promises hold: the status (the intent) is written before the env patch, a failed
patch is re-issued with the same restart token, and a Deployment is never restarted twice
for one step.
"""

from __future__ import annotations

import asyncio

import kopf
import pytest
from fake_world import NAME, NS, FakeClock, FakeCluster, FakePrometheus, deployment_body, env_of, rollout_body
from kubernetes.client.exceptions import ApiException

from fillprob_operator import handlers
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import DomainPort
from fillprob_operator.settings import Settings

ENFORCE = "grinder_router_fill_prob_enforce_enabled"
ALLOWLIST = "grinder_router_fill_prob_enforce_allowlist_enabled"
THRESHOLD = "grinder_router_fill_prob_auto_threshold_bps"
CB_TRIPS = "grinder_router_fill_prob_cb_trips_total"
BLOCKS = "grinder_router_fill_prob_blocks_total"
ORDERS = "grinder_router_orders_total"
RECENT_BLOCKS = "increase(grinder_router_fill_prob_blocks_total[1m])"
RECENT_ORDERS = "increase(grinder_router_orders_total[1m])"
PREFLIGHT_OUTPUT = (
    "PASS model_dir\nPASS eval_report\nconfigured_bps=2500\nrecommended_bps=2500\n"
    "effective_bps=2500\nmode=recommend_only\nPREFLIGHT_PASS\n"
)
RESOLUTION_OK = (
    "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=2500 "
    "configured_bps=2500 effective_bps=2500"
)


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
        domain=DomainPort.load(),  # the real parse_spec / status_from_dict / decide
        clock=clock,
        metrics=OperatorMetrics(),
    )
    cluster.put("FillProbRollout", rollout_body(
        observation={"shadow": "60s", "canary": "60s"}, prometheus={"interval": "10s"}))
    cluster.put("Deployment", deployment_body())
    yield cluster, clock, prometheus, memo
    asyncio.run(handlers.cleanup(memo=memo))


def status(cluster: FakeCluster) -> dict:
    return cluster.get("FillProbRollout", NS, NAME).get("status") or {}


def scrape(prometheus: FakePrometheus, pods: list[str], *, enforce: float, allowlist: float, trips: float = 0.0,
           blocks: dict | None = None) -> None:
    prometheus.pods.clear()
    for pod in pods:
        prometheus.pods[(NS, pod)] = {
            ENFORCE: enforce, ALLOWLIST: allowlist, THRESHOLD: 2500.0, CB_TRIPS: trips,
            BLOCKS: blocks or {"SYM1": 0.0, "SYM2": 0.0}, ORDERS: {"SYM1": 100.0, "SYM2": 100.0},
            RECENT_BLOCKS: blocks or {"SYM1": 0.0, "SYM2": 0.0}, RECENT_ORDERS: {"SYM1": 100.0, "SYM2": 100.0},
        }


async def tick(memo, clock: FakeClock, seconds: float = 10.0):
    clock.advance(seconds)
    return await memo.reconciler.tick(NS, NAME)


async def observe_shadow(cluster: FakeCluster, clock: FakeClock, prometheus: FakePrometheus, memo) -> list[str]:
    """Preflight passes, Shadow's pods roll out and are verified: Shadow Observing."""
    await tick(memo, clock, 0)
    cluster.finish_job(NS, status(cluster)["preflight"]["jobName"], exit_code=0, output=PREFLIGHT_OUTPUT)
    await tick(memo, clock)
    pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
    scrape(prometheus, pods, enforce=0.0, allowlist=0.0)
    await tick(memo, clock)
    return pods


def test_preflight_shadow_canary_then_circuit_breaker_rollback(world):
    cluster, clock, prometheus, memo = world
    get = memo.metrics.registry.get_sample_value

    async def scenario():
        outcome = await tick(memo, clock, 0)
        assert outcome.interval == 10.0
        assert (status(cluster)["phase"], status(cluster)["state"]) == ("Preflight", "Preflight")
        job_name = status(cluster)["preflight"]["jobName"]
        job = cluster.get("Job", NS, job_name)
        assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == ["python3", "-m", "scripts.preflight_fill_prob"]
        assert job["metadata"]["ownerReferences"][0]["kind"] == "FillProbRollout"

        await tick(memo, clock)  # Job still running: nothing new
        assert cluster.calls["create_job"] == 1

        cluster.finish_job(NS, job_name, exit_code=0, output=PREFLIGHT_OUTPUT)
        await tick(memo, clock)
        s = status(cluster)
        assert (s["phase"], s["state"], s["threshold"]["recommendedBps"]) == ("Shadow", "Restarting", 2500)
        token = s["restart"]["token"]
        assert cluster.get("Deployment", NS, "grinder")["spec"]["template"]["metadata"]["annotations"] == {
            "grinder.io/restart-token": token}
        env = env_of(cluster)
        assert (env["GRINDER_FILL_MODEL_ENFORCE"], env["GRINDER_FILL_PROB_AUTO_THRESHOLD"], env["UNRELATED"]) == (
            "0", "0", "keep-me")
        assert cluster.calls["patch_deployment"] == 1

        await tick(memo, clock)  # not rolled out yet: no second restart
        assert cluster.calls["patch_deployment"] == 1

        pods = cluster.roll_out(NS, "grinder", log=f"starting\n{RESOLUTION_OK}\n")
        scrape(prometheus, pods, enforce=0.0, allowlist=0.0)
        await tick(memo, clock)
        s = status(cluster)
        assert (s["phase"], s["state"]) == ("Shadow", "Observing"), s.get("message")
        assert get("fillprob_rollout_info", {"namespace": NS, "name": NAME, "phase": "Shadow", "state": "Observing"}) == 1

        await tick(memo, clock, 61)  # the Shadow window has passed
        assert status(cluster)["state"] == "Passed"
        await tick(memo, clock)  # one interval later: on to Canary
        s = status(cluster)
        assert (s["phase"], s["state"], s["enforcedSymbols"]) == ("Canary", "Restarting", ["SYM1"])
        assert env_of(cluster)["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"] == "SYM1"
        assert get("fillprob_rollout_gate_evaluations_total", {"result": "go"}) >= 1

        pods = cluster.roll_out(NS, "grinder", log=f"starting\n{RESOLUTION_OK}\n")
        scrape(prometheus, pods, enforce=1.0, allowlist=1.0, blocks={"SYM1": 3.0, "SYM2": 0.0})
        await tick(memo, clock)
        assert status(cluster)["state"] == "Observing", status(cluster).get("message")

        # a circuit-breaker trip in Canary: R1 (ENFORCE=0, nothing else changed)
        scrape(prometheus, pods, enforce=1.0, allowlist=1.0, trips=1.0, blocks={"SYM1": 3.0, "SYM2": 0.0})
        await tick(memo, clock)
        s = status(cluster)
        assert (s["state"], s["lastRollback"]["playbook"], s["lastRollback"]["reason"]) == (
            "RolledBack", "R1", "CircuitBreakerTripped")
        env = env_of(cluster)
        assert (env["GRINDER_FILL_MODEL_ENFORCE"], env["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"], env["UNRELATED"]) == (
            "0", "SYM1", "keep-me")
        labels = {"namespace": NS, "name": NAME, "playbook": "R1", "reason": "CircuitBreakerTripped"}
        assert get("fillprob_rollout_rollbacks_total", labels) == 1
        assert get("fillprob_rollout_detection_seconds_count") == 1
        assert get("fillprob_rollout_detection_seconds_sum") == 2.0
        assert get("fillprob_rollout_gate_evaluations_total", {"result": "nogo"}) == 1
        reasons = [e["reason"] for e in cluster.events]
        assert reasons[0] == "PreflightStarted" and "CircuitBreakerTripped" in reasons

        # the same no-go seen again while rolled back does not patch or count twice
        patches = cluster.calls["patch_deployment"]
        await tick(memo, clock)
        assert cluster.calls["patch_deployment"] == patches
        assert get("fillprob_rollout_rollbacks_total", labels) == 1

    asyncio.run(scenario())


def test_status_is_written_before_the_patch_and_a_failed_patch_is_reissued_once(world):
    cluster, clock, prometheus, memo = world

    async def scenario():
        await tick(memo, clock, 0)
        cluster.finish_job(NS, status(cluster)["preflight"]["jobName"], exit_code=0, output=PREFLIGHT_OUTPUT)
        cluster.fail_next["patch_deployment"] = ApiException(status=500, reason="etcd leader changed")
        with pytest.raises(Exception):
            await tick(memo, clock)
        s = status(cluster)
        assert s["state"] == "Restarting"  # the intent is recorded
        token = s["restart"]["token"]
        assert "annotations" not in cluster.get("Deployment", NS, "grinder")["spec"]["template"]["metadata"]

        await tick(memo, clock)  # the same restart (same token) is issued again, and applied
        template = cluster.get("Deployment", NS, "grinder")["spec"]["template"]
        assert template["metadata"]["annotations"]["grinder.io/restart-token"] == token
        assert status(cluster)["restart"]["token"] == token
        generation = cluster.get("Deployment", NS, "grinder")["metadata"]["generation"]

        for _ in range(3):  # and never again
            await tick(memo, clock)
        assert cluster.get("Deployment", NS, "grinder")["metadata"]["generation"] == generation
        assert cluster.calls["patch_deployment"] == 2  # the failed one and the applied one

    asyncio.run(scenario())


def test_operator_restart_resumes_from_status(world):
    cluster, clock, prometheus, memo = world

    async def scenario():
        await tick(memo, clock, 0)
        cluster.finish_job(NS, status(cluster)["preflight"]["jobName"], exit_code=0, output=PREFLIGHT_OUTPUT)
        await tick(memo, clock)
        before = status(cluster)
        # a new operator process: nothing in memory but what startup builds
        fresh = kopf.Memo()
        handlers.build_runtime(fresh, Settings(metrics_addr=""), kube=cluster.adapter(clock),
                               connect=lambda url: prometheus, domain=DomainPort.load(), clock=clock,
                               metrics=OperatorMetrics())
        try:
            clock.advance(10)
            await fresh.reconciler.tick(NS, NAME)
        finally:
            await handlers.cleanup(memo=fresh)
        after = status(cluster)
        def restart(st):  # reachedAt: when a tick first saw the token on the Deployment
            return {k: v for k, v in st["restart"].items() if k != "reachedAt"}

        assert (after["phase"], after["state"], restart(after)) == (before["phase"], before["state"], restart(before))
        assert cluster.calls["patch_deployment"] == 1
        assert cluster.calls["create_job"] == 1

    asyncio.run(scenario())


def test_manual_rollback_annotation_with_the_real_domain(world):
    cluster, clock, prometheus, memo = world

    async def scenario():
        await observe_shadow(cluster, clock, prometheus, memo)
        body = cluster.get("FillProbRollout", NS, NAME)
        body["metadata"]["uid"] = "fpr-uid"
        body["metadata"]["annotations"] = {"grinder.io/rollback": "R1"}
        body["metadata"]["managedFields"] = [{"manager": "kubectl-annotate", "time": "2024-05-01T12:01:00Z",
                                              "fieldsV1": {"f:metadata": {"f:annotations": {"f:grinder.io/rollback": {}}}}}]
        await handlers.rollback_requested(namespace=NS, name=NAME, new="R1", memo=memo)
        await tick(memo, clock)
        s = status(cluster)
        # At Shadow enforcement is already off: R1 would not narrow, so it is recorded, not applied
        assert s.get("lastRollback") is None and s["state"] in ("Verifying", "Observing")
        assert (s["history"][-1]["action"], s["history"][-1]["reason"]) == ("RollbackSkipped", "RollbackSkipped")
        assert s["history"][-1]["evidence"]["source"] == "annotation grinder.io/rollback=R1 by kubectl-annotate"
        assert "grinder.io/rollback" not in cluster.get("FillProbRollout", NS, NAME)["metadata"]["annotations"]
        assert memo.metrics.registry.get_sample_value("fillprob_rollout_detection_seconds_count") == 0

    asyncio.run(scenario())


def test_a_deployment_not_in_the_starting_state_is_halted_untouched(world):
    cluster, clock, prometheus, memo = world
    dep = cluster.get("Deployment", NS, "grinder")
    dep["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "GRINDER_FILL_PROB_ENFORCE_SYMBOLS", "value": "SYM9"})

    asyncio.run(tick(memo, clock, 0))
    s = status(cluster)
    assert (s["state"], s["reason"]) == ("Halted", "StartingStateInvalid")
    assert cluster.calls["patch_deployment"] == cluster.calls["create_job"] == 0
    assert [e["reason"] for e in cluster.events] == ["StartingStateInvalid"]


def test_a_bad_rollback_annotation_is_rejected_in_history_and_removed(world):
    cluster, clock, prometheus, memo = world
    body = cluster.get("FillProbRollout", NS, NAME)
    body["metadata"]["annotations"] = {"grinder.io/rollback": "R9"}

    asyncio.run(tick(memo, clock, 0))
    s = status(cluster)
    assert [h["action"] for h in s["history"]][:1] == ["RollbackRejected"]
    assert "R9" in s["history"][0]["evidence"]["source"]
    assert "grinder.io/rollback" not in cluster.get("FillProbRollout", NS, NAME)["metadata"]["annotations"]
    assert s["state"] == "Preflight"  # nothing else changed: the walk goes on


def test_a_stored_alert_waits_while_suspended_and_applies_on_resume(world):
    """A stored alert is removed only once the domain took it into history."""
    from fillprob_operator.adapters.kubernetes import alert_annotation_name
    from fillprob_operator.domain.observations import RollbackRequest

    cluster, clock, prometheus, memo = world

    def stored() -> list[str]:
        annotations = cluster.get("FillProbRollout", NS, NAME)["metadata"].get("annotations") or {}
        return [k for k in annotations if k.startswith("alert.grinder.io/")]


    async def scenario():
        await tick(memo, clock, 0)
        cluster.finish_job(NS, status(cluster)["preflight"]["jobName"], exit_code=0, output=PREFLIGHT_OUTPUT)
        await tick(memo, clock)
        pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
        scrape(prometheus, pods, enforce=0.0, allowlist=0.0)
        await tick(memo, clock)
        cluster.get("FillProbRollout", NS, NAME)["spec"]["suspend"] = True
        await tick(memo, clock)
        assert status(cluster)["state"] == "Suspended"
        request = RollbackRequest(playbook="R1", reason="AlertFired", source="alert test", key="alert:fp1:t0")
        assert await handlers.submit_rollback(memo, request, NS, NAME) is True
        await tick(memo, clock)
        assert stored() == [alert_annotation_name(request.key)]
        cluster.get("FillProbRollout", NS, NAME)["spec"]["suspend"] = False
        await tick(memo, clock)
        assert stored() == []
        assert any(h["evidence"].get("requestKey") == "alert:fp1:t0" for h in status(cluster)["history"])

    asyncio.run(scenario())


def test_a_spec_the_operator_cannot_read_keeps_guarding_the_current_rung(world):
    """API.md, Everyday change: should the operator fail to read a new generation, it keeps
    guarding the current rung with the last spec it applied, Ready=False reason InvalidSpec."""
    cluster, clock, prometheus, memo = world

    async def scenario():
        await observe_shadow(cluster, clock, prometheus, memo)
        await tick(memo, clock, 61)
        await tick(memo, clock)
        pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
        scrape(prometheus, pods, enforce=1.0, allowlist=1.0)
        await tick(memo, clock)
        assert (status(cluster)["phase"], status(cluster)["state"]) == ("Canary", "Observing")
        body = cluster.get("FillProbRollout", NS, NAME)
        body["spec"]["observation"] = {"canary": "not-a-duration"}  # as if a newer CRD had admitted it
        body["metadata"]["generation"] = body["metadata"].get("generation", 1) + 1
        await tick(memo, clock)
        s = status(cluster)
        ready = next(c for c in s["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "spec.observation.canary" in ready["message"] and s["state"] == "Observing"
        scrape(prometheus, pods, enforce=1.0, allowlist=1.0, trips=1.0)
        await tick(memo, clock)
        s = status(cluster)
        assert (s["state"], s["lastRollback"]["playbook"]) == ("RolledBack", "R1")
        assert env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "0"

    asyncio.run(scenario())
