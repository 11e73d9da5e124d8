"""Model-based property tests: a hypothesis state machine drives the real `decide()` through
random everyday change (STYLE.md "One rule, one home": state the promise, then test it).

`Sim` is a small simulated world: the managed Deployment (uid, env, who set each env key,
the restart-token annotation, a rollout that completes or stalls, new pods with logs and
metrics), Prometheus, the preflight Job, the rollback annotation and the Alertmanager inbox,
and a clock (injected; nothing sleeps). A tick is what the operator does: observe, decide,
execute the actions the way the adapters do. After every tick every promise in
`invariants.py` is checked. Profiles: tests/conftest.py ("ci" by default, HYPOTHESIS_PROFILE=dev).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from invariants import (
    AUTO_THRESHOLD,
    ENFORCE,
    ENFORCE_SYMBOLS,
    MIN_BPS,
    STOPPED,
    DeploymentView,
    Snapshot,
    check_all,
    data_missing,
    parse_symbols,
)

from fillprob_operator.api import RolloutStatus, SpecError, State, parse_spec
from fillprob_operator.domain.actions import ClearRollbackAnnotation, EmitEvent, PatchEnv, RunPreflight
from fillprob_operator.domain.decide import decide
from fillprob_operator.domain.observations import (
    DeploymentObservation,
    JobState,
    MetricsObservation,
    Observations,
    PodMetrics,
    PodStartup,
    PreflightObservation,
    RollbackRequest,
)

from domain_builders import NAME, NAMESPACE, T0  # noqa: E402 (one clock origin and name for the unit tier)

OPERATOR = "fillprob-operator"
MODEL_DIR, EVAL_DIR, ARTIFACT_DIR = "GRINDER_FILL_MODEL_DIR", "GRINDER_FILL_PROB_EVAL_DIR", "GRINDER_ARTIFACT_DIR"
SYMBOLS = ("S1", "S2", "S3", "S4", "S5", "S6")
START_ENV: dict[str, str | None] = {
    MODEL_DIR: "/models/v1",
    EVAL_DIR: "/eval/v1",
    ARTIFACT_DIR: "/artifacts",
    MIN_BPS: "2500",
    "UNRELATED": "keep-me",
}
PHASES = ("Shadow", "Canary", "Expand", "Full", "AutoThreshold")
CANARY_OPTIONS = (("S1", "S2"), ("S1",), ("S1", "S3"))
BATCH_OPTIONS = ((), (("S4", "S5"),), (("S4",), ("S5", "S6")), (("S6",),), (("S4", "S5"), ("S6",)))
WINDOW_OPTIONS = (20, 60, 180)
WINDOW_KEYS = ("shadow", "canary", "expandBatch", "full", "autoThreshold")
INTERVAL = timedelta(seconds=10)
MANAGERS = ("kubectl-set", "argocd-controller", "helm")


def spec_body(
    target: str = "AutoThreshold",
    canary: tuple[str, ...] = ("S1", "S2"),
    batches: tuple[tuple[str, ...], ...] = (("S4", "S5"), ("S6",)),
    min_bps: int | None = None,
    windows: dict[str, int] | None = None,
    suspend: bool = False,
) -> dict[str, Any]:
    """A FillProbRollout spec with windows in seconds, so they can elapse in a test."""
    windows = {k: 60 for k in WINDOW_KEYS} | (windows or {})
    body: dict[str, Any] = {
        "deploymentName": "grinder",
        "containerName": "grinder",
        "targetPhase": target,
        "canarySymbols": list(canary),
        "expandBatches": [list(b) for b in batches],
        "safeSymbols": ["S1"],
        "observation": {k: f"{v}s" for k, v in windows.items()},
        "prometheus": {"interval": "10s"},
        "progressDeadline": "90s",
        "preflight": {"timeout": "60s"},
        "suspend": suspend,
    }
    if min_bps is not None:
        body["minBps"] = min_bps
    return body


def round_trip(status: RolloutStatus) -> RolloutStatus:
    """What an operator restart reads back from the API server."""
    return RolloutStatus.model_validate(json.loads(json.dumps(status.to_patch_body())))


@dataclass(frozen=True)
class Pod:
    name: str
    env: dict[str, str | None]
    token: str | None
    resolution_line: str
    recommended_bps: int
    cb_lines: tuple[str, ...] = ()
    cb_trips: float = 0.0
    block_all: str | None = None


class Sim:
    """The world one FillProbRollout lives in, plus the operator's loop over it."""

    def __init__(self, body: dict[str, Any] | None = None, env: dict[str, str | None] | None = None) -> None:
        self.now = T0
        self.body = body or spec_body()
        self.spec = parse_spec(self.body)
        self.generation = 1
        self.status: RolloutStatus | None = None
        # the Deployment
        self.exists = True
        self.uid_seq = 1
        self.env: dict[str, str | None] = dict(env if env is not None else START_ENV)
        self.env_managers: dict[str, str] = {k: "helm" for k in self.env}
        self.token: str | None = None
        self.dep_generation = 1
        self.rollout_complete = False
        self.pods: tuple[Pod, ...] = ()
        self.pod_seq = 0
        # The newest ReplicaSet: its template's restart token, whether it is the Deployment's
        # current template (False until the Deployment controller makes it, after a template
        # change), and whether `pods` are its pods (False while its pods are not up yet).
        self.rs_token: str | None = None
        self.rs_current = False
        self.rs_pods = False
        self.next_resolution = "ok"  # what the next pods log: ok | failed
        # Prometheus, logs, the model
        self.metrics_available = True
        self.logs_readable = True
        self.recommended_bps = 2600
        # the preflight Job, rollback requests
        self.job: PreflightObservation | None = None
        self.annotation: RollbackRequest | None = None
        self.inbox: list[RollbackRequest] = []
        self.delivered: list[RollbackRequest] = []
        self.alert_seq = 0
        # model facts for the invariants
        self.climb_blocked = False
        self.target_lowered = False
        self.spec_changed = False
        # False in the regression tests: they assert their one promise themselves.
        self.check = True
        self.complete_rollout()

    @property
    def uid(self) -> str:
        return f"uid-{self.uid_seq}"

    # ------------------------------------------------------------------ the cluster

    def template_changed(self) -> None:
        """A pod template change: the Deployment controller will start a new ReplicaSet; until
        it does (`make_replica_set`) the newest one, and its pods, are the previous template's."""
        self.dep_generation += 1
        self.rollout_complete = False
        self.rs_current = False

    def make_replica_set(self) -> None:
        """The Deployment controller makes the current template's ReplicaSet (no pod up yet)."""
        if self.exists and not self.rs_current:
            self.rs_token, self.rs_current, self.rs_pods = self.token, True, False

    def complete_rollout(self) -> None:
        """The new ReplicaSet's pods are up, ready and have logged their startup line."""
        if not self.exists:
            return
        env = dict(self.env)
        auto = env.get(AUTO_THRESHOLD) == "1"
        configured = int(env.get(MIN_BPS) or 2500)
        if not env.get(MODEL_DIR):
            line = "THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset"
        elif self.next_resolution == "failed":
            line = "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason=eval_report_missing"
        else:
            effective = self.recommended_bps if auto else configured
            line = (f"FILL_PROB_THRESHOLD_RESOLUTION_OK mode={'auto_apply' if auto else 'recommend_only'} "
                    f"recommended_bps={self.recommended_bps} configured_bps={configured} effective_bps={effective}")
        self.next_resolution = "ok"
        self.make_replica_set()
        self.pods = tuple(self._pod(env, line) for _ in range(2))
        self.rollout_complete = self.rs_pods = True

    def _pod(self, env: dict[str, str | None], line: str) -> Pod:
        self.pod_seq += 1
        return Pod(f"grinder-{self.pod_seq:04d}", env, self.token, line, self.recommended_bps)

    def replace_pods(self) -> None:
        """Pods of the same ReplicaSet replaced (evicted, crashed): same env, clean logs."""
        self.pods = tuple(replace(self._pod(p.env, p.resolution_line), token=p.token,
                                  recommended_bps=p.recommended_bps) for p in self.pods)

    def edit_env(self, key: str, value: str | None, manager: str) -> None:
        """Someone else (`kubectl set env`, a GitOps sync, another controller) edits the env."""
        if value is None:
            self.env.pop(key, None)
        else:
            self.env[key] = value
        self.env_managers[key] = manager
        self.template_changed()

    def delete_deployment(self) -> None:
        self.exists = False
        self.pods = ()
        self.rollout_complete = False
        self.rs_token, self.rs_current, self.rs_pods = None, False, False

    def recreate_deployment(self) -> None:
        """Recreated from git: a new uid, the starting env (with today's model), no restart token."""
        self.exists = True
        self.uid_seq += 1
        model = {k: self.env[k] for k in (MODEL_DIR, EVAL_DIR) if k in self.env}
        self.env = {**START_ENV, **model}
        self.env_managers = {k: "argocd-controller" for k in self.env}
        self.token = None
        self.dep_generation = 1
        self.rollout_complete = False
        self.pods = ()
        self.rs_token, self.rs_current, self.rs_pods = None, False, False

    # ------------------------------------------------------------------ what the adapters see

    def observations(self, *, truth: bool = False) -> Observations:
        requests = tuple(([self.annotation] if self.annotation else []) + self.inbox)
        if not self.exists:
            return Observations(DeploymentObservation(exists=False), MetricsObservation(True, pods={}),
                                self.job, requests)
        pods = self.newest_pods()
        readable = truth or self.logs_readable
        new_pods = tuple(
            PodStartup(p.name, True, p.resolution_line if readable else None,
                       p.cb_lines if readable else (), log_readable=readable)
            for p in pods
        )
        deployment = DeploymentObservation(
            exists=True, uid=self.uid, generation=self.dep_generation, observed_generation=self.dep_generation,
            container_names=("grinder",), env=dict(self.env), env_managers=dict(self.env_managers),
            restart_token=self.token, rollout_complete=self.rollout_complete,
            rollout_message="successfully rolled out" if self.rollout_complete else "waiting for rollout to finish",
            new_pods=new_pods, pods_restart_token=self.rs_token,
        )
        if self.metrics_available or truth:
            metrics = MetricsObservation(True, pods={p.name: self._metrics(p) for p in pods}, queried_at=self.now)
        else:
            metrics = MetricsObservation(False, reason="PrometheusUnreachable")
        return Observations(deployment, metrics, self.job, requests)

    def _metrics(self, pod: Pod) -> PodMetrics:
        enforce = pod.env.get(ENFORCE) == "1"
        allow = parse_symbols(pod.env.get(ENFORCE_SYMBOLS))

        def enforced(symbol: str) -> bool:
            return enforce and (not allow or symbol in allow)

        return PodMetrics(
            pod=pod.name,
            enforce_enabled=1.0 if enforce else 0.0,
            allowlist_enabled=1.0 if allow else 0.0,
            auto_threshold_bps=float(pod.recommended_bps),
            circuit_breaker_trips=pod.cb_trips,
            blocks_by_symbol={s: 40.0 if enforced(s) else 0.0 for s in SYMBOLS},
            orders_by_symbol={s: 1000.0 for s in SYMBOLS},
            recent_blocks_by_symbol={
                s: (100.0 if s == pod.block_all else 25.0) if enforced(s) else 0.0 for s in SYMBOLS},
            recent_orders_by_symbol={s: 100.0 for s in SYMBOLS},
            sampled_at=self.now,
        )

    def view(self) -> DeploymentView:
        if not self.exists:
            return DeploymentView(exists=False)
        pods = self.newest_pods()
        return DeploymentView(True, self.uid, dict(self.env), self.token, self.rollout_complete,
                              dict(pods[0].env) if pods else None, pods[0].token if pods else None)

    def newest_pods(self) -> tuple[Pod, ...]:
        """The newest ReplicaSet's pods, up: the previous step's until the new ReplicaSet is made."""
        return self.pods if self.exists and self.rs_pods else ()

    # ------------------------------------------------------------------ what the adapters do

    def execute(self, actions: tuple[Any, ...]) -> None:
        for action in actions:
            if isinstance(action, PatchEnv):
                if not self.exists or (action.restart_token and action.restart_token == self.token):
                    continue
                for key in action.remove_env:
                    self.env.pop(key, None)
                    self.env_managers.pop(key, None)
                for key, value in action.set_env.items():
                    self.env[key] = value
                    self.env_managers[key] = OPERATOR
                self.token = action.restart_token
                self.template_changed()
            elif isinstance(action, RunPreflight):
                if self.job is None or self.job.job_name != action.job_name:
                    self.job = PreflightObservation(action.job_name, JobState.RUNNING)
            elif isinstance(action, ClearRollbackAnnotation):
                self.annotation = None
            elif not isinstance(action, EmitEvent):
                raise TypeError(f"unknown action {action!r}")

    # ------------------------------------------------------------------ spec

    def set_spec(self, body: dict[str, Any]) -> bool:
        """A spec edit the API server accepted (an invalid one is rejected there: no change)."""
        try:
            spec = parse_spec(body)
        except SpecError:
            return False
        if body == self.body:
            return False
        old = self.spec
        sans = lambda b: {k: v for k, v in b.items() if k != "suspend"}  # noqa: E731
        if sans(body) != sans(self.body):
            self.spec_changed = True
            self.climb_blocked = False
        if PHASES.index(spec.target_phase.value) < PHASES.index(old.target_phase.value):
            self.target_lowered = True
        self.body, self.spec = body, spec
        self.generation += 1
        return True

    # ------------------------------------------------------------------ the operator's tick

    def tick(self, status: RolloutStatus | None = None) -> Any:
        """observe -> decide -> execute, then check every promise."""
        if status is not None:
            self.status = status
        obs = self.observations()
        before = Snapshot(self.spec, self.status, self.view(), self.now, climb_blocked=self.climb_blocked,
                          target_lowered=self.target_lowered, spec_changed=self.spec_changed)
        kwargs = dict(generation=self.generation, name=NAME, namespace=NAMESPACE)
        decision = decide(self.spec, self.status, obs, self.now, **kwargs)
        round_tripped = None
        if self.status is not None:
            round_tripped = decide(self.spec, round_trip(self.status), obs, self.now, **kwargs)
        counterfactual = None
        if self.exists and data_missing(obs):
            counterfactual = decide(self.spec, self.status, self.observations(truth=True), self.now, **kwargs)
        self.execute(decision.actions)
        again = None
        if self.exists:
            again = decide(self.spec, decision.status, self.observations(), self.now, **kwargs)
        after = Snapshot(self.spec, decision.status, self.view(), self.now, actions=decision.actions,
                         round_trip=round_tripped, original=decision, again=again, counterfactual=counterfactual)
        self.status = decision.status
        if self.check:
            check_all(before, after, obs)
        # the model's memory of the past
        state = decision.status.state
        active = not self.spec.suspend and self.exists
        # A tick that could not act (suspended, the Deployment missing) leaves a pending spec
        # change pending: the stopped status it kept predates that change, and the change still
        # re-arms the rollout once a tick can act on it.
        if state in STOPPED and (active or not self.spec_changed):
            self.climb_blocked = True
        if active:
            self.inbox = []  # handed to decide() and executed: taken
            self.spec_changed = False
            self.target_lowered = False
        return decision

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # ------------------------------------------------------------------ the happy path

    def progress(self) -> None:
        """Whatever moves a healthy rollout along: the Job ends, the rollout ends, time passes."""
        if self.job is not None and self.job.state is JobState.RUNNING:
            self.finish_job(ok=True)
        elif self.exists and not self.rollout_complete:
            self.complete_rollout()
        elif self.status is not None and self.status.observation_ends_at and self.status.observation_ends_at > self.now:
            self.now = self.status.observation_ends_at
        else:
            self.now += INTERVAL

    def finish_job(self, ok: bool) -> None:
        assert self.job is not None
        configured = self.env.get(MIN_BPS) or "2500"
        if ok:
            output = (f"PASS model_dir\nconfigured_bps={configured}\nrecommended_bps={self.recommended_bps}\n"
                      f"effective_bps={configured}\nmode=recommend_only\nPREFLIGHT_PASS\n")
        else:
            output = "FAIL eval_report: /eval/v1/eval_report.json does not exist\nPREFLIGHT_FAIL failed=1\n"
        self.job = replace(self.job, state=JobState.SUCCEEDED if ok else JobState.FAILED, output=output,
                           exit_code=0 if ok else 1)

    # ------------------------------------------------------------------ rollback requests

    def annotate(self, playbook: str, at: datetime | None = None) -> RollbackRequest:
        set_at = (at or self.now).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.annotation = RollbackRequest(
            playbook=playbook, reason="ManualRollback", source=f"annotation grinder.io/rollback={playbook} by alice",
            evidence={"annotation": playbook, "manager": "alice", "setAt": set_at},
            key=f"annotation/rollout-uid/{playbook}/{set_at}",
        )
        return self.annotation

    def alert(self, playbook: str, starts_at: datetime) -> RollbackRequest:
        self.alert_seq += 1
        fingerprint = f"fp{self.alert_seq:04d}"
        started = starts_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        request = RollbackRequest(
            playbook=playbook, reason="AlertFired",
            source=f"alert FillProbCircuitBreakerTripped ({fingerprint}) since {started}",
            evidence={"alertname": "FillProbCircuitBreakerTripped", "startsAt": started, "fingerprint": fingerprint},
            key=f"alert:{fingerprint}:{started}",
        )
        self.deliver(request)
        return request

    def deliver(self, request: RollbackRequest) -> None:
        self.inbox.append(request)
        self.delivered.append(request)


