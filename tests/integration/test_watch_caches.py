"""Watch-backed caches through the real wiring (issue 10, point 1): `Reconciler.tick` with the
real domain, the adapter reading Deployments, ReplicaSets, Pods and Jobs from caches that
fake_world's `WatchFeed` fills from the fake API's writes, when the test says so.

Steady state makes no Deployment, ReplicaSet or Pod request; our own env patch is seen at
once even when the watch has not delivered it; a dropped watch means direct reads (today's
behaviour) until it is listed again; a lagging watch only delays a step, never changes it."""

from __future__ import annotations

import asyncio
import copy

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
        # When the rollout itself is read directly: docs/performance.md, "Watch-backed caches".
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


def test_caches_that_never_saw_the_rollouts_last_write_are_not_read_by_a_daemons_first_tick(world):
    """A daemon's first observation waits for caches that reach the rollout's resourceVersion
    (another process may have written both); later ones only for the last observation's."""
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        cluster.touch("FillProbRollout", NS, NAME)  # e.g. someone annotated it: a newer rollout
        before = reads(cluster)
        await tick(memo, clock)
        assert reads(cluster) == before  # as of the last observation: the caches answer
        memo.kube.forget_rollout(NS, NAME)  # the daemon stopped (a pause, a restart) and starts again
        cluster.touch("FillProbRollout", NS, NAME)
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
    assert len(asyncio.run(observe(floor)).new_pods) == 2 and reads(cluster) == {}  # as of the last one
    adapter.forget_rollout(NS, NAME)  # a daemon's first observation: as of the rollout
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


# -- the rollout itself from the cache (the daemon's later ticks) -------------------------------


async def cached_tick(memo, clock, seconds=10.0):
    clock.advance(seconds)
    return await memo.reconciler.tick(NS, NAME, cached=True, seen=memo.wakeups.floor(NS, NAME))


def test_steady_state_with_the_rollout_cached_makes_no_request_at_all(world):
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        feed.deliver()
        before = dict(cluster.calls)
        for _ in range(5):
            await cached_tick(memo, clock)
            feed.deliver()
        made = {k: v - before.get(k, 0) for k, v in cluster.calls.items()
                if v - before.get(k, 0) and k != "read_log"}  # FakeLogs: followed streams, not requests
        assert made == {}, made
        assert status(cluster)["state"] == "Observing"

    asyncio.run(scenario())


def test_our_status_write_is_never_hidden_by_a_lagging_rollout_cache(world):
    """A stored alert is taken, the status that records it written, the annotation removed: a
    cache that delivered none of it must not make the next tick take the alert again."""
    from fillprob_operator.adapters.kubernetes import alert_annotation_name, encode_rollback_request
    from fillprob_operator.domain.observations import RollbackRequest

    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        feed.deliver()
        request = RollbackRequest(playbook="R1", reason="AlertFired", source="alertmanager",
                                  evidence={"startsAt": "2024-05-01T12:00:00Z"}, key="alert:abc")
        obj = cluster.get("FillProbRollout", NS, NAME)
        obj["metadata"]["annotations"][alert_annotation_name(request.key)] = encode_rollback_request(request)
        cluster.touch("FillProbRollout", NS, NAME)
        feed.deliver()  # the cache has the alert
        await cached_tick(memo, clock)

        def taken():
            return [h for h in status(cluster)["history"]
                    if (h.get("evidence") or {}).get("requestKey") == request.key]

        assert len(taken()) == 1, status(cluster)["history"][-2:]  # taken (R1 in Shadow: skipped)
        assert alert_annotation_name(request.key) not in cluster.get("FillProbRollout", NS, NAME)["metadata"]["annotations"]
        writes = {k: cluster.calls[k] for k in ("patch_deployment", "patch_status", "merge_rollout")}
        events = len(cluster.events)
        gets = cluster.calls["get_rollout"]
        for _ in range(3):  # nothing delivered: the cache still shows the alert, not the status
            await cached_tick(memo, clock)
        # not taken again: no write, no Event (a second take would rewrite history to the same list)
        assert {k: cluster.calls[k] for k in writes} == writes and len(cluster.events) == events
        assert len(taken()) == 1
        assert cluster.calls["get_rollout"] == gets  # the versions we wrote answered

    asyncio.run(scenario())


