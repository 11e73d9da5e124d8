"""FillProbRollouts with hostile but schema-valid content (issue 9, point 4).

What the CRD admits (crds/fillprobrollouts.grinder.io.yaml): object names up to 253 characters,
dots included; spec symbols only `^[A-Z0-9][A-Z0-9._-]{0,31}$`, so Unicode reaches the operator
through status (any string; `history` has no maxItems; `x-kubernetes-preserve-unknown-fields`
admits any JSON for the internal fields), annotations (`grinder.io/rollback-reason`, stored
alerts), the Deployment's env and Prometheus' `symbol` labels; and empty objects (`gates: {}`,
`status: {}`, `annotations: {}`).

The promise, for each: the operator neither crashes nor loops. A tick returns; once the world
stops changing, ticks make no write (no status patch, no Deployment patch, no Job, no Event, no
annotation patch). The real domain runs through the real wiring; the API server is
`fake_world`'s, made as strict as the real one where names and labels matter (`strict_jobs`).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import re

import kopf
import pytest
from fake_world import FakeClock, FakeCluster, FakePrometheus, deployment_body, rollout_body
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException
from test_real_decide import PREFLIGHT_OUTPUT, RESOLUTION_OK, scrape

from fillprob_operator import handlers
from fillprob_operator.domain.observations import RollbackRequest
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import DomainPort
from fillprob_operator.settings import Settings

NS = "trading"
WRITES = ("patch_status", "patch_deployment", "create_job", "create_event", "merge_rollout", "patch_rollout")
LONG_NAME = "a" * 253
DOTTED_NAME = ".".join(["r" * 63] * 3) + "." + "x" * 61  # 253 characters, four dotted parts
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def strict_jobs(cluster: FakeCluster) -> None:
    """Create Jobs as the API server validates them: a DNS subdomain name short enough for the
    `batch.kubernetes.io/job-name` label the Job controller puts on its pods, label values of at
    most 63 characters (422 otherwise)."""
    create = cluster.batch.create_namespaced_job

    def create_namespaced_job(namespace, body, **kw):
        name = body["metadata"]["name"]
        labels = {**body["metadata"].get("labels", {}), **body["spec"]["template"]["metadata"].get("labels", {})}
        problems = [f"metadata.name {name!r}" for _ in [0] if not DNS_SUBDOMAIN.match(name) or len(name) > 63]
        problems += [f"label {k}={v!r}" for k, v in labels.items() if len(v) > 63 or not LABEL_VALUE.match(v)]
        if problems:
            cluster.calls["create_job_refused"] += 1
            raise ApiException(status=422, reason=f"Unprocessable Entity: {'; '.join(problems)}")
        return create(namespace, body, **kw)

    cluster.batch.create_namespaced_job = create_namespaced_job


class World:
    """One rollout named `name`, its Deployment `deployment`, the real domain."""

    def __init__(self, name: str = "grinder", deployment: str = "grinder", status: dict | None = None,
                 metadata: dict | None = None, **spec) -> None:
        self.name, self.deployment = name, deployment
        self.cluster, self.clock = FakeCluster(), FakeClock()
        self.prometheus = FakePrometheus(self.clock)
        strict_jobs(self.cluster)
        self.memo = kopf.Memo()
        handlers.build_runtime(
            self.memo, Settings(prometheus_url="http://prometheus.test:9090", metrics_addr=""),
            kube=self.cluster.adapter(self.clock), connect=lambda url: self.prometheus,
            domain=DomainPort.load(), clock=self.clock, metrics=OperatorMetrics(),
        )
        body = rollout_body(deploymentName=deployment, **spec)
        body["metadata"]["name"] = name
        if metadata is not None:
            body["metadata"] = {"name": name, "namespace": NS, **metadata}
        if status is not None:
            body["status"] = status
        self.cluster.put("FillProbRollout", body)
        dep = deployment_body()
        dep["metadata"]["name"] = deployment
        self.cluster.put("Deployment", dep)

    def close(self) -> None:
        asyncio.run(handlers.cleanup(memo=self.memo))

    @property
    def rollout(self) -> dict:
        return self.cluster.get("FillProbRollout", NS, self.name)

    @property
    def status(self) -> dict:
        return self.rollout.get("status") or {}

    def env(self) -> dict:
        container = self.cluster.get("Deployment", NS, self.deployment)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}

    async def tick(self, seconds: float = 10.0):
        self.clock.advance(seconds)
        return await self.memo.reconciler.tick(NS, self.name)

    def writes(self) -> collections.Counter:
        return collections.Counter({k: self.cluster.calls[k] for k in WRITES})

    async def settles(self, within: int = 4) -> None:
        """Ticks with the clock standing still (nothing changes): at most `within` ticks write,
        then a tick writes nothing at all."""
        for _ in range(within):
            before = self.writes()
            await self.tick(0)
            if self.writes() == before:
                return
        before = self.writes()
        await self.tick(0)
        assert self.writes() == before, f"still writing after {within} ticks: {self.writes() - before}"

    async def nothing_written(self, ticks: int = 2) -> None:
        before = self.writes()
        for _ in range(ticks):
            await self.tick(0)
        assert self.writes() == before, self.writes() - before

    async def shadow_observing(self) -> list[str]:
        """Preflight (its Job), Shadow's restart rolled out and verified."""
        await self.tick(0)
        job = self.status["preflight"]["jobName"]
        self.cluster.finish_job(NS, job, exit_code=0, output=PREFLIGHT_OUTPUT)
        await self.tick()
        pods = self.cluster.roll_out(NS, self.deployment, log=f"{RESOLUTION_OK}\n")
        scrape(self.prometheus, pods, enforce=0.0, allowlist=0.0)
        await self.tick()
        assert (self.status["phase"], self.status["state"]) == ("Shadow", "Observing"), self.status.get("message")
        return pods

    async def canary_observing(self) -> list[str]:
        await self.shadow_observing()
        await self.tick(61)
        await self.tick()
        pods = self.cluster.roll_out(NS, self.deployment, log=f"{RESOLUTION_OK}\n")
        scrape(self.prometheus, pods, enforce=1.0, allowlist=1.0, blocks={"SYM1": 3.0, "SYM2": 0.0})
        await self.tick()
        assert (self.status["phase"], self.status["state"]) == ("Canary", "Observing"), self.status.get("message")
        return pods


