"""The integration tier: kopf handler functions against an in-memory Kubernetes API.

The handlers are called directly (as kopf calls them) with `memo` built by `build_runtime`
around the real adapters, executor and reconciler; only the API server (`fake_world`) and
Prometheus (`FakePrometheus`) are stand-ins. `decide` here is a tiny scripted one, so these
tests pin the wiring (what is observed, what is executed, what is written) independently of
the ladder's rules; `test_real_decide.py` runs the real domain through the same wiring.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import re
import urllib.request
from typing import Any

import kopf
import pytest
from fake_world import (
    NAME,
    NS,
    FakeClock,
    FakeCluster,
    FakePrometheus,
    FakeStopped,
    deployment_body,
    env_of,
    rollout_body,
    until,
)

from fillprob_operator import handlers
from fillprob_operator.adapters.kubernetes import KubernetesError, alert_annotation_name, is_alert_annotation
from fillprob_operator.api import parse_spec
from fillprob_operator.domain.actions import ClearRollbackAnnotation, EmitEvent, PatchEnv, RunPreflight
from fillprob_operator.domain.observations import JobState, RollbackRequest
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import DomainPort
from fillprob_operator.settings import Settings

RESOLUTION_OK = (
    "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=2400 "
    "configured_bps=2500 effective_bps=2500"
)


class ScriptedDecide:
    """A stand-in for `domain.decide`: a few rungs, enough to exercise every action kind."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any]] = []

    def __call__(self, spec, status, observations, now, *, generation, name, namespace, scratch=None):
        self.seen.append((status, observations))
        status = copy.deepcopy(status) if status else {"phase": "Preflight", "step": "Preflight", "state": "Pending"}
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        before = copy.deepcopy(status)
        actions: list[Any] = []
        dep = observations.deployment
        for request in observations.rollback_requests:
            if any(h["evidence"].get("requestKey") == request.key for h in status.get("history", [])):
                continue
            actions.append(PatchEnv(container="grinder", set_env={"GRINDER_FILL_MODEL_ENFORCE": "0"},
                                    restart_token=f"{generation}-rb"))
            if request.reason == "ManualRollback":
                actions.append(ClearRollbackAnnotation())
            status.update(state="RolledBack", lastRollback={"playbook": request.playbook, "reason": request.reason, "at": stamp})
            status.setdefault("history", []).append(
                {"evidence": {"requestKey": request.key, "source": request.source}})
        if status["state"] == "Pending":
            actions += [RunPreflight(job_name=f"{name}-preflight-1", container="grinder",
                                     command=("python3", "-m", "scripts.preflight_fill_prob"), timeout_seconds=600),
                        EmitEvent("Normal", "PreflightStarted", "preflight Job created")]
            status.update(state="Preflight", preflight={"jobName": f"{name}-preflight-1"})
        elif status["state"] == "Preflight" and observations.preflight.state is JobState.SUCCEEDED:
            actions.append(PatchEnv(container="grinder",
                                    set_env={"GRINDER_FILL_MODEL_ENFORCE": "0", "GRINDER_FILL_PROB_AUTO_THRESHOLD": "0"},
                                    remove_env=("GRINDER_FILL_PROB_ENFORCE_SYMBOLS",), restart_token=f"{generation}-1"))
            status.update(phase="Shadow", step="Shadow", state="Restarting", restartToken=f"{generation}-1",
                          threshold={"configuredBps": int(observations.preflight.output.split("=")[1])})
        elif (status["state"] == "Restarting" and dep.restart_token == status["restartToken"]
              and dep.rollout_complete and dep.new_pods and all(p.resolution_line for p in dep.new_pods)):
            status.update(state="Observing")
        elif status["state"] == "Observing" and observations.metrics.available and any(
                (p.circuit_breaker_trips or 0) > 0 for p in observations.metrics.pods.values()):
            actions.append(PatchEnv(container="grinder", set_env={"GRINDER_FILL_MODEL_ENFORCE": "0"},
                                    restart_token=f"{generation}-2"))
            status.update(state="RolledBack",
                          lastRollback={"playbook": "R1", "reason": "CircuitBreakerTripped", "at": stamp})
        status["metricsAvailable"] = observations.metrics.available
        return _Decision(status=status, actions=tuple(actions), changed=status != before)


class _Decision:
    def __init__(self, status, actions, changed):
        self.status, self.actions, self.changed = status, actions, changed


@pytest.fixture
def world():
    cluster = FakeCluster()
    clock = FakeClock()
    prometheus = FakePrometheus(clock)
    decide = ScriptedDecide()
    memo = kopf.Memo()
    handlers.build_runtime(
        memo,
        Settings(prometheus_url="http://prometheus.test:9090", metrics_addr=""),
        kube=cluster.adapter(clock),
        connect=lambda url: prometheus,
        domain=DomainPort(parse_spec=parse_spec, parse_status=lambda raw: dict(raw) if raw else None, decide=decide),
        clock=clock,
        metrics=OperatorMetrics(),
    )
    cluster.put("FillProbRollout", rollout_body())
    cluster.put("Deployment", deployment_body())
    yield cluster, clock, prometheus, decide, memo
    asyncio.run(handlers.cleanup(memo=memo))


def rollout(cluster: FakeCluster) -> dict:
    return cluster.get("FillProbRollout", NS, NAME)