def test_a_rollout_version_kopf_saw_and_the_cache_did_not_is_read_directly(world):
    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        feed.deliver()
        obj = cluster.get("FillProbRollout", NS, NAME)
        obj["metadata"]["annotations"]["grinder.io/rollback"] = "R1"
        cluster.touch("FillProbRollout", NS, NAME)
        memo.wakeups.saw(NS, NAME, int(obj["metadata"]["resourceVersion"]))  # kopf's event
        gets = cluster.calls["get_rollout"]
        await cached_tick(memo, clock)
        assert cluster.calls["get_rollout"] == gets + 1
        # the annotation was seen and taken (R1 in Shadow is recorded as skipped), then removed
        assert any(str((h.get("evidence") or {}).get("requestKey", "")).startswith("annotation/")
                   for h in status(cluster)["history"])
        assert "grinder.io/rollback" not in cluster.get("FillProbRollout", NS, NAME)["metadata"]["annotations"]

    asyncio.run(scenario())


def test_the_daemon_reads_the_rollout_directly_first_then_from_the_cache(world):
    from fake_world import FakeStopped, until

    cluster, clock, prometheus, memo, feed = world

    async def scenario():
        await to_shadow_observing(cluster, clock, prometheus, memo, feed)
        feed.deliver()
        gets = cluster.calls["get_rollout"]
        stopped = FakeStopped()
        daemon = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=stopped))
        await until(lambda: cluster.calls["get_rollout"] == gets + 1)  # a new daemon: a GET
        def evaluations():
            return memo.metrics.registry.get_sample_value(
                "fillprob_rollout_gate_evaluations_total", {"result": "go"}) or 0

        await until(lambda: evaluations() > 0)
        for _ in range(3):
            done = evaluations()
            clock.advance(10)
            memo.wakeups.wake(NS, NAME)
            await until(lambda: evaluations() > done)
        assert cluster.calls["get_rollout"] == gets + 1  # later ticks: the cache
        body = cluster.get("FillProbRollout", NS, NAME)
        body["spec"]["targetPhase"] = "Shadow"
        cluster.touch("FillProbRollout", NS, NAME)
        await handlers.rollout_event(type="MODIFIED", namespace=NS, name=NAME, uid="", memo=memo,
                                     body=copy.deepcopy(body))  # kopf saw it; our cache did not yet
        memo.wakeups.wake(NS, NAME)
        await until(lambda: cluster.calls["get_rollout"] == gets + 2)
        stopped.set(kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await asyncio.wait_for(daemon, 5)

    asyncio.run(scenario())


# -- the env patch starts from what the tick observed ------------------------------------------


def test_the_env_patch_starts_from_the_observed_deployment_on_condition_that_it_is_still_current():
    """No read between the tick's observation and its patch while the Deployment is as observed
    (its resourceVersion travels in the patch); changed meanwhile, the API server refuses (409)
    and it is read again, so a restart token someone else's change left is never patched twice."""
    from fillprob_operator.domain.actions import PatchEnv

    cluster, clock = FakeCluster(), FakeClock()
    cluster.put("Deployment", deployment_body())
    adapter = cluster.adapter(clock)

    def patch(token):
        return asyncio.run(adapter.patch_env(NS, "grinder", PatchEnv(
            container="grinder", set_env={"GRINDER_FILL_MODEL_ENFORCE": token}, restart_token=token)))

    def observe():
        asyncio.run(adapter.observe_deployment(NS, "grinder", "grinder", rollout=NAME, floor=None))

    observe()
    assert (cluster.calls["read_deployment"], cluster.calls["patch_deployment"]) == (1, 0)
    assert patch("t1") is True
    assert (cluster.calls["read_deployment"], cluster.calls["patch_deployment"]) == (1, 1)  # no read
    assert cluster.last_deployment_patch["metadata"]["resourceVersion"]  # the condition travelled
    observe()
    cluster.touch("Deployment", NS, "grinder")  # someone else's change after the observation
    assert patch("t2") is True
    # The conditional patch refused, the Deployment read again, patched without a condition.
    assert (cluster.calls["read_deployment"], cluster.calls["patch_deployment"]) == (3, 3)
    assert "metadata" not in cluster.last_deployment_patch
    assert cluster.get("Deployment", NS, "grinder")["spec"]["template"]["metadata"]["annotations"][
        "grinder.io/restart-token"] == "t2"
    # An observation that already carries the token (a run that got as far as the patch): read
    # now to be sure (an observation may be older), and no patch.
    observe()
    assert patch("t2") is False and cluster.calls["patch_deployment"] == 3
    assert cluster.calls["read_deployment"] == 5
    # No observation (a first tick, or one that found no Deployment): read first, as before.
    assert patch("t3") is True and (cluster.calls["read_deployment"], cluster.calls["patch_deployment"]) == (6, 4)