@pytest.fixture
def make_world():
    worlds: list[World] = []

    def make(**kwargs) -> World:
        worlds.append(World(**kwargs))
        return worlds[-1]

    yield make
    for world in worlds:
        world.close()


# ---------------------------------------------------------------------------- odd names


@pytest.mark.parametrize("name,deployment", [
    (LONG_NAME, "grinder"),
    (DOTTED_NAME, "grinder"),
    ("grinder.v2.canary", "grinder.v2"),
    ("grinder", DOTTED_NAME),
], ids=["name-253", "name-253-dotted", "dotted", "deployment-253-dotted"])
def test_odd_names_walk_and_settle(make_world, name, deployment):
    """A 253-character name once gave the preflight Job a 253-character label value: the API
    server refused the Job (422) at every tick, and the rollout never left Preflight."""
    world = make_world(name=name, deployment=deployment, observation={"shadow": "60s"},
                       prometheus={"interval": "10s"})

    async def scenario():
        await world.shadow_observing()
        job = world.cluster.items("Job", NS)[0]
        assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"].endswith("-preflight-1")
        label = job["metadata"]["labels"]["grinder.io/fillprobrollout"]
        assert label == name if len(name) <= 63 else (len(label) == 63 and label.startswith(name[:40]))
        assert world.cluster.calls["create_job_refused"] == 0
        involved = {e["involvedObject"]["name"] for e in world.cluster.events}
        assert involved == {name}
        await world.settles()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- huge and unicode status


def filler(i: int, size: int) -> dict:
    return {"at": "2024-05-01T11:00:00Z", "phase": "Shadow", "step": "Shadow ✓", "action": "Note",
            "reason": "Füllstand 📈", "evidence": {"text": "ü€𝄞" * size + str(i), "n": i}}