def alert_annotations(cluster: FakeCluster) -> dict:
    annotations = rollout(cluster)["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if is_alert_annotation(k)}


def test_walk_from_preflight_to_rollback(world):
    cluster, clock, prometheus, decide, memo = world
    metrics = memo.metrics.registry.get_sample_value

    async def scenario():
        tick = lambda: memo.reconciler.tick(NS, NAME)  # noqa: E731

        # 1. no status yet: the preflight Job is created, owned by the rollout
        await tick()
        job = cluster.get("Job", NS, "grinder-preflight-1")
        assert job["metadata"]["ownerReferences"][0]["name"] == NAME
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "grinder-sim:local"
        assert rollout(cluster)["status"]["state"] == "Preflight"
        assert [e["reason"] for e in cluster.events] == ["PreflightStarted"]
        assert decide.seen[-1][1].metrics.reason == "SeriesAbsent"  # nothing scraped yet

        # 2. the Job is still running: nothing changes, nothing is written
        patches = cluster.calls["patch_status"]
        await tick()
        assert decide.seen[-1][1].preflight.state is JobState.RUNNING
        assert cluster.calls["patch_status"] == patches

        # 3. preflight passed: ONE env patch (managed keys only) with the restart token
        cluster.finish_job(NS, "grinder-preflight-1", exit_code=0, output="configured_bps=2500\n")
        await tick()
        preflight = decide.seen[-1][1].preflight
        assert (preflight.state, preflight.exit_code, preflight.output) == (JobState.SUCCEEDED, 0, "configured_bps=2500\n")
        assert cluster.calls["patch_deployment"] == 1
        assert env_of(cluster)["GRINDER_FILL_PROB_AUTO_THRESHOLD"] == "0"
        assert env_of(cluster)["UNRELATED"] == "keep-me"
        dep = cluster.get("Deployment", NS, "grinder")
        assert dep["spec"]["template"]["metadata"]["annotations"]["grinder.io/restart-token"] == "1-1"
        assert rollout(cluster)["status"]["state"] == "Restarting"
        assert decide.seen[-1][1].deployment.rollout_complete is True  # observed before the patch

        # 4. the Deployment controller has not caught up: not complete
        jobs_read = cluster.calls["read_job"]
        await tick()
        assert cluster.calls["read_job"] == jobs_read  # the preflight's result is in status now
        obs = decide.seen[-1][1].deployment
        assert (obs.restart_token, obs.rollout_complete) == ("1-1", False)
        assert "spec update to be observed" in obs.rollout_message

        # 5. new pods logged their resolution line: verified, observing
        pods = cluster.roll_out(NS, "grinder", log=f"boot\n{RESOLUTION_OK}\nrunning")
        await tick()
        obs = decide.seen[-1][1].deployment
        assert obs.rollout_complete and [p.pod for p in obs.new_pods] == pods
        assert all(p.resolution_line == RESOLUTION_OK and p.ready for p in obs.new_pods)
        assert rollout(cluster)["status"]["state"] == "Observing"
        assert metrics("fillprob_rollout_info", {"namespace": NS, "name": NAME, "phase": "Shadow", "state": "Observing"}) == 1

        # 6. a circuit-breaker trip shows in Prometheus: R1, counted and timed
        for pod in pods:
            prometheus.pods[(NS, pod)] = {"grinder_router_fill_prob_cb_trips_total": 1.0,
                                          "grinder_router_fill_prob_enforce_enabled": 0.0}
        prometheus.pods[("elsewhere", pods[0])] = {"grinder_router_fill_prob_cb_trips_total": 9.0}
        prometheus.pods[(NS, "grinder-oldhash-gone1")] = {  # an old pod: only increase() remembers it
            "up": False, "increase(grinder_router_fill_prob_blocks_total[1m])": {"SYM1": 5.0}}
        clock.advance(30)
        await tick()
        seen = decide.seen[-1][1].metrics
        assert seen.available and sorted(seen.pods) == sorted(pods)
        assert all(p.circuit_breaker_trips == 1.0 for p in seen.pods.values())
        assert env_of(cluster)["GRINDER_FILL_MODEL_ENFORCE"] == "0"
        assert rollout(cluster)["status"]["lastRollback"]["playbook"] == "R1"
        labels = {"namespace": NS, "name": NAME, "playbook": "R1", "reason": "CircuitBreakerTripped"}
        assert metrics("fillprob_rollout_rollbacks_total", labels) == 1
        assert metrics("fillprob_rollout_detection_seconds_sum") == 2.0  # sample 2s old at patch time
        assert metrics("fillprob_rollout_gate_evaluations_total", {"result": "nogo"}) == 1
        assert metrics("fillprob_rollout_info", {"namespace": NS, "name": NAME, "phase": "Shadow", "state": "RolledBack"}) == 1
        assert metrics("fillprob_rollout_info", {"namespace": NS, "name": NAME, "phase": "Shadow", "state": "Observing"}) is None

    asyncio.run(scenario())
    # one query per gate metric per interval bucket, not one per tick
    assert set(prometheus.calls.values()) == {2}  # buckets T0 and T0+30s


def test_rollback_annotation_is_applied_once_and_removed(world):
    cluster, clock, prometheus, decide, memo = world
    body = rollout(cluster)
    body["metadata"]["uid"] = "uid-fpr"
    body["metadata"]["annotations"] = {"grinder.io/rollback": "R1", "grinder.io/rollback-reason": "fills dropped"}
    body["metadata"]["managedFields"] = [{
        "manager": "kubectl-annotate", "time": "2024-05-01T11:59:00Z",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:grinder.io/rollback": {}}}}}]

    async def scenario():
        await handlers.rollback_requested(namespace=NS, name=NAME, new="R1", memo=memo)
        assert memo.wakeups.event(NS, NAME).is_set()
        await memo.reconciler.tick(NS, NAME)
        (request,) = decide.seen[-1][1].rollback_requests
        assert request == RollbackRequest(
            playbook="R1", reason="ManualRollback",
            source="annotation grinder.io/rollback=R1 by kubectl-annotate: fills dropped",
            evidence={"annotation": "R1", "manager": "kubectl-annotate", "setAt": "2024-05-01T11:59:00Z",
                      "why": "fills dropped"},
            key="annotation/uid-fpr/R1/2024-05-01T11:59:00Z")
        assert "grinder.io/rollback" not in rollout(cluster)["metadata"]["annotations"]
        assert "grinder.io/rollback-reason" not in rollout(cluster)["metadata"]["annotations"]
        assert rollout(cluster)["status"]["lastRollback"]["reason"] == "ManualRollback"
        await memo.reconciler.tick(NS, NAME)
        assert decide.seen[-1][1].rollback_requests == ()

    asyncio.run(scenario())


def test_annotation_changed_meanwhile_is_not_cleared(world):
    cluster, clock, prometheus, decide, memo = world
    rollout(cluster)["metadata"]["annotations"] = {"grinder.io/rollback": "R3"}
    adapter = memo.kube

    async def scenario():
        assert await adapter.clear_rollback_annotation(NS, NAME, "R1") is False
        assert rollout(cluster)["metadata"]["annotations"] == {"grinder.io/rollback": "R3"}
        assert await adapter.clear_rollback_annotation(NS, NAME, "R3") is True

    asyncio.run(scenario())


def test_stored_alerts_are_taken_once_and_removed_after_the_status_write(world):
    cluster, clock, prometheus, decide, memo = world
    request = RollbackRequest(playbook="R2", reason="AlertFired", source="alert FillProbCB",
                              evidence={"fingerprint": "fp-123"}, key="alert:fp-123:t0")
    annotation = alert_annotation_name(request.key)

    async def scenario():
        assert await handlers.submit_rollback(memo, request, NS, NAME) is True
        assert await handlers.submit_rollback(memo, request, NS, NAME) is True  # a duplicate delivery
        assert list(alert_annotations(cluster)) == [annotation]
        await memo.reconciler.tick(NS, NAME)
        assert decide.seen[-1][1].rollback_requests == (request,)
        assert rollout(cluster)["status"]["lastRollback"]["reason"] == "AlertFired"
        assert alert_annotations(cluster) == {}
        # Alertmanager re-sends it after it was taken: stored again, not applied again, removed.
        assert await handlers.submit_rollback(memo, request, NS, NAME) is True
        patches = cluster.calls["patch_deployment"]
        await memo.reconciler.tick(NS, NAME)
        assert cluster.calls["patch_deployment"] == patches
        assert alert_annotations(cluster) == {}
        assert [h["evidence"]["requestKey"] for h in rollout(cluster)["status"]["history"]] == [request.key]

    asyncio.run(scenario())


def test_invalid_spec_is_a_condition_not_a_traceback_loop(world):
    cluster, clock, prometheus, decide, memo = world
    rollout(cluster)["spec"]["canarySymbols"] = ["SYM1", "SYM1"]

    async def scenario():
        for _ in range(3):
            await memo.reconciler.tick(NS, NAME)
            clock.advance(30)

    asyncio.run(scenario())
    (ready,) = rollout(cluster)["status"]["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert "duplicate symbols in canarySymbols: SYM1" in ready["message"]
    assert cluster.calls["patch_status"] == 1  # written once, not every tick
    assert [e["reason"] for e in cluster.events] == ["InvalidSpec"]
    assert decide.seen == []
    assert cluster.calls["patch_deployment"] == cluster.calls["create_job"] == 0


def test_prometheus_down_is_no_data(world):
    cluster, clock, prometheus, decide, memo = world
    prometheus.down = True
    asyncio.run(memo.reconciler.tick(NS, NAME))
    metrics = decide.seen[-1][1].metrics
    assert (metrics.available, metrics.reason) == (False, "PrometheusUnreachable")


def test_an_unreadable_pod_log_is_missing_data_not_a_failed_tick(world):
    cluster, clock, prometheus, decide, memo = world
    from kubernetes.client.exceptions import ApiException

    pods = cluster.roll_out(NS, "grinder", log=RESOLUTION_OK)
    cluster.fail_next["read_log"] = ApiException(status=500, reason="kubelet unreachable")
    asyncio.run(memo.reconciler.tick(NS, NAME))
    startups = decide.seen[-1][1].deployment.new_pods
    assert [p.pod for p in startups] == pods
    assert [p.resolution_line for p in startups].count(None) == 1  # the one that failed: not known yet


def test_deployment_absent_is_observed_as_absent(world):
    cluster, clock, prometheus, decide, memo = world
    del cluster.objects[("Deployment", NS, "grinder")]
    asyncio.run(memo.reconciler.tick(NS, NAME))
    assert decide.seen[-1][1].deployment.exists is False


def test_daemon_ticks_when_woken_and_forgets_a_deleted_rollout(world):
    cluster, clock, prometheus, decide, memo = world

    async def scenario():
        stopped = FakeStopped()
        daemon = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=stopped))
        await until(lambda: len(decide.seen) == 1)
        # interval is 30s; a spec change wakes the daemon at once
        await handlers.spec_changed(namespace=NS, name=NAME, memo=memo)
        await until(lambda: len(decide.seen) == 2)
        assert memo.metrics.registry.get_sample_value(
            "fillprob_rollout_info", {"namespace": NS, "name": NAME, "phase": "Preflight", "state": "Preflight"}) == 1
        ours = {"namespace": NS, "pod": "grinder-5d9c7b-aaaaa"}
        assert memo.gateway.scope("http://prometheus.test:9090", 30, clock.now()).matches(ours)
        stopped.set(kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await asyncio.wait_for(daemon, 5)
        assert memo.metrics.registry.get_sample_value(
            "fillprob_rollout_info", {"namespace": NS, "name": NAME, "phase": "Preflight", "state": "Preflight"}) is None
        # its selector left the scope of the Prometheus queries with its daemon
        assert memo.gateway.scope("http://prometheus.test:9090", 30, clock.now()).arms == ()

    asyncio.run(scenario())


class HeldPacer:
    """A pacer whose turns come only when the test opens it; counts who asked."""

    def __init__(self) -> None:
        self.asked = 0
        self.opened: asyncio.Event | None = None

    async def turn(self) -> None:
        self.asked += 1
        self.opened = self.opened or asyncio.Event()
        await self.opened.wait()


def test_the_interval_ticks_wait_for_their_turn_and_a_woken_one_does_not(world):
    cluster, clock, prometheus, decide, memo = world
    memo.pacer = pacer = HeldPacer()

    async def scenario():
        stopped = FakeStopped()
        daemon = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=stopped))
        await until(lambda: pacer.asked == 1)
        for _ in range(20):
            await asyncio.sleep(0)
        assert decide.seen == []  # the first tick waits for its turn
        pacer.opened.set()
        await until(lambda: len(decide.seen) == 1)
        pacer.opened = asyncio.Event()  # no more turns
        await handlers.spec_changed(namespace=NS, name=NAME, memo=memo)  # woken: at once
        await until(lambda: len(decide.seen) == 2)
        assert pacer.asked == 1
        stopped.set(kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await asyncio.wait_for(daemon, 5)

    asyncio.run(scenario())


def test_the_interval_tick_comes_when_the_next_buckets_answer_is_here_not_before(world):
    """Every rollout of a URL decides right after the answer it reads (Reconciler.until_due):
    at the bucket's start the daemon asks for the answer, holding nothing, and ticks once it is
    here; a PrometSheus-only no-go then waits for the next query, not also for the rollout's own
    moment in the interval."""
    cluster, clock, prometheus, decide, memo = world
    clock.advance(30 - 0.5)  # half a second before the next 30 s bucket begins
    waits, until_due = [], memo.reconciler.until_due

    async def waiting(outcome, wake):
        waits.append(clock.now())
        return await until_due(outcome, wake)

    memo.reconciler.until_due = waiting

    async def scenario():
        stopped = FakeStopped()
        daemon = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=stopped))
        await until(lambda: waits)  # the first tick is over
        assert len(decide.seen) == 1
        asked = sum(prometheus.calls.values())
        prometheus.answering.clear()  # Prometheus slow to answer the next bucket's queries
        clock.advance(0.5)  # (the daemon's timer to the boundary: about half a second)
        await until(lambda: sum(prometheus.calls.values()) > asked)  # the bucket's fetch, asked for...
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert len(decide.seen) == 1  # ...by no tick: the tick waits for the answer
        prometheus.answering.set()
        await until(lambda: len(decide.seen) == 2)
        assert decide.seen[1][1].metrics.queried_at == clock.now()  # the new bucket's answer
        stopped.set(kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await asyncio.wait_for(daemon, 5)

    asyncio.run(scenario())


def test_daemon_survives_an_unreachable_api_server(world):
    cluster, clock, prometheus, decide, memo = world
    from kubernetes.client.exceptions import ApiException

    async def scenario():
        cluster.fail_next["get_rollout"] = ApiException(status=503, reason="Service Unavailable")
        stopped = FakeStopped()
        daemon = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=stopped))
        await until(lambda: cluster.calls["get_rollout"] == 1)
        memo.wakeups.wake(NS, NAME)
        await until(lambda: len(decide.seen) == 1)
        stopped.set(kopf.DaemonStoppingReason.OPERATOR_EXITING)
        await asyncio.wait_for(daemon, 5)

    asyncio.run(scenario())


