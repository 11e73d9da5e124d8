"""Watch-backed caches through the real wiring (issue 10, point 1): `Reconciler.tick` with the
real domain, the adapter reading Deployments, ReplicaSets, Pods and Jobs from caches that
fake_world's `WatchFeed` fills from the fake API's writes, when the test says so.

Steady state makes no Deployment, ReplicaSet or Pod request; our own env patch is seen at
once even when the watch has not delivered it; a dropped watch means direct reads (today's
behaviour) until it is listed again; a lagging watch only delays a step, never changes it."""

from __future__ import annotations

import asyncio

import kopf
import pytest
from fake_world import NAME, NS, FakeClock, FakeCluster, FakePrometheus, WatchFeed, deployment_body, rollout_body
from test_real_decide import PREFLIGHT_OUTPUT, RESOLUTION_OK, scrape, status

from fillprob_operator import handlers
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import DomainPort
from fillprob_operator.settings import Settings

WORKLOAD_READS = ("read_deployment", "list_replica_sets", "list_pods", "read_job")


@pytest.fixture
def world():
    cluster = FakeCluster()
    clock = FakeClock()
    prometheus = FakePrometheus(clock)
    memo = kopf.Memo()
    cluster.put("FillProbRollout", rollout_body(
        observation={"shadow": "60s", "canary": "60s"}, prometheus={"interval": "10s"}))
    cluster.put("Deployment", deployment_body())
    feed = WatchFeed(cluster, NS)
    feed.sync()
    handlers.build_runtime(
        memo,
        Settings(prometheus_url="http://prometheus.test:9090", metrics_addr=""),
        kube=cluster.adapter(clock, caches=feed.caches),
        connect=lambda url: prometheus,
        domain=DomainPort.load(),
        clock=clock,
        metrics=OperatorMetrics(),
    )
    yield cluster, clock, prometheus, memo, feed
    asyncio.run(handlers.cleanup(memo=memo))


def reads(cluster: FakeCluster) -> dict:
    return {m: cluster.calls[m] for m in WORKLOAD_READS if cluster.calls[m]}


async def tick(memo, clock, seconds=10.0):
    clock.advance(seconds)
    return await memo.reconciler.tick(NS, NAME)


async def to_shadow_observing(cluster, clock, prometheus, memo, feed) -> list[str]:
    await tick(memo, clock, 0)
    feed.deliver()
    cluster.finish_job(NS, status(cluster)["preflight"]["jobName"], exit_code=0, output=PREFLIGHT_OUTPUT)
    feed.deliver()
    await tick(memo, clock)
    assert (status(cluster)["phase"], status(cluster)["state"]) == ("Shadow", "Restarting")
    pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
    scrape(prometheus, pods, enforce=0.0, allowlist=0.0)
    feed.deliver()
    await tick(memo, clock)
    assert (status(cluster)["phase"], status(cluster)["state"]) == ("Shadow", "Observing"), status(cluster)
    return pods


def test_steady_state_ticks_make_no_workload_requests(world):
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        feed.deliver()
        before, writes = reads(cluster), cluster.calls["patch_status"]
        for _ in range(5):
            await tick(memo, clock)
            feed.deliver()  # a status write, if any, reaches the caches as a bookmark
        assert reads(cluster) == before, "a steady-state tick read the workload directly"
        assert status(cluster)["state"] == "Observing"
        # The rollout itself is still read once a tick (kept: see STAGE_B_NOTES.md).
        assert cluster.calls["patch_status"] - writes <= 5

    asyncio.run(scenario())


def test_our_env_patch_is_seen_before_the_watch_delivers_it(world):
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await tick(memo, clock, 0)
        feed.deliver()
        cluster.finish_job(NS, status(cluster)["preflight"]["jobName"], exit_code=0, output=PREFLIGHT_OUTPUT)
        feed.deliver()
        await tick(memo, clock)  # writes Restarting, then patches env + token
        assert cluster.calls["patch_deployment"] == 1
        for _ in range(3):  # the watch delivers nothing: a lagging cache must not undo our write
            await tick(memo, clock)
        assert cluster.calls["patch_deployment"] == 1
        s = status(cluster)
        assert (s["phase"], s["state"]) == ("Shadow", "Restarting"), s.get("message")

    asyncio.run(scenario())


def test_a_dropped_watch_means_direct_reads_until_listed_again(world):
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        feed.deliver()
        feed.drop()
        before = reads(cluster)
        await tick(memo, clock)
        after = reads(cluster)
        assert after["read_deployment"] == before.get("read_deployment", 0) + 1
        assert after["list_replica_sets"] == before.get("list_replica_sets", 0) + 1
        assert after["list_pods"] == before.get("list_pods", 0) + 1
        assert status(cluster)["state"] == "Observing"
        feed.sync()
        await tick(memo, clock)
        assert reads(cluster) == after

    asyncio.run(scenario())