def test_a_huge_status_with_long_unicode_strings_is_read_and_never_rewritten_for_nothing(make_world):
    world = make_world(observation={"shadow": "60s"}, prometheus={"interval": "10s"})

    async def scenario():
        await world.shadow_observing()
        status = world.rollout["status"]
        status["history"] = [filler(i, 300) for i in range(3000)] + status["history"]  # ~3 MB
        status["requestKeys"] = [f"alert:{'f' * 500}{i}:2024-05-01T00:00:00Z" for i in range(2000)]
        status["threshold"]["mode"] = "recommend_only 🧪"
        # Read, decided on, nothing to do: no write at all.
        await world.nothing_written()
        # Fields the domain derives others from: one write puts them right (the conditions
        # carry the message; last-known-good keeps only what the spec lists), then none.
        status["message"] = "Ω" * 100_000
        status["lastKnownGoodSymbols"] = ["★", "ЖЖ", "SYM1"]
        patches, entries = world.cluster.calls["patch_status"], len(status["history"])
        await world.settles()
        assert world.cluster.calls["patch_status"] == patches + 1
        assert world.status["lastKnownGoodSymbols"] == ["SYM1"]
        assert len(world.status["history"]) == entries  # not rewritten (it is not in the patch)
        await world.nothing_written()
        # A real transition (the window passed): written once, history back to its bound.
        await world.tick(61)
        assert world.status["state"] == "Passed"
        assert len(world.status["history"]) == 100 and world.status["history"][-1]["action"] == "StepPassed"
        assert len(world.status["requestKeys"]) == 2000  # bounded when a key is added, not before
        assert all(len(e["message"]) <= 1024 for e in world.cluster.events)
        await world.nothing_written()

    asyncio.run(scenario())


def test_unicode_symbols_in_metrics_env_and_status_settle(make_world):
    world = make_world(observation={"shadow": "60s", "canary": "60s"}, prometheus={"interval": "10s"})

    async def scenario():
        pods = await world.canary_observing()
        blocks = {"SYM1": 3.0, "SYM2": 0.0, "★": 1.0, "ЖЖ": 0.0, "🚀": 50.0}
        scrape(world.prometheus, pods, enforce=1.0, allowlist=1.0, blocks=blocks)
        world.rollout["status"]["enforcedSymbols"] = ["SYM1", "★"]  # as if another writer had
        await world.settles()
        # Someone widens the allowlist with a symbol no spec may list: undone, halted, settled.
        container = world.cluster.get("Deployment", NS, world.deployment)["spec"]["template"]["spec"]["containers"][0]
        next(e for e in container["env"] if e["name"] == "GRINDER_FILL_PROB_ENFORCE_SYMBOLS")["value"] = "SYM1,★"
        await world.tick()
        assert (world.status["state"], world.status["reason"]) == ("Halted", "EnvChangedOutside")
        assert world.env()["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"] == "SYM1"
        await world.settles()

    asyncio.run(scenario())


def test_unicode_reasons_in_rollback_requests_settle(make_world):
    world = make_world(observation={"shadow": "60s", "canary": "60s"}, prometheus={"interval": "10s"})

    async def scenario():
        await world.canary_observing()
        annotations = world.rollout["metadata"]["annotations"]
        annotations["grinder.io/rollback"] = "R1🔥"  # not a playbook: rejected, removed
        await world.tick()
        assert world.status["history"][-1]["action"] == "RollbackRejected"
        assert "grinder.io/rollback" not in world.rollout["metadata"]["annotations"]
        await world.settles()

        annotations = world.rollout["metadata"]["annotations"]
        annotations["grinder.io/rollback"] = "r2"
        annotations["grinder.io/rollback-reason"] = "🔥 fill-prob sehr schlecht — 回滚 " + "…" * 5000
        await world.tick()
        s = world.status
        assert (s["state"], s["lastRollback"]["reason"]) == ("RolledBack", "ManualRollback")
        assert s["lastRollback"]["evidence"]["why"].startswith("🔥 fill-prob")
        await world.settles()

        request = RollbackRequest(playbook="R1", reason="AlertFired", source="Ünïcödé{symbol=\"★\"}",
                                  key="alert:ü★:2024-05-01T12:00:00Z",
                                  evidence={"startsAt": "2024-05-01T12:00:00Z", "labels": {"symbol": "★"}})
        assert await handlers.submit_rollback(world.memo, request, NS, world.name)
        await world.tick()
        assert "alert:ü★:2024-05-01T12:00:00Z" in world.status["requestKeys"]
        assert not [a for a in world.rollout["metadata"]["annotations"] if a.startswith("alert.grinder.io/")]
        await world.settles()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- empty objects