def test_daemon_exits_when_the_rollout_is_gone(world):
    cluster, clock, prometheus, decide, memo = world
    del cluster.objects[("FillProbRollout", NS, NAME)]

    async def scenario():
        await asyncio.wait_for(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=FakeStopped()), 5)

    asyncio.run(scenario())
    assert decide.seen == []


def test_startup_configures_kopf_and_serves_metrics(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        "clusters: [{name: t, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: t, user: {token: x}}]\n"
        "contexts: [{name: t, context: {cluster: t, user: t}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("FILLPROB_METRICS_ADDR", "127.0.0.1:0")
    monkeypatch.setenv("FILLPROB_PROMETHEUS_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()

    async def scenario():
        await handlers.startup(settings=settings, memo=memo)
        try:
            host, port = memo.metrics._server.server_address[:2]
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode())
            for name in ("fillprob_rollout_info", "fillprob_rollout_rollbacks_total",
                         "fillprob_rollout_gate_evaluations_total", "fillprob_rollout_detection_seconds",
                         "fillprob_rollout_prometheus_queries_total", "fillprob_rollout_prometheus_query_seconds",
                         "fillprob_rollout_prometheus_samples_total", "fillprob_rollout_event_loop_lag_seconds"):
                assert f"# HELP {name}" in text
            assert not memo.loop_lag.done()  # the loop's lag is measured from startup on
            # ... and the collector's pauses, drained into their histogram as the loop wakes
            assert memo.gc_pauses in gc.callbacks
            gc.collect()
            await asyncio.sleep(0.6)
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode())
            assert re.search(r'^fillprob_operator_gc_pause_seconds_count\{generation="2"\} [1-9]', text, re.M), text
        finally:
            await handlers.cleanup(memo=memo)
        assert memo.loop_lag.done()
        assert memo.gc_pauses not in gc.callbacks

    asyncio.run(scenario())
    assert settings.persistence.finalizer == "grinder.io/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "grinder.io"
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.persistence.diffbase_storage.prefix == "grinder.io"
    assert settings.peering.standalone is True
    assert memo.reconciler.default_prometheus_url == "http://127.0.0.1:1"


