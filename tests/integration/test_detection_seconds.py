"""fillprob_rollout_detection_seconds counts from when the no-go could first be seen.

The newest samples alone under-count (a scrape every second, an evaluation every interval:
the trip showed in Prometheus up to an interval before the evaluation that acted on it).
The previous evaluation that looked at the same rollout's data and found no no-go bounds it:
the no-go became visible after that look.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import kopf
import pytest
from fake_world import NAME, NS, FakeClock, FakeCluster, FakePrometheus, deployment_body, rollout_body

from fillprob_operator import handlers
from fillprob_operator.adapters.executor import detection_start
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import DomainPort
from fillprob_operator.settings import Settings

PREFLIGHT_OUTPUT = (
    "PASS model_dir\nPASS eval_report\nconfigured_bps=2500\nrecommended_bps=2500\n"
    "effective_bps=2500\nmode=recommend_only\nPREFLIGHT_PASS\n"
)
RESOLUTION_OK = (
    "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=2500 "
    "configured_bps=2500 effective_bps=2500"
)


def test_detection_start_takes_the_earlier_bound():
    t = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert detection_start(None, None) is None
    assert detection_start(None, t) == t
    assert detection_start(t - timedelta(seconds=10), t) == t - timedelta(seconds=10)
    assert detection_start(t, t - timedelta(seconds=3)) == t - timedelta(seconds=3)


@pytest.fixture
def world():
    cluster, clock = FakeCluster(), FakeClock()
    prometheus = FakePrometheus(clock)
    memo = kopf.Memo()
    handlers.build_runtime(
        memo,
        Settings(prometheus_url="http://prometheus.test:9090", metrics_addr=""),
        kube=cluster.adapter(clock), connect=lambda url: prometheus, domain=DomainPort.load(),
        clock=clock, metrics=OperatorMetrics(),
    )
    cluster.put("FillProbRollout", rollout_body(
        targetPhase="Shadow", observation={"shadow": "10m"}, prometheus={"interval": "10s"}))
    cluster.put("Deployment", deployment_body())
    yield cluster, clock, prometheus, memo
    asyncio.run(handlers.cleanup(memo=memo))


def shadow_pods(prometheus: FakePrometheus, pods: list[str], trips: float) -> None:
    prometheus.pods.clear()
    for pod in pods:
        prometheus.pods[(NS, pod)] = {
            "grinder_router_fill_prob_enforce_enabled": 0.0,
            "grinder_router_fill_prob_enforce_allowlist_enabled": 0.0,
            "grinder_router_fill_prob_auto_threshold_bps": 2500.0,
            "grinder_router_fill_prob_cb_trips_total": trips,
        }


def test_a_halt_is_not_timed(world):
    cluster, clock, prometheus, memo = world
    get = memo.metrics.registry.get_sample_value

    async def tick(seconds: float) -> dict:
        clock.advance(seconds)
        await memo.reconciler.tick(NS, NAME)
        return cluster.get("FillProbRollout", NS, NAME)["status"]

    async def scenario():
        await tick(0)
        cluster.finish_job(NS, cluster.get("FillProbRollout", NS, NAME)["status"]["preflight"]["jobName"],
                           exit_code=0, output=PREFLIGHT_OUTPUT)
        assert (await tick(10))["state"] == "Restarting"
        pods = cluster.roll_out(NS, "grinder", log=f"start\n{RESOLUTION_OK}\n")
        shadow_pods(prometheus, pods, trips=0.0)
        assert (await tick(10))["state"] == "Observing"
        assert (await tick(10))["state"] == "Observing"  # a clean look at the pods' data, at T
        shadow_pods(prometheus, pods, trips=1.0)
        st = await tick(10)  # T + 10s: the trip (samples 2s old) -> Halt in Shadow, not timed
        assert st["state"] == "Halted"
        assert get("fillprob_rollout_detection_seconds_count") == 0

    asyncio.run(scenario())


def test_rollback_detection_uses_the_previous_clean_look(world):
    """Canary: the trip is R1; timed from the clean look 10s before, not from the 2s-old samples."""
    cluster, clock, prometheus, memo = world
    get = memo.metrics.registry.get_sample_value
    body = cluster.get("FillProbRollout", NS, NAME)
    body["spec"].update(targetPhase="Canary", canarySymbols=["SYM1"], observation={"shadow": "10s", "canary": "10m"})

    async def tick(seconds: float) -> dict:
        clock.advance(seconds)
        await memo.reconciler.tick(NS, NAME)
        return cluster.get("FillProbRollout", NS, NAME)["status"]

    def canary_pods(pods: list[str], trips: float) -> None:
        shadow_pods(prometheus, pods, trips)
        for pod in pods:
            prometheus.pods[(NS, pod)].update({
                "grinder_router_fill_prob_enforce_enabled": 1.0,
                "grinder_router_fill_prob_enforce_allowlist_enabled": 1.0,
            })

    async def scenario():
        await tick(0)
        cluster.finish_job(NS, cluster.get("FillProbRollout", NS, NAME)["status"]["preflight"]["jobName"],
                           exit_code=0, output=PREFLIGHT_OUTPUT)
        await tick(10)
        pods = cluster.roll_out(NS, "grinder", log=f"start\n{RESOLUTION_OK}\n")
        shadow_pods(prometheus, pods, trips=0.0)
        assert (await tick(10))["state"] == "Observing"
        assert (await tick(11))["state"] == "Passed"  # the Shadow window passed
        st = await tick(10)  # one interval later: Canary restarts
        assert (st["phase"], st["state"]) == ("Canary", "Restarting"), st
        pods = cluster.roll_out(NS, "grinder", log=f"start\n{RESOLUTION_OK}\n")
        canary_pods(pods, trips=0.0)
        assert (await tick(10))["state"] == "Observing"
        assert (await tick(10))["state"] == "Observing"  # clean look at T
        canary_pods(pods, trips=1.0)
        st = await tick(10)  # T + 10s
        assert st["state"] == "RolledBack" and st["lastRollback"]["playbook"] == "R1"
        assert get("fillprob_rollout_detection_seconds_count") == 1
        assert get("fillprob_rollout_detection_seconds_sum") == 10.0  # not 2.0 (the samples' age)

    asyncio.run(scenario())