@pytest.mark.parametrize("kwargs", [
    dict(observation={}, gates={}, preflight={}, prometheus={}),
    dict(metadata={"generation": 1}),  # no annotations, no labels at all
    dict(status={}),
    dict(status={"state": "Pending"}),
    dict(status={"state": "Observing", "phase": "Shadow", "history": [], "conditions": [], "threshold": {},
                 "enforcedSymbols": [], "lastKnownGoodSymbols": [], "requestKeys": []}),
], ids=["empty-spec-objects", "bare-metadata", "empty-status", "state-only", "empty-lists"])
def test_empty_objects_walk_and_settle(make_world, kwargs):
    world = make_world(**kwargs)

    async def scenario():
        outcome = await world.tick(0)
        assert outcome.phase in ("Preflight", "Shadow")
        await world.settles()

    asyncio.run(scenario())


@pytest.mark.parametrize("status", [
    {"state": "Observing", "history": [{}]},
    {"state": "RolledBack", "lastRollback": {}},
    {"state": "Observing", "conditions": [{"type": "Ready", "status": "True"}]},  # all the CRD requires
    {"state": "Observing", "restart": "not an object"},  # internal fields: any JSON
], ids=["empty-history-entry", "empty-last-rollback", "bare-condition", "odd-internal-field"])
def test_a_status_the_operator_cannot_read_is_reported_never_rewritten(make_world, caplog, status):
    """API.md: never start over from a status that does not parse (it could repeat a restart or
    a rollback): each tick reports it and writes nothing."""
    world = make_world(status=copy.deepcopy(status))

    async def scenario():
        await world.nothing_written(ticks=3)
        assert world.status == status
        assert sum("event=invalid_status" in r.getMessage() for r in caplog.records) == 3

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- random statuses