def test_named_peering():
    settings = kopf.OperatorSettings()
    handlers.configure(settings, Settings(peering="grinder-operators", peering_priority=-7, peering_lifetime=20))
    assert (settings.peering.standalone, settings.peering.mandatory, settings.peering.name) == (
        False, True, "grinder-operators")
    # Equal priorities make kopf pause every replica: each replica brings its own.
    assert (settings.peering.priority, settings.peering.lifetime) == (-7, 20)


def test_replicas_started_apart_get_distinct_priorities_the_earlier_one_higher():
    first = Settings.from_env({"FILLPROB_PEERING": "p"}, now=1_000.000)
    second = Settings.from_env({"FILLPROB_PEERING": "p"}, now=1_000.001)
    assert first.peering_priority > second.peering_priority
    assert Settings.from_env({"FILLPROB_PEERING_PRIORITY": "5"}).peering_priority == 5
    assert Settings.from_env({}).peering_lifetime == 30
    for bad in ({"FILLPROB_PEERING_PRIORITY": "high"}, {"FILLPROB_PEERING_LIFETIME": "5"},
                {"FILLPROB_PEERING_LIFETIME": "30s"}):
        with pytest.raises(ValueError, match="FILLPROB_PEERING"):
            Settings.from_env(bad)


def test_log_transport_is_http2_by_default_threads_on_request_and_nothing_else():
    assert Settings.from_env({}).log_transport == "http2"
    assert Settings.from_env({"FILLPROB_LOG_TRANSPORT": " Threads "}).log_transport == "threads"
    with pytest.raises(ValueError, match="FILLPROB_LOG_TRANSPORT='h3': expected one of http2, threads"):
        Settings.from_env({"FILLPROB_LOG_TRANSPORT": "h3"})