# --------------------------------------------------------------------------- the state machine


class EverydayChange(RuleBasedStateMachine):
    """Random everyday change under the ladder; every promise checked after every tick."""

    sim: Sim

    @initialize(
        phase=st.sampled_from(PHASES),
        canary=st.sampled_from(CANARY_OPTIONS),
        batches=st.sampled_from(BATCH_OPTIONS),
        min_bps=st.sampled_from((None, None, 2600)),
        window=st.sampled_from(WINDOW_OPTIONS),
        start_enforce=st.sampled_from(("unset", "unset", "unset", "0", "1")),
        walk=st.integers(0, 14),
    )
    def start(self, phase: str, canary, batches, min_bps, window, start_enforce: str, walk: int) -> None:
        target = "Full" if phase == "Expand" and not batches else phase
        env = dict(START_ENV)
        if start_enforce != "unset":
            env[ENFORCE] = start_enforce
        self.sim = Sim(spec_body(target, canary, batches, min_bps, {k: window for k in WINDOW_KEYS}), env)
        self.sim.tick()
        for _ in range(walk):
            self.sim.progress()
            self.sim.tick()

    # ---- time and the happy path

    @rule()
    def progress(self) -> None:
        self.sim.progress()
        self.sim.tick()

    @rule(seconds=st.sampled_from((1, 10, 30, 60, 120)))
    def time_passes(self, seconds: int) -> None:
        self.sim.advance(seconds)
        self.sim.tick()

    @rule(seconds=st.sampled_from((3600, 86400)))
    def clock_jumps(self, seconds: int) -> None:
        """The operator was down for an hour or a day (or the node clock jumped)."""
        self.sim.advance(seconds)
        self.sim.tick()

    @rule()
    def operator_restarts(self) -> None:
        """A new operator process: status re-read from the API server (JSON)."""
        self.sim.tick(round_trip(self.sim.status) if self.sim.status is not None else None)

    # ---- the Deployment and its pods

    @precondition(lambda self: self.sim.exists and not self.sim.rs_current)
    @rule()
    def replica_set_made(self) -> None:
        """The Deployment controller makes the new ReplicaSet (until then the newest one, and
        the pods observed, are the previous template's: the previous step's, tripped or not)."""
        self.sim.make_replica_set()
        self.sim.tick()

    @precondition(lambda self: self.sim.exists and not self.sim.rollout_complete)
    @rule()
    def rollout_completes(self) -> None:
        self.sim.complete_rollout()
        self.sim.tick()

    @precondition(lambda self: self.sim.exists and not self.sim.rollout_complete)
    @rule()
    def rollout_completes_with_resolution_failed(self) -> None:
        self.sim.next_resolution = "failed"
        self.sim.complete_rollout()
        self.sim.tick()

    @precondition(lambda self: self.sim.exists and not self.sim.rollout_complete)
    @rule()
    def rollout_stalls(self) -> None:
        """The rollout does not finish; time runs past progressDeadline."""
        self.sim.advance(100)
        self.sim.tick()

    @precondition(lambda self: self.sim.exists and self.sim.rollout_complete)
    @rule()
    def pods_replaced(self) -> None:
        self.sim.replace_pods()
        self.sim.tick()

    @precondition(lambda self: self.sim.exists)
    @rule()
    def deployment_deleted(self) -> None:
        self.sim.delete_deployment()
        self.sim.tick()

    @precondition(lambda self: not self.sim.exists)
    @rule()
    def deployment_recreated(self) -> None:
        self.sim.recreate_deployment()
        self.sim.tick()

    # ---- what the pods say

    @precondition(lambda self: self.sim.newest_pods())
    @rule(via=st.sampled_from(("log", "log", "gauge", "both")), all_pods=st.booleans())
    def circuit_breaker_trips(self, via: str, all_pods: bool) -> None:
        line = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED symbol=S1 reason=block_rate"
        pods = list(self.sim.pods)
        for i, pod in enumerate(pods):
            if all_pods or i == 0:
                pods[i] = replace(pod, cb_lines=pod.cb_lines + ((line,) if via != "gauge" else ()),
                                  cb_trips=pod.cb_trips + (1.0 if via != "log" else 0.0))
        self.sim.pods = tuple(pods)
        self.sim.tick()

    @precondition(lambda self: self.sim.newest_pods())
    @rule(symbol=st.sampled_from(SYMBOLS))
    def symbol_all_blocked(self, symbol: str) -> None:
        self.sim.pods = tuple(replace(p, block_all=symbol) for p in self.sim.pods)
        self.sim.tick()

    # ---- missing data

    @precondition(lambda self: self.sim.metrics_available)
    @rule()
    def prometheus_down(self) -> None:
        self.sim.metrics_available = False
        self.sim.tick()

    @precondition(lambda self: not self.sim.metrics_available)
    @rule()
    def prometheus_back(self) -> None:
        self.sim.metrics_available = True
        self.sim.tick()

    @precondition(lambda self: self.sim.logs_readable)
    @rule()
    def logs_unreadable(self) -> None:
        self.sim.logs_readable = False
        self.sim.tick()

    @precondition(lambda self: not self.sim.logs_readable)
    @rule()
    def logs_readable_again(self) -> None:
        self.sim.logs_readable = True
        self.sim.tick()

    # ---- the preflight Job

    @precondition(lambda self: self.sim.job is not None and self.sim.job.state is JobState.RUNNING)
    @rule(ok=st.booleans())
    def preflight_job_ends(self, ok: bool) -> None:
        self.sim.finish_job(ok)
        self.sim.tick()

    @precondition(lambda self: self.sim.exists)
    @rule(which=st.sampled_from((MODEL_DIR, MODEL_DIR, EVAL_DIR)), unset=st.sampled_from((False, False, False, True)))
    def model_dir_changes(self, which: str, unset: bool) -> None:
        """A new model (or eval report) is rolled out by changing the dir on the container."""
        self.sim.recommended_bps += 100
        value = None if unset else f"{self.sim.env.get(which) or '/models/v1'}-next"
        self.sim.edit_env(which, value, "argocd-controller")
        self.sim.tick()

    # ---- someone else edits the managed env

    @precondition(lambda self: self.sim.exists)
    @rule(change=st.sampled_from(("enforce_off", "drop_symbol", "auto_off")), manager=st.sampled_from(MANAGERS))
    def env_narrowed_by_someone_else(self, change: str, manager: str) -> None:
        env = self.sim.env
        symbols = sorted(parse_symbols(env.get(ENFORCE_SYMBOLS)))
        if change == "enforce_off" and env.get(ENFORCE) == "1":
            self.sim.edit_env(ENFORCE, "0", manager)
        elif change == "drop_symbol" and env.get(ENFORCE) == "1" and len(symbols) >= 2:
            self.sim.edit_env(ENFORCE_SYMBOLS, ",".join(symbols[:-1]), manager)
        elif change == "auto_off" and env.get(AUTO_THRESHOLD) == "1":
            self.sim.edit_env(AUTO_THRESHOLD, "0", manager)
        self.sim.tick()

    @precondition(lambda self: self.sim.exists)
    @rule(change=st.sampled_from(("enforce_on", "add_symbol", "all_symbols", "auto_on", "min_bps")),
          manager=st.sampled_from(MANAGERS))
    def env_widened_by_someone_else(self, change: str, manager: str) -> None:
        env = self.sim.env
        symbols = sorted(parse_symbols(env.get(ENFORCE_SYMBOLS)))
        if change == "enforce_on" and env.get(ENFORCE) != "1":
            self.sim.edit_env(ENFORCE, "1", manager)
        elif change == "add_symbol" and symbols:
            extra = next((s for s in SYMBOLS if s not in symbols), None)
            if extra:
                self.sim.edit_env(ENFORCE_SYMBOLS, ",".join(symbols + [extra]), manager)
        elif change == "all_symbols" and env.get(ENFORCE) == "1" and symbols:
            self.sim.edit_env(ENFORCE_SYMBOLS, "", manager)
        elif change == "auto_on" and env.get(AUTO_THRESHOLD) != "1":
            self.sim.edit_env(AUTO_THRESHOLD, "1", manager)
        elif change == "min_bps":
            self.sim.edit_env(MIN_BPS, "3100", manager)
        self.sim.tick()

    # ---- spec edits

    def _edit(self, **changes: Any) -> None:
        body = json.loads(json.dumps(self.sim.body))
        body.update(changes)
        self.sim.set_spec(body)
        self.sim.tick()

    @rule(phase=st.sampled_from(PHASES))
    def target_phase_edited(self, phase: str) -> None:
        self._edit(targetPhase=phase)

    @rule(canary=st.sampled_from(CANARY_OPTIONS))
    def canary_symbols_edited(self, canary) -> None:
        self._edit(canarySymbols=list(canary))

    @rule(batches=st.sampled_from(BATCH_OPTIONS))
    def expand_batches_edited(self, batches) -> None:
        self._edit(expandBatches=[list(b) for b in batches])

    @rule(min_bps=st.sampled_from((None, 2500, 2600)))
    def min_bps_edited(self, min_bps) -> None:
        body = json.loads(json.dumps(self.sim.body))
        body.pop("minBps", None)
        if min_bps is not None:
            body["minBps"] = min_bps
        self.sim.set_spec(body)
        self.sim.tick()

    @rule(key=st.sampled_from(WINDOW_KEYS), seconds=st.sampled_from(WINDOW_OPTIONS))
    def observation_window_edited(self, key: str, seconds: int) -> None:
        self._edit(observation={**self.sim.body["observation"], key: f"{seconds}s"})

    @rule()
    def suspend_toggled(self) -> None:
        self._edit(suspend=not self.sim.body.get("suspend", False))

    # ---- rollbacks asked for from outside

    @rule(playbook=st.sampled_from(("R1", "R2", "R3")))
    def rollback_annotation_set(self, playbook: str) -> None:
        self.sim.annotate(playbook)
        self.sim.tick()

    @rule(playbook=st.sampled_from(("R1", "R2", "R3")))
    def rollback_annotation_set_at_start_again(self, playbook: str) -> None:
        """An annotation setting with a key seen before (a stale cache, a re-applied manifest)."""
        self.sim.annotate(playbook, at=T0)
        self.sim.tick()

    @rule(playbook=st.sampled_from(("R1", "R2", "R3", "")), age=st.sampled_from((0, 0, 7200)))
    def alert_fires(self, playbook: str, age: int) -> None:
        self.sim.alert(playbook, self.sim.now - timedelta(seconds=age))
        self.sim.tick()

    @precondition(lambda self: self.sim.delivered)
    @rule()
    def alert_delivered_again(self) -> None:
        """Alertmanager re-sends (repeat_interval, another replica): the same fingerprint+startsAt."""
        self.sim.deliver(self.sim.delivered[-1])
        self.sim.tick()


TestEverydayChange = EverydayChange.TestCase