TEXT = st.text(max_size=30)
STAMPS = st.sampled_from(["2024-05-01T12:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                          "2024-05-01T11:59:59.999Z", "2024-05-01T12:00:00+14:00"])
STATES = ["Pending", "Preflight", "Restarting", "Verifying", "Observing", "Passed", "Halted", "RolledBack", "Suspended"]
PHASES = ["Preflight", "Shadow", "Canary", "Expand", "Full", "AutoThreshold"]
ENV_VALUES = st.one_of(st.none(), st.sampled_from(["0", "1", "", "SYM1", "SYM1,★", "2500"]), TEXT)
MANAGED = st.sampled_from(["GRINDER_FILL_MODEL_ENFORCE", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS",
                           "GRINDER_FILL_PROB_AUTO_THRESHOLD", "UNRELATED"])
STATUSES = st.fixed_dictionaries({"state": st.sampled_from(STATES)}, optional={
    "phase": st.sampled_from(PHASES), "step": TEXT, "observedGeneration": st.integers(-3, 10**9),
    "enforcedSymbols": st.lists(TEXT, max_size=3), "enforcedSymbolCount": st.integers(-1, 10**6),
    "lastKnownGoodSymbols": st.lists(st.one_of(TEXT, st.just("SYM1")), max_size=3),
    "observationStartedAt": STAMPS, "observationEndsAt": STAMPS,
    "threshold": st.fixed_dictionaries({}, optional={"configuredBps": st.integers(-1, 10**6), "mode": TEXT}),
    "lastRollback": st.fixed_dictionaries(
        {"playbook": st.sampled_from(["R1", "R2", "R3"]), "reason": TEXT, "at": STAMPS},
        optional={"evidence": st.dictionaries(TEXT, TEXT, max_size=2)}),
    "conditions": st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["Ready", "Progressing", "Degraded", "MetricsAvailable", "Other"]),
         "status": st.sampled_from(["True", "False", "Unknown"]), "reason": TEXT, "lastTransitionTime": STAMPS},
        optional={"message": TEXT, "observedGeneration": st.integers(-1, 5)}), max_size=4),
    "history": st.lists(st.fixed_dictionaries(
        {"at": STAMPS, "phase": TEXT, "step": TEXT, "action": TEXT, "reason": TEXT},
        optional={"evidence": st.dictionaries(TEXT, TEXT, max_size=2)}), max_size=4),
    "reason": TEXT, "message": TEXT, "batch": st.one_of(st.none(), st.integers(-2, 30)),
    "appliedEnv": st.fixed_dictionaries({}, optional={
        "enforce": ENV_VALUES, "autoThreshold": ENV_VALUES, "enforceSymbols": ENV_VALUES, "minBps": ENV_VALUES}),
    "restart": st.fixed_dictionaries(
        {"seq": st.integers(-5, 10**12), "token": st.one_of(TEXT, st.sampled_from(["1-1", "1-2", "0-0", ""])),
         "issuedAt": STAMPS},
        optional={"setEnv": st.dictionaries(MANAGED, TEXT, max_size=3), "removeEnv": st.lists(MANAGED, max_size=2),
                  "verified": st.booleans(), "reachedAt": STAMPS}),
    "preflight": st.fixed_dictionaries(
        {"run": st.integers(-1, 5), "state": st.sampled_from(["Running", "Succeeded", "Failed", "Skipped", "Odd"])},
        optional={"jobName": TEXT, "startedAt": STAMPS, "modelDir": TEXT}),
    "resumeState": st.sampled_from(STATES), "suspendedAt": STAMPS, "pausedSeconds": st.integers(-10**9, 10**12),
    "deploymentUid": TEXT, "requestKeys": st.lists(TEXT, max_size=3),
})
SPECS = st.fixed_dictionaries({}, optional={
    "targetPhase": st.sampled_from(["Shadow", "Canary", "Full", "AutoThreshold"]),
    "expandBatches": st.just([["SYM2"], ["SYM3"]]), "safeSymbols": st.just(["SYM1"]), "suspend": st.booleans(),
    "observation": st.just({}), "gates": st.just({}), "preflight": st.just({}), "prometheus": st.just({}),
})


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(status=STATUSES, spec=SPECS)
@example(status={"state": "Pending", "restart": {"seq": 0, "token": "", "issuedAt": "2024-05-01T12:00:00Z"}}, spec={})
def test_any_status_the_schema_admits_settles(status, spec):
    """Every tick returns and, the world standing still, the writes stop within a few ticks.
    The example: a restart with an empty token once patched the Deployment (an empty patch)
    at every tick."""
    world = World(status=copy.deepcopy(status), **spec)
    try:
        asyncio.run(world.settles())
    finally:
        world.close()


def test_resuming_to_a_resume_state_of_suspended_does_not_crash(make_world):
    """lifecycle.resume() once took resumeState=Suspended as the state to resume to, and
    decide() has no handler for Suspended: a KeyError at every tick. It resumes as Pending."""
    world = make_world(status={"state": "Suspended", "resumeState": "Suspended"})
    asyncio.run(world.tick(0))


def test_observing_at_phase_preflight_does_not_crash(make_world):
    """walking.follow_spec() once asserted a window end, which Tick.window_ends() never gives
    for phase Preflight (state Observing with observationStartedAt): an AssertionError at every
    tick."""
    world = make_world(status={"state": "Observing", "phase": "Preflight",
                               "observationStartedAt": "2024-05-01T12:00:00Z"})
    asyncio.run(world.tick(0))