def test_a_lagging_watch_delays_a_step_and_never_changes_it(world):
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await tick(memo, clock, 0)
        feed.deliver()
        job = status(cluster)["preflight"]["jobName"]
        cluster.finish_job(NS, job, exit_code=0, output=PREFLIGHT_OUTPUT)
        await tick(memo, clock)  # the Job's end is not delivered: the cache says Running
        assert status(cluster)["state"] == "Preflight"
        feed.deliver()
        await tick(memo, clock)
        assert (status(cluster)["phase"], status(cluster)["state"]) == ("Shadow", "Restarting")
        feed.deliver()  # the caches have seen the rollout's last write, not what follows
        pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
        scrape(prometheus, pods, enforce=0.0, allowlist=0.0)
        before = reads(cluster)
        await tick(memo, clock)  # the new pods are not delivered yet: still Restarting
        assert status(cluster)["state"] == "Restarting" and reads(cluster) == before
        feed.deliver()
        await tick(memo, clock)
        assert (status(cluster)["phase"], status(cluster)["state"]) == ("Shadow", "Observing")
        assert cluster.calls["patch_deployment"] == 1 and cluster.calls["create_job"] == 1

    asyncio.run(scenario())


def test_caches_that_never_saw_the_rollouts_last_write_are_not_read(world):
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        cluster.touch("FillProbRollout", NS, NAME)  # e.g. someone annotated it: a newer floor
        before = reads(cluster)
        await tick(memo, clock)
        assert reads(cluster)["read_deployment"] == before["read_deployment"] + 1
        feed.deliver()
        before = reads(cluster)
        await tick(memo, clock)
        assert reads(cluster) == before

    asyncio.run(scenario())


def test_replica_sets_and_pods_are_never_older_than_the_deployment_they_are_judged_against():
    """The Deployment read directly (its cache lags) is newer than the ReplicaSet and Pod caches:
    those are then listed too, never mixed with an older view (as direct reads, made after it)."""
    cluster, clock = FakeCluster(), FakeClock()
    cluster.put("FillProbRollout", rollout_body())
    cluster.put("Deployment", deployment_body())
    feed = WatchFeed(cluster, NS)
    cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
    feed.sync()
    adapter = cluster.adapter(clock, caches=feed.caches)
    floor = int(cluster.get("FillProbRollout", NS, NAME)["metadata"]["resourceVersion"])

    async def observe(floor):
        return await adapter.observe_deployment(NS, "grinder", "grinder", rollout=NAME, floor=floor)

    seen = asyncio.run(observe(floor))
    assert reads(cluster) == {} and len(seen.new_pods) == 2
    cluster.get("Deployment", NS, "grinder")["spec"]["replicas"] = 3
    pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")  # new RS, 3 new pods; not delivered
    cluster.touch("FillProbRollout", NS, NAME)
    floor = int(cluster.get("FillProbRollout", NS, NAME)["metadata"]["resourceVersion"])
    seen = asyncio.run(observe(floor))
    assert [p.pod for p in seen.new_pods] == pods
    assert reads(cluster) == {"read_deployment": 1, "list_replica_sets": 1, "list_pods": 1}
    feed.deliver()
    seen = asyncio.run(observe(floor))
    assert [p.pod for p in seen.new_pods] == pods and reads(cluster) == {
        "read_deployment": 1, "list_replica_sets": 1, "list_pods": 1}


def test_a_deployment_cache_ahead_of_the_pod_cache_means_the_pods_are_listed():
    cluster, clock = FakeCluster(), FakeClock()
    cluster.put("FillProbRollout", rollout_body())
    cluster.put("Deployment", deployment_body())
    feed = WatchFeed(cluster, NS)
    feed.sync()
    adapter = cluster.adapter(clock, caches=feed.caches)
    floor = int(cluster.get("FillProbRollout", NS, NAME)["metadata"]["resourceVersion"])
    pods = cluster.roll_out(NS, "grinder", log=f"{RESOLUTION_OK}\n")
    for rv, kind, type_, obj in cluster.watch_log:  # only the Deployments' watch has delivered
        if kind == "Deployment":
            feed.caches.deployments.apply_event(NS, {"type": type_, "object": obj})
        else:
            feed.caches.deployments.apply_event(NS, {"type": "BOOKMARK", "object": {
                "metadata": {"resourceVersion": str(rv)}}})
    seen = asyncio.run(adapter.observe_deployment(NS, "grinder", "grinder", rollout=NAME, floor=floor))
    assert seen.rollout_complete and [p.pod for p in seen.new_pods] == pods
    assert reads(cluster) == {"list_replica_sets": 1, "list_pods": 1}
