"""The ladder: Shadow -> Canary -> Expand 1..N -> Full -> AutoThreshold (runbook 32 Phases 1-5).

Each `Step` knows the env it applies (API.md's env table). `EnvPatch` is "set these keys,
remove those, leave every other env entry alone"; `AppliedEnv` (in status) is what the
managed keys hold after the operator's patches, and `phase_of_env` reads a Phase back from it
(after a rollback the phase is the rung whose env is now effectively applied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..api import AppliedEnv, FillProbRolloutSpec, Phase

# Runbook 31's env vars (SSOT), managed by the operator.
ENFORCE = "GRINDER_FILL_MODEL_ENFORCE"
AUTO_THRESHOLD = "GRINDER_FILL_PROB_AUTO_THRESHOLD"
ENFORCE_SYMBOLS = "GRINDER_FILL_PROB_ENFORCE_SYMBOLS"
MIN_BPS = "GRINDER_FILL_PROB_MIN_BPS"
# Phase 0.1: must be set before any step; read, never written.
MODEL_DIR = "GRINDER_FILL_MODEL_DIR"
EVAL_DIR = "GRINDER_FILL_PROB_EVAL_DIR"
ARTIFACT_DIR = "GRINDER_ARTIFACT_DIR"
REQUIRED_DIRS = (MODEL_DIR, EVAL_DIR, ARTIFACT_DIR)

_APPLIED_FIELD = {
    ENFORCE: "enforce",
    AUTO_THRESHOLD: "auto_threshold",
    ENFORCE_SYMBOLS: "enforce_symbols",
    MIN_BPS: "min_bps",
}
MANAGED_KEYS = tuple(_APPLIED_FIELD)


@dataclass(frozen=True)
class EnvPatch:
    """Keys to set and keys to remove on the managed container; everything else untouched."""

    set_env: Mapping[str, str] = field(default_factory=dict)
    remove_env: tuple[str, ...] = ()

    def then(self, later: "EnvPatch") -> "EnvPatch":
        """Both patches as one, `later` winning (a restart superseded before it was applied)."""
        set_env = {k: v for k, v in self.set_env.items() if k not in later.remove_env}
        set_env.update(later.set_env)
        remove = tuple(k for k in (*self.remove_env, *later.remove_env) if k not in later.set_env)
        return EnvPatch(set_env, tuple(dict.fromkeys(remove)))

    def apply_to(self, env: AppliedEnv) -> AppliedEnv:
        update = {_APPLIED_FIELD[k]: None for k in self.remove_env if k in _APPLIED_FIELD}
        update |= {_APPLIED_FIELD[k]: v for k, v in self.set_env.items() if k in _APPLIED_FIELD}
        return env.model_copy(update=update)


def applied_env_from(container_env: Mapping[str, str | None]) -> AppliedEnv:
    """The managed keys as the Deployment has them when the operator takes it over."""
    return AppliedEnv(**{attr: container_env.get(key) for key, attr in _APPLIED_FIELD.items()})


def parse_symbols(value: str | None) -> tuple[str, ...]:
    """`"A,B"` -> ("A", "B"); unset or empty -> () (no allowlist: every symbol, Phase 4)."""
    return tuple(s.strip() for s in (value or "").split(",") if s.strip())


@dataclass(frozen=True)
class Step:
    phase: Phase
    label: str  # "Canary", "Expand 2/3", ...
    allowlist: tuple[str, ...] = ()  # ENFORCE_SYMBOLS; () for Shadow, Full, AutoThreshold
    batch: int | None = None  # k of Expand k

    @property
    def enforces(self) -> bool:
        return self.phase is not Phase.SHADOW

    def env(self, min_bps: int | None = None) -> EnvPatch:
        """API.md's env table; `spec.minBps` (when set) rides along with every step."""
        if self.phase is Phase.SHADOW:
            patch = EnvPatch({ENFORCE: "0", AUTO_THRESHOLD: "0"}, (ENFORCE_SYMBOLS,))
        else:
            auto = "1" if self.phase is Phase.AUTO_THRESHOLD else "0"
            patch = EnvPatch({ENFORCE: "1", ENFORCE_SYMBOLS: ",".join(self.allowlist), AUTO_THRESHOLD: auto})
        if min_bps is not None:
            patch = patch.then(EnvPatch({MIN_BPS: str(min_bps)}))
        return patch


