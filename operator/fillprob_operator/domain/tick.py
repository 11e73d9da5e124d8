"""One `decide()` call: the working copy of status, what was observed, and the primitives every
concern module shares (record a transition, halt, issue a restart, read the ladder).

Nothing here decides a runbook rule; the rules live in phase0, walking, guarding, rollback,
outside, lifecycle and report. Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from ..api import AppliedEnv, FillProbRolloutSpec, HistoryEntry, Restart, RolloutStatus, State, clone_model
from ..api import format_rfc3339 as rfc3339
from .actions import Action, EmitEvent
from .ladder import (
    AUTO_THRESHOLD,
    ENFORCE,
    ENFORCE_SYMBOLS,
    EVAL_DIR,
    MIN_BPS,
    MODEL_DIR,
    REQUIRED_DIRS,
    EnvPatch,
    Step,
    index_at_or_below,
    index_of,
    parse_symbols,
    target_index,
)
from .observations import Observations
from .status import append_history

__all__ = ["Tick", "rfc3339", "restart_token", "token_seq", "jsonable", "unset_dirs", "utc_seconds"]


def restart_token(generation: int, seq: int) -> str:
    return f"{generation}-{seq}"


def token_seq(token: str | None) -> int | None:
    """`"3-7"` -> 7 (see restart_token); None for a missing or foreign token."""
    try:
        return int((token or "").rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def utc_seconds(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(microsecond=0)


def unset_dirs(env: Mapping[str, str | None]) -> list[str]:
    """Phase 0.1's dirs that are not set (a valueFrom entry, None here, counts as set)."""
    return [k for k in REQUIRED_DIRS if not env.get(k) and not (k in env and env[k] is None)]


