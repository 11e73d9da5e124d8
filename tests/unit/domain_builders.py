"""Builders for the domain's unit tests: specs, a fake "world" (Deployment, pods, Prometheus,
preflight Job) that executes decide()'s actions, and an injected clock. No I/O, no sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from fillprob_operator.api import FillProbRolloutSpec, RolloutStatus, parse_spec
from fillprob_operator.domain.actions import ClearRollbackAnnotation, EmitEvent, PatchEnv, RunPreflight
from fillprob_operator.domain.decide import Decision, decide
from fillprob_operator.domain.ladder import (
    ARTIFACT_DIR,
    AUTO_THRESHOLD,
    ENFORCE,
    ENFORCE_SYMBOLS,
    EVAL_DIR,
    MIN_BPS,
    MODEL_DIR,
    parse_symbols,
)
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

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc)
NAME, NAMESPACE = "grinder", "trading"
SYMBOLS = tuple(f"SYM{i}" for i in range(1, 9))

START_ENV: dict[str, str | None] = {
    MODEL_DIR: "/data/model",
    EVAL_DIR: "/data/eval",
    ARTIFACT_DIR: "/data/artifacts",
    MIN_BPS: "2500",
}


def make_spec(**overrides: Any) -> FillProbRolloutSpec:
    body: dict[str, Any] = {
        "deploymentName": "grinder",
        "containerName": "grinder",
        "targetPhase": "AutoThreshold",
        "canarySymbols": ["SYM1", "SYM2"],
        "expandBatches": [["SYM3", "SYM4"], ["SYM5", "SYM6"]],
        "safeSymbols": ["SYM1"],
        "observation": {"shadow": "24h", "canary": "1h", "expandBatch": "4h", "full": "24h", "autoThreshold": "24h"},
    }
    body.update(overrides)
    return parse_spec({k: v for k, v in body.items() if v is not None})


@dataclass
class Fault:
    cb_trips: float = 0
    cb_lines: tuple[str, ...] = ()
    block_all: tuple[str, ...] = ()  # symbols with every recent order blocked
    blocks_outside: dict[str, float] = field(default_factory=dict)
    gauge_shift_bps: int = 0  # the threshold gauge moves (a recommended jump at runtime)
    resolution_line: str | None = None  # replace the startup line
    enforce_gauge: float | None = None  # override the enforce gauge


@dataclass
class World:
    """A fake cluster + Prometheus that applies decide()'s actions like the adapters would."""

    env: dict[str, str | None] = field(default_factory=lambda: dict(START_ENV))
    recommended_bps: int = 3000
    replicas: int = 2
    token: str | None = None
    token_at: datetime | None = None  # when the token reached the Deployment (managedFields time)
    rollout_complete: bool = True
    metrics_available: bool = True
    pods: tuple[PodStartup, ...] = ()
    job: PreflightObservation | None = None
    requests: tuple[RollbackRequest, ...] = ()
    fault: Fault = field(default_factory=Fault)
    generation: int = 1
    pod_seq: int = 0
    patches: list[PatchEnv] = field(default_factory=list)
    jobs_started: list[RunPreflight] = field(default_factory=list)
    events: list[EmitEvent] = field(default_factory=list)
    cleared_annotations: int = 0

    def __post_init__(self) -> None:
        if not self.pods:
            self._start_pods()

    # -- what the adapters would observe
    def observations(self) -> Observations:
        deployment = DeploymentObservation(
            exists=True,
            generation=self.generation,
            observed_generation=self.generation,
            container_names=("grinder",),
            env=dict(self.env),
            restart_token=self.token,
            restart_token_at=self.token_at,
            pods_restart_token=self.token,  # the Deployment controller made the new ReplicaSet at once
            rollout_complete=self.rollout_complete,
            rollout_message="successfully rolled out" if self.rollout_complete else "waiting for rollout",
            new_pods=self.pods if self.rollout_complete else (),
        )
        return Observations(deployment, self.metrics(), self.job, self.requests)

    def metrics(self) -> MetricsObservation:
        if not self.metrics_available:
            return MetricsObservation(available=False, reason="PrometheusUnreachable")
        pods = {p.pod: self.pod_metrics(p) for p in self.pods if p.ready}
        return MetricsObservation(available=True, pods=pods)

    # -- the grinder stand-in
    @property
    def enforce(self) -> bool:
        return self.env.get(ENFORCE) == "1"

    @property
    def auto(self) -> bool:
        return self.env.get(AUTO_THRESHOLD) == "1"

    @property
    def allowlist(self) -> tuple[str, ...]:
        return parse_symbols(self.env.get(ENFORCE_SYMBOLS))

    def enforced(self, symbol: str) -> bool:
        return self.enforce and (not self.allowlist or symbol in self.allowlist)

    def resolution_line(self) -> str:
        configured = int(self.env.get(MIN_BPS) or 2500)
        mode = "auto_apply" if self.auto else "recommend_only"
        effective = self.recommended_bps if self.auto else configured
        return (f"FILL_PROB_THRESHOLD_RESOLUTION_OK mode={mode} recommended_bps={self.recommended_bps} "
                f"configured_bps={configured} effective_bps={effective}")

    def pod_metrics(self, pod: PodStartup) -> PodMetrics:
        f = self.fault
        blocks = {s: (40.0 if self.enforced(s) else 0.0) for s in SYMBOLS}
        blocks.update(f.blocks_outside)
        recent_orders = {s: 100.0 for s in SYMBOLS}
        recent_blocks = {s: (100.0 if s in f.block_all and self.enforced(s) else (25.0 if self.enforced(s) else 0.0))
                         for s in SYMBOLS}
        return PodMetrics(
            pod=pod.pod,
            enforce_enabled=f.enforce_gauge if f.enforce_gauge is not None else (1.0 if self.enforce else 0.0),
            allowlist_enabled=1.0 if self.allowlist else 0.0,
            auto_threshold_bps=float(self.recommended_bps + f.gauge_shift_bps),
            circuit_breaker_trips=float(f.cb_trips),
            blocks_by_symbol=blocks,
            orders_by_symbol={s: 1000.0 for s in SYMBOLS},
            recent_blocks_by_symbol=recent_blocks,
            recent_orders_by_symbol=recent_orders,
        )

    def _start_pods(self) -> None:
        pods = []
        for _ in range(self.replicas):
            self.pod_seq += 1
            pods.append(PodStartup(pod=f"grinder-{self.pod_seq:04d}", ready=True,
                                   resolution_line=self.fault.resolution_line or self.resolution_line(),
                                   circuit_breaker_lines=self.fault.cb_lines))
        self.pods = tuple(pods)

    def roll_out(self) -> None:
        """The Deployment controller finishes the rollout: new pods, ready, logged."""
        self.rollout_complete = True
        self._start_pods()

    def set_fault(self, **kwargs: Any) -> None:
        self.fault = replace(self.fault, **kwargs)
        self.pods = tuple(replace(p, circuit_breaker_lines=self.fault.cb_lines) for p in self.pods)

    # -- the adapters
    def apply(self, actions: tuple) -> None:
        for action in actions:
            if isinstance(action, PatchEnv):
                self.patches.append(action)
                if action.restart_token and action.restart_token == self.token:
                    continue
                for key in action.remove_env:
                    self.env.pop(key, None)
                self.env.update(action.set_env)
                self.token = action.restart_token
                self.generation += 1
                self.rollout_complete = False
                self.fault = Fault()
            elif isinstance(action, RunPreflight):
                self.jobs_started.append(action)
                if self.job is None or self.job.job_name != action.job_name:
                    self.job = PreflightObservation(action.job_name, JobState.RUNNING)
            elif isinstance(action, ClearRollbackAnnotation):
                self.cleared_annotations += 1
                self.requests = tuple(r for r in self.requests if r.reason != "ManualRollback")
            elif isinstance(action, EmitEvent):
                self.events.append(action)

    def finish_preflight(self, ok: bool = True, output: str | None = None) -> None:
        assert self.job is not None
        if output is None:
            output = ("PASS model_dir\nPASS eval_report\n"
                      f"configured_bps={self.env.get(MIN_BPS)}\nrecommended_bps={self.recommended_bps}\n"
                      f"effective_bps={self.recommended_bps}\nmode=auto_apply\nPREFLIGHT_PASS\n")
            if not ok:
                output = "FAIL eval_report: /data/eval/eval_report.json does not exist\nPREFLIGHT_FAIL failed=1\n"
        self.job = replace(self.job, state=JobState.SUCCEEDED if ok else JobState.FAILED, output=output,
                           exit_code=0 if ok else 1)