def build_ladder(spec: FillProbRolloutSpec) -> tuple[Step, ...]:
    batches = spec.expand_batches
    steps = [Step(Phase.SHADOW, "Shadow")]
    if spec.canary_symbols:
        steps.append(Step(Phase.CANARY, "Canary", tuple(spec.canary_symbols)))
        allowlist = tuple(spec.canary_symbols)
        for k, batch in enumerate(batches, start=1):
            allowlist = allowlist + tuple(batch)
            steps.append(Step(Phase.EXPAND, f"Expand {k}/{len(batches)}", allowlist, k))
        steps.append(Step(Phase.FULL, "Full"))
        steps.append(Step(Phase.AUTO_THRESHOLD, "AutoThreshold"))
    return tuple(steps)


def _order(phase: Phase, batch: int | None) -> tuple[int, int]:
    return (phase.rank, batch or 0)


def index_of(ladder: tuple[Step, ...], phase: Phase, batch: int | None) -> int | None:
    return next((i for i, s in enumerate(ladder) if s.phase is phase and s.batch == batch), None)


def index_at_or_below(ladder: tuple[Step, ...], phase: Phase, batch: int | None) -> int:
    """The highest rung not above (phase, batch); -1 when none (phase Preflight)."""
    below = [i for i, s in enumerate(ladder) if _order(s.phase, s.batch) <= _order(phase, batch)]
    return below[-1] if below else -1


def target_index(ladder: tuple[Step, ...], target: Phase) -> int:
    """The top rung of `targetPhase` (Expand = its last batch), or the highest rung below it."""
    return index_at_or_below(ladder, target, 10**6)


def enforced_allowlist(env: AppliedEnv) -> tuple[str, ...]:
    return parse_symbols(env.enforce_symbols) if env.enforce == "1" else ()


def phase_of_env(
    env: AppliedEnv, ladder: tuple[Step, ...], safe_symbols: tuple[str, ...] = ()
) -> tuple[Phase, int | None, str]:
    """The rung whose env is effectively applied: (phase, batch, label).

    ENFORCE off -> Shadow; an allowlist -> the Canary/Expand rung with exactly that set, else the
    highest rung whose set it covers (label "Expand 1/2 (+S5)"), else Canary (a narrower set
    such as safeSymbols); no allowlist -> Full, or AutoThreshold when AUTO_THRESHOLD=1.
    """
    if env.enforce != "1":
        return Phase.SHADOW, None, "Shadow"
    symbols = parse_symbols(env.enforce_symbols)
    if not symbols:
        if env.auto_threshold == "1":
            return Phase.AUTO_THRESHOLD, None, "AutoThreshold"
        return Phase.FULL, None, "Full"
    for step in ladder:
        if step.allowlist and set(step.allowlist) == set(symbols):
            return step.phase, step.batch, step.label
    if safe_symbols and set(symbols) == set(safe_symbols):
        return Phase.CANARY, None, "Canary (safeSymbols)"
    # No rung has exactly this set: the highest rung whose allowlist it covers (so the phase
    # only ever moves down when the set narrows), else Canary.
    covered = [step for step in ladder if step.allowlist and set(step.allowlist) < set(symbols)]
    if covered:
        top = covered[-1]
        extra = sorted(set(symbols) - set(top.allowlist))
        return top.phase, top.batch, f"{top.label} (+{','.join(extra)})"
    return Phase.CANARY, None, f"Canary ({len(symbols)} symbols)"