def jsonable(value: Any) -> Any:
    """Evidence as plain JSON: floats that are whole become ints, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, datetime):
        return rfc3339(value)
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return value.value
    return value


def env_patch_to(env: AppliedEnv) -> EnvPatch:
    """The patch that puts every managed key back to `env` (a restore, a re-apply)."""
    values = {ENFORCE: env.enforce, AUTO_THRESHOLD: env.auto_threshold, ENFORCE_SYMBOLS: env.enforce_symbols,
              MIN_BPS: env.min_bps}
    return EnvPatch({k: v for k, v in values.items() if v is not None},
                    tuple(k for k, v in values.items() if v is None and k != MIN_BPS))


@dataclass
class Tick:
    """A working copy of the status plus the actions collected so far."""

    spec: FillProbRolloutSpec
    original: RolloutStatus | None
    obs: Observations
    now: datetime
    generation: int
    name: str
    namespace: str
    # A copy of `original` equal to it that this tick may change (the caller parsed the same
    # status twice: cheaper than a deep copy); None: `original` is copied here.
    scratch: RolloutStatus | None = None
    s: RolloutStatus = field(init=False)
    ladder: tuple[Step, ...] = field(init=False)
    container: str | None = field(init=False, default=None)
    events: list[EmitEvent] = field(init=False, default_factory=list)
    requests_done: list[Action] = field(init=False, default_factory=list)
    # (reason, message): the operator cannot act at all (no actions; Ready/Progressing False).
    blocker: tuple[str, str] | None = field(init=False, default=None)
    # (reason, message): acting (guarding), but not ready (InvalidSpec); Ready False only.
    not_ready: tuple[str, str] | None = field(init=False, default=None)
    # (reason, message): a no-go seen while suspended (Degraded True, acted on at resume).
    degraded: tuple[str, str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # A deep copy (`model_copy(deep=True)`'s), made cheaply: the working copy never shares
        # a mutable part with `original`, which `_decision` compares it against.
        if self.original is None:
            self.s = RolloutStatus()
        elif self.scratch is not None and self.scratch is not self.original:
            self.s = self.scratch
        else:
            self.s = clone_model(self.original)
        self.ladder = self.spec.ladder  # build_ladder's, made once per parsed spec (api.py)

    # -- the ladder --------------------------------------------------------------------

    def target(self) -> int:
        return target_index(self.ladder, self.spec.target_phase)

    def current(self) -> int | None:
        """The rung exactly applied (None after a rollback to a set no rung has)."""
        return index_of(self.ladder, self.s.phase, self.s.batch)

    def at_or_below(self) -> int:
        return max(0, index_at_or_below(self.ladder, self.s.phase, self.s.batch))

    def rung_within(self) -> int:
        """The highest rung whose env enforces no more than what is applied now: where a
        re-arm starts, so nothing widens without a Passed step below it (API.md, Up)."""
        from .scope import within

        applied = self.applied
        for index in range(len(self.ladder) - 1, 0, -1):
            if within(self.ladder[index].env(self.spec.min_bps).apply_to(applied), applied):
                return index
        return 0

    def spec_symbols(self) -> set[str]:
        return set(self.spec.canary_symbols) | {x for b in self.spec.expand_batches for x in b}

    @property
    def applied(self) -> AppliedEnv:
        return self.s.applied_env or AppliedEnv()

    def enforcing(self) -> bool:
        return self.applied.enforce == "1"

    def model_dirs(self) -> tuple[str | None, str | None]:
        env = self.obs.deployment.env
        return env.get(MODEL_DIR), env.get(EVAL_DIR)

    # -- the Deployment ----------------------------------------------------------------

    def patched(self) -> bool:
        """The Deployment carries our latest restart token: our env patch reached it."""
        return self.s.restart is not None and self.obs.deployment.restart_token == self.s.restart.token

    def our_pods(self) -> bool:
        """The new pods are our latest restart's: the Deployment and its newest ReplicaSet both
        carry its token (else not ours to judge: right after a patch the newest ReplicaSet's
        pods are still the previous step's)."""
        token = self.s.restart.token if self.s.restart is not None else None
        return self.patched() and self.obs.deployment.pods_restart_token == token

    def rolled_out(self) -> bool:
        d = self.obs.deployment
        return self.our_pods() and d.rollout_complete and d.observed_generation >= d.generation

    def issue_restart(self, patch: EnvPatch, *, fold: bool = True) -> tuple[EnvPatch, str]:
        """A new restart token; a previous patch the Deployment never got is folded in (unless
        `patch` sets every managed key anyway: a restore or a re-apply)."""
        s, previous = self.s, self.s.restart
        if fold and previous is not None and self.obs.deployment.restart_token != previous.token:
            patch = EnvPatch(previous.set_env, tuple(previous.remove_env)).then(patch)
        seq = (previous.seq if previous else 0) + 1
        s.restart = Restart(seq=seq, token=restart_token(self.generation, seq), issued_at=self.now,
                            set_env=dict(patch.set_env), remove_env=list(patch.remove_env))
        s.applied_env = patch.apply_to(self.applied)
        return patch, s.restart.token

    def all_symbols(self, enforcing: bool) -> list[str]:
        """No allowlist: every symbol is enforced (those the spec names and the pods trade)."""
        if not enforcing:
            return []
        known = self.spec_symbols()
        if self.obs.metrics.available:
            for pod in self.obs.deployment.new_pods:
                sample = self.obs.metrics.pods.get(pod.pod)
                if sample is not None:
                    known |= set(sample.orders_by_symbol)
        return sorted(known)

    def enforced_now(self) -> list[str]:
        env = self.applied
        allowlist = parse_symbols(env.enforce_symbols) if env.enforce == "1" else ()
        return list(allowlist) if allowlist else self.all_symbols(env.enforce == "1")

    # -- recording -----------------------------------------------------------------------

    def transition(
        self,
        action: str,
        reason: Any,
        message: str,
        evidence: dict[str, Any] | None = None,
        *,
        warning: bool = False,
        sets_reason: bool = True,
    ) -> None:
        """Record a transition: history entry (with its evidence) + Event (+ the state's reason)."""
        s = self.s
        reason = getattr(reason, "value", reason)
        evidence = {"state": s.state.value, **(evidence or {})}
        entry = HistoryEntry(at=self.now, phase=s.phase.value, step=s.step, action=action, reason=reason,
                             evidence=jsonable(evidence))
        s.history = append_history(s.history, entry)
        if sets_reason:
            s.reason, s.message = reason, message
        self.events.append(EmitEvent("Warning" if warning else "Normal", reason, f"{s.step}: {message}"))

    def halt(self, reason: Any, message: str, evidence: dict[str, Any] | None = None) -> None:
        """Halted: stop climbing, change nothing more except a narrowing, say why."""
        self.s.state = State.HALTED
        self.transition("Halted", reason, message, evidence, warning=True)

    def window_ends(self) -> datetime | None:
        """observationEndsAt: start + the step's window (as the spec says now) + time that did
        not count (API.md: windows follow the spec)."""
        s = self.s
        if s.observation_started_at is None or s.phase.rank == 0:
            return None
        window = self.spec.observation_window(s.phase)
        return s.observation_started_at + window + timedelta(seconds=s.paused_seconds)