def test_build_adapter_follows_logs_over_http2_unless_asked_or_unable(tmp_path, monkeypatch):
    """The transport build_adapter picks: tasks over HTTP/2 for an https API server, threads when
    asked (FILLPROB_LOG_TRANSPORT=threads) or when the server is plain http (no HTTP/2 there)."""
    from fillprob_operator.adapters.kubernetes import build_adapter

    def kubeconfig(server: str) -> str:
        path = tmp_path / f"kubeconfig-{server.split(':')[0]}"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: k, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n"
            "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n")
        return str(path)

    picked = []
    for server, transport in (("https://127.0.0.1:1", "http2"), ("https://127.0.0.1:1", "threads"),
                              ("http://127.0.0.1:1", "http2")):
        monkeypatch.setenv("KUBECONFIG", kubeconfig(server))
        adapter = build_adapter(timeout=1, executor=None, clock=None, log_transport=transport)
        picked.append(adapter.logs.asynchronous)
        adapter.close()
    assert picked == [True, False, False]


def test_handlers_are_registered_for_fillprobrollouts():
    registry = kopf.get_default_registry()
    resource = kopf.Resource("grinder.io", "v1alpha1", "fillprobrollouts")
    assert [h.id for h in registry._spawning.get_all_handlers() if h.selector.check(resource)] == ["rollout"]
    assert sorted(h.id for h in registry._changing.get_all_handlers() if h.selector.check(resource)) == [
        "rollback_requested/metadata.annotations.grinder.io/rollback", "spec_changed/spec"]
    assert {"startup", "cleanup"} <= {h.id for h in registry._activities.get_all_handlers()}
    # kopf runs the startup handlers in this order: the receiver is up before the wait.
    startups = [h.id for h in registry._activities.get_all_handlers() if h.activity.value == "startup"]
    assert startups == ["startup", "until_served"]