@dataclass
class Driver:
    """Calls decide() with an injected clock and applies its actions to the World."""

    spec: FillProbRolloutSpec
    world: World = field(default_factory=World)
    now: datetime = T0
    status: RolloutStatus | None = None
    generation: int = 1
    last: Decision | None = None

    def tick(self, advance: timedelta = timedelta(0)) -> Decision:
        self.now += advance
        decision = decide(self.spec, self.status, self.world.observations(), self.now,
                          generation=self.generation, name=NAME, namespace=NAMESPACE)
        self.status = decision.status
        token = self.world.token
        self.world.apply(decision.actions)
        if self.world.token != token:
            self.world.token_at = self.now
        self.last = decision
        return decision

    def change_spec(self, **overrides: Any) -> None:
        self.spec = make_spec(**overrides)
        self.generation += 1

    # -- convenience: drive through the usual waits
    def through_preflight(self) -> None:
        self.tick()
        assert self.status.state.value == "Preflight", self.status
        self.world.finish_preflight()
        self.tick()

    def complete_restart(self) -> Decision:
        """Rollout finishes; decide verifies and starts observing."""
        self.world.roll_out()
        return self.tick(timedelta(seconds=30))

    def observe(self, window: timedelta) -> Decision:
        return self.tick(window)

    def walk_to(self, step: str) -> None:
        """From nothing until `step` is Observing (its window running), every gate green."""
        self._walk(step, "Observing")

    def walk_to_restart(self, step: str) -> None:
        """From nothing until `step`'s restart is issued (its new pods not rolled out yet)."""
        self._walk(step, "Restarting")

    def _walk(self, step: str, until: str) -> None:
        if self.status is None:
            self.through_preflight()
        for _ in range(30):
            state = self.status.state.value
            if state == until and self.status.step == step:
                return
            if state == "Restarting":
                self.complete_restart()
            elif state == "Observing":
                self.pass_window()
            elif state == "Passed":
                self.tick(self.spec.prometheus.interval)  # Passed stands one evaluation interval
            else:
                raise AssertionError(f"stuck before {step}: {state} {self.status.reason} {self.status.message}")
        raise AssertionError(f"did not reach {step}: {self.status}")

    def again(self) -> Decision:
        """decide() once more with the same inputs (after the actions took effect)."""
        return decide(self.spec, self.status, self.world.observations(), self.now,
                      generation=self.generation, name=NAME, namespace=NAMESPACE)

    def pass_window(self) -> Decision:
        """Fast-forward to the end of the running observation window."""
        return self.tick(self.status.observation_ends_at - self.now)

    def history_actions(self) -> list[str]:
        return [h.action for h in self.status.history]