def test_webhook_submit_stores_for_any_rollout_and_wakes_a_daemon_running_here(world):
    """Standby or still starting (no daemon here): stored all the same; only an absent rollout
    or an unwatched namespace is rejected; a daemon that runs here is woken at once."""
    cluster, clock, prometheus, decide, memo = world
    request = RollbackRequest(playbook="", reason="AlertFired", source="FillProbCircuitBreakerTripped{}",
                              key="alert:fp-9:2026-01-01T00:00:00Z")

    async def scenario():
        assert await handlers.submit_rollback(memo, request, NS, NAME) is True  # no daemon here
        assert list(alert_annotations(cluster)) == [alert_annotation_name(request.key)]
        assert await handlers.submit_rollback(memo, request, NS, "other") is False  # 404
        memo.config = Settings(namespaces=("elsewhere", "prod-*"))
        writes = cluster.calls["merge_rollout"]
        assert await handlers.submit_rollback(memo, request, NS, NAME) is False  # not watched
        assert cluster.calls["merge_rollout"] == writes  # not even tried
        memo.config = Settings(namespaces=("elsewhere", "trad*"))
        stopped = FakeStopped()
        daemon = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=stopped))
        await until(lambda: len(decide.seen) == 1)
        assert decide.seen[-1][1].rollback_requests == (request,)  # the first tick takes it
        await until(lambda: alert_annotations(cluster) == {})
        second = RollbackRequest(playbook="R1", reason="AlertFired", source="X{}", key="alert:fp-10:t")
        assert await handlers.submit_rollback(memo, second, NS, NAME) is True
        await until(lambda: len(decide.seen) == 2)  # woken at once, not after the 30s interval
        assert decide.seen[-1][1].rollback_requests == (second,)
        stopped.set(kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await asyncio.wait_for(daemon, 5)

    asyncio.run(scenario())


def test_a_new_alert_annotation_in_a_watch_event_wakes_the_daemon_once(world):
    cluster, clock, prometheus, decide, memo = world
    body = copy.deepcopy(rollout(cluster))
    wake = memo.wakeups.event(NS, NAME)

    async def event(annotations, type_="MODIFIED", uid="u1"):
        body["metadata"]["annotations"] = annotations
        wake.clear()
        await handlers.rollout_event(type=type_, namespace=NS, name=NAME, uid=uid, memo=memo, body=body)
        return wake.is_set()

    a, b = alert_annotation_name("alert:a:t"), alert_annotation_name("alert:b:t")
    assert await_(event({"other": "x"})) is False
    assert await_(event({a: "{}"})) is True  # stored on another replica: act now
    assert await_(event({a: "{}", "grinder.io/x": "1"})) is False  # a status write while it waits
    assert await_(event({a: "{}", b: "{}"})) is True
    assert await_(event({b: "{}"})) is False  # a removal
    assert await_(event({})) is False
    assert await_(event({a: "{}"})) is True  # re-sent after it was taken
    assert await_(event({a: "{}"}, type_="DELETED")) is False
    assert memo.alert_annotations == {}


def await_(coroutine):
    return asyncio.run(coroutine)


def test_startup_serves_the_webhook_when_configured(tmp_path, monkeypatch):
    import json as _json
    import urllib.error
    import socket

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        "clusters: [{name: t, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: t, user: {token: x}}]\n"
        "contexts: [{name: t, context: {cluster: t, user: t}}]\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("FILLPROB_METRICS_ADDR", "off")
    monkeypatch.setenv("FILLPROB_WEBHOOK_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("FILLPROB_WEBHOOK_TOKEN", "s3cret")
    monkeypatch.delenv("FILLPROB_WEBHOOK_TOKEN_FILE", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    memo = kopf.Memo()
    body = _json.dumps({"version": "4", "status": "firing", "alerts": [{
        "status": "firing", "labels": {"alertname": "X", "fillprob_rollout": NAME, "namespace": NS},
        "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "f1"}]}).encode()

    def post(token: str) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/alertmanager", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, _json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json.loads(exc.read())

    cluster, clock = FakeCluster(), FakeClock()
    cluster.put("FillProbRollout", rollout_body())

    async def scenario():
        await handlers.startup(settings=kopf.OperatorSettings(), memo=memo)
        try:
            assert (await asyncio.to_thread(post, "wrong"))[0] == 401
            # The kubeconfig's API server does not answer: not stored, so 503 (Alertmanager retries).
            status, result = await asyncio.to_thread(post, "s3cret")
            assert status == 503 and result["failed"] and not result["accepted"], result
            memo.kube.close()
            memo.kube = cluster.adapter(clock)  # an API server that answers
            status, result = await asyncio.to_thread(post, "s3cret")
            assert status == 200 and result["accepted"], result
            (stored,) = alert_annotations(cluster).values()
            assert _json.loads(stored)["key"] == "alert:f1:2026-01-01T00:00:00Z"
        finally:
            await handlers.cleanup(memo=memo)

    asyncio.run(scenario())
    with socket.socket() as s:  # cleanup closed the listener
        assert s.connect_ex(("127.0.0.1", port)) != 0


# --- no finalizer: uninstalling the operator never wedges a rollout or its namespace ----------

FPR = kopf.Resource("grinder.io", "v1alpha1", "fillprobrollouts", namespaced=True)


def test_no_handler_of_fillprobrollouts_requires_a_finalizer():
    registry = kopf.get_default_registry()
    spawning = [h for h in registry._spawning.get_all_handlers() if h.selector.check(FPR)]
    changing = [h for h in registry._changing.get_all_handlers() if h.selector.check(FPR)]
    assert spawning and changing
    assert [h.id for h in spawning + changing if h.requires_finalizer] == []


def test_release_finalizers_turns_off_what_kopf_daemon_always_turns_on():
    registry = kopf.OperatorRegistry()

    @kopf.daemon("grinder.io", "v1alpha1", "fillprobrollouts", registry=registry)
    async def loop(**_):
        pass

    @kopf.timer("grinder.io", "v1alpha1", "fillprobrollouts", interval=1, registry=registry)
    async def every(**_):
        pass

    # kopf's own behaviour (kopf/on.py: requires_finalizer=True, no option): why this exists.
    assert [h.requires_finalizer for h in registry._spawning.get_all_handlers()] == [True, True]
    assert [i.rsplit(".", 1)[-1] for i in handlers.release_finalizers(registry)] == ["loop", "every"]
    assert [h.requires_finalizer for h in registry._spawning.get_all_handlers()] == [False, False]
    assert [h.fn for h in registry._spawning.get_all_handlers()] == [loop, every]
    assert handlers.release_finalizers(registry) == []


def _kopf_sees(memo, memories, raw_event, patches, settings):
    """One watch event through kopf's real processing (our registry), patches captured."""
    from kopf._core.engines.indexing import OperatorIndexers
    from kopf._core.reactor.processing import process_resource_event

    return process_resource_event(
        lifecycle=kopf.lifecycles.all_at_once,
        indexers=OperatorIndexers(),
        registry=kopf.get_default_registry(),
        settings=settings,
        memories=memories,
        memobase=memo,
        resource=FPR,
        raw_event=raw_event,
        event_queue=asyncio.Queue(),
        no_throttling=True,
    )


def test_kopf_removes_an_old_finalizer_adds_none_and_a_deleted_rollout_stops_its_daemon(world, monkeypatch):
    from kopf._core.actions import application
    from kopf._core.reactor.inventory import ResourceMemories

    cluster, clock, prometheus, decide, memo = world
    patches: list[list] = []

    async def apply(*, body, patch, **_):
        if patch:
            patches.append(patch.as_json_patch(body))
        return True, None, None

    monkeypatch.setattr(application, "apply", apply)
    settings = kopf.OperatorSettings()
    handlers.configure(settings, Settings())
    memories = ResourceMemories()
    body = copy.deepcopy(rollout(cluster))

    async def scenario():
        # 1. listed at startup, finalized by an older operator version: kopf removes it...
        old = copy.deepcopy(body)
        old["metadata"]["finalizers"] = ["other.io/keep", handlers.FINALIZER]
        await _kopf_sees(memo, memories, {"type": None, "object": old}, patches, settings)
        removed = [op for p in patches for op in p if op["path"].startswith("/metadata/finalizers")]
        assert removed and all(op["op"] in ("remove", "replace") for op in removed), patches
        assert not any(handlers.FINALIZER in str(op.get("value")) for op in removed), patches
        # ... and the daemon runs all the same.
        await until(lambda: len(decide.seen) >= 1)
        assert memo.owners == {(NS, NAME): body["metadata"]["uid"]}

        # 2. further events: no finalizer is ever added.
        patches.clear()
        for _ in range(2):
            await _kopf_sees(memo, memories, {"type": "MODIFIED", "object": copy.deepcopy(body)}, patches, settings)
        assert not [op for p in patches for op in p if "finalizers" in op["path"]], patches

        # 3. deleted (no deletionTimestamp: nothing blocked it): the daemon stops at once,
        #    not after its 30s interval, and forgets the rollout.
        seen = len(decide.seen)
        await _kopf_sees(memo, memories, {"type": "DELETED", "object": copy.deepcopy(body)}, patches, settings)
        await until(lambda: not memo.owners, deadline=5)
        assert memo.rollouts == set() and memo.deleted == set() and memo.running == set()
        assert len(decide.seen) == seen  # no tick of a deleted rollout

    asyncio.run(scenario())


def test_kopfs_own_stop_flag_ends_the_wait_for_the_next_tick_at_once(world):
    """A peering pause or the operator's exit sets only kopf's stop flag (kopf's real one here):
    the daemon leaves its wait at once, not after its 30s interval, and ticks no more."""
    from kopf._cogs.aiokits import aioenums

    cluster, clock, prometheus, decide, memo = world

    async def scenario():
        for reason in (kopf.DaemonStoppingReason.OPERATOR_PAUSING, kopf.DaemonStoppingReason.OPERATOR_EXITING):
            seen = len(decide.seen)
            setter = aioenums.FlagSetter()
            daemon = asyncio.create_task(
                handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=setter.async_waiter, uid="u1")
            )
            await until(lambda: len(decide.seen) == seen + 1)
            await asyncio.sleep(0.05)  # waiting for its next tick now
            setter.set(reason)
            await asyncio.wait_for(daemon, 1)
            assert len(decide.seen) == seen + 1 and memo.running == set() and memo.owners == {}

    asyncio.run(scenario())


def test_daemon_of_a_deleted_rollout_leaves_its_successor_alone(world):
    """Deleted and recreated under the same name: the old daemon's exit drops nothing of the new."""
    cluster, clock, prometheus, decide, memo = world

    async def scenario():
        old_stopped, new_stopped = FakeStopped(), FakeStopped()
        old = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=old_stopped, uid="u-old"))
        await until(lambda: len(decide.seen) == 1)
        new = asyncio.create_task(handlers.rollout(namespace=NS, name=NAME, memo=memo, stopped=new_stopped, uid="u-new"))
        await until(lambda: len(decide.seen) == 2)
        await handlers.rollout_event(type="DELETED", namespace=NS, name=NAME, uid="u-old", memo=memo)
        await asyncio.wait_for(old, 5)
        assert memo.owners == {(NS, NAME): "u-new"} and memo.rollouts == {(NS, NAME)}
        assert not new.done()
        await handlers.rollout_event(type="DELETED", namespace=NS, name="unknown", uid="u-x", memo=memo)
        assert memo.deleted == set()
        new_stopped.set(kopf.DaemonStoppingReason.OPERATOR_EXITING)
        await asyncio.wait_for(new, 5)
        assert memo.owners == {} and memo.running == set()

    asyncio.run(scenario())


def test_a_stored_alert_is_no_change_to_kopf_and_wakes_the_daemon(world, monkeypatch):
    """kopf's last-handled configuration leaves the alert annotations out: storing or removing
    one costs no second write (and no copy of the alert), yet the event wakes the daemon."""
    from kopf._core.actions import application
    from kopf._core.reactor.inventory import ResourceMemories

    cluster, clock, prometheus, decide, memo = world
    patches: list[list] = []

    async def apply(*, body, patch, **_):
        if patch:
            patches.append(patch.as_json_patch(body))
        return True, None, None

    monkeypatch.setattr(application, "apply", apply)
    settings = kopf.OperatorSettings()
    handlers.configure(settings, Settings())
    storage = settings.persistence.diffbase_storage
    body = copy.deepcopy(rollout(cluster))
    patch = kopf.Patch()
    storage.store(body=kopf.Body(body), patch=patch, essence=storage.build(body=kopf.Body(body)))
    body["metadata"]["annotations"].update(patch["metadata"]["annotations"])  # as last handled
    stored = copy.deepcopy(body)
    stored["metadata"]["annotations"][alert_annotation_name("alert:f:t")] = '{"key":"alert:f:t"}'
    assert storage.build(body=kopf.Body(stored)) == storage.build(body=kopf.Body(body))

    async def scenario():
        memories = ResourceMemories()
        await _kopf_sees(memo, memories, {"type": None, "object": copy.deepcopy(body)}, patches, settings)
        await until(lambda: len(decide.seen) >= 1)
        memo.wakeups.event(NS, NAME).clear()
        patches.clear()
        await _kopf_sees(memo, memories, {"type": "MODIFIED", "object": copy.deepcopy(stored)}, patches, settings)
        assert patches == []
        await until(lambda: len(decide.seen) >= 2)  # woken by the event, not the 30s interval
        await _kopf_sees(memo, memories, {"type": "DELETED", "object": copy.deepcopy(stored)}, patches, settings)
        await until(lambda: not memo.owners)

    asyncio.run(scenario())


def test_readiness_asks_the_api_server_at_most_once_per_few_seconds():
    """/readyz (the chart's readiness probe) is as good as the API server's last answer, asked
    at most once per READY_CHECK_SECONDS however often the probe comes."""

    class Kube:
        calls, down = 0, False

        async def ping(self) -> None:
            self.calls += 1
            if self.down:
                raise KubernetesError("GET /api/v1: timed out after 30s")

    memo = kopf.Memo()
    memo.kube = Kube()

    async def scenario() -> None:
        assert await handlers.can_store_alerts(memo) is None
        assert await handlers.can_store_alerts(memo) is None
        assert memo.kube.calls == 1
        memo.kube.down = True
        checked_at, _ = memo.ready_check
        memo.ready_check = (checked_at - handlers.READY_CHECK_SECONDS, None)  # the answer aged out
        assert "does not answer" in (await handlers.can_store_alerts(memo) or "")
        assert "does not answer" in (await handlers.can_store_alerts(memo) or "")
        assert memo.kube.calls == 2

    asyncio.run(scenario())



class _ScriptedDiscovery:
    """memo.kube for `until_served`: each call answers the next item (True, False or an error)."""

    def __init__(self, *answers) -> None:
        self.answers, self.calls = list(answers), 0

    async def serves_rollouts(self) -> bool:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_until_served_waits_for_the_api_server_and_the_crd_discovery(monkeypatch, caplog):
    """Started while the API server is down, then answering before its CRD discovery is filled:
    kopf must not start watching until FillProbRollouts are served (it would never serve them)."""
    monkeypatch.setattr(handlers, "SERVED_POLL_SECONDS", 0.001)
    monkeypatch.setattr(handlers, "SERVED_REPORT_SECONDS", 0.0)
    kube = _ScriptedDiscovery(KubernetesError("connection refused"), KubernetesError("connection refused"),
                              False, False, True, KubernetesError("must not be asked again"))
    memo = kopf.Memo(kube=kube)
    caplog.set_level(logging.INFO, logger="fillprob_operator")
    asyncio.run(asyncio.wait_for(handlers.until_served(memo=memo), 5))
    assert kube.calls == 5
    waited = [r.getMessage() for r in caplog.records if "waiting_for_api_server" in r.getMessage()]
    assert any("does not answer" in m for m in waited) and any("is the CRD installed" in m for m in waited)


def test_until_served_goes_on_when_the_crd_is_not_installed(monkeypatch, caplog):
    """An API server that answers without FillProbRollouts for the grace period: watch anyway
    (kopf serves them once the CRD is created); one that never answers: keep waiting."""
    monkeypatch.setattr(handlers, "SERVED_POLL_SECONDS", 0.001)
    monkeypatch.setattr(handlers, "SERVED_GRACE_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="fillprob_operator")
    asyncio.run(asyncio.wait_for(handlers.until_served(memo=kopf.Memo(kube=_ScriptedDiscovery(False))), 5))
    assert any("rollouts_not_served" in r.getMessage() for r in caplog.records)

    down = _ScriptedDiscovery(KubernetesError("connection refused"))
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(handlers.until_served(memo=kopf.Memo(kube=down)), 0.3))
    assert down.calls > 3
