"""The FillProbRollout API (grinder.io/v1alpha1) as pydantic models: spec in, status out.

Built to /work/shared/API.md. Parse at the edge: `parse_spec(body["spec"])` gives a
`FillProbRolloutSpec` with every default filled in, or raises `SpecError` whose message says
what to fix.

Validity has one source: the CRD (crds/fillprobrollouts.grinder.io.yaml; API.md "A spec the
API server accepts is a spec the operator reads"). These models parse what it admits and are
never stricter: the rules kept here are the CRD's own, with the same bounds and patterns
(tests/unit/test_crd_schema.py compares them; tests/e2e/test_spec_differential.py sends
random specs to a real API server and parses every one it accepts). What only the CRD checks
(list and string lengths, the Prometheus URL, the selector's grammar details) is not repeated.
A selector regex that RE2 cannot compile parses (`Prometheus.selector_problems`): it matches
no series, which is "no data", never a spec the operator refuses to read.

Status: `RolloutStatus` holds API.md's status table plus a few bookkeeping fields the
operator needs to resume after a crash (documented on the model; all camelCase).
`status.model_dump(by_alias=True, exclude_none=True, mode="json")` is what gets written.

Nothing here imports kopf, kubernetes or a Prometheus client (`.importlinter`).
"""

from __future__ import annotations

import copy
import enum
import re
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Annotated, Any, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .domain.durations import format_duration, parse_duration
from .domain.selector import SelectorError, parse_selector

API_VERSION = "grinder.io/v1alpha1"
KIND = "FillProbRollout"


# --------------------------------------------------------------------------- vocabulary


class Phase(str, enum.Enum):
    """A rung of the ladder (runbook 32 Phases 0..5). `Preflight` = no step applied yet."""

    PREFLIGHT = "Preflight"
    SHADOW = "Shadow"
    CANARY = "Canary"
    EXPAND = "Expand"
    FULL = "Full"
    AUTO_THRESHOLD = "AutoThreshold"

    @property
    def rank(self) -> int:
        return _PHASE_RANK[self]


_PHASE_RANK = {phase: i for i, phase in enumerate(Phase)}


class State(str, enum.Enum):
    PENDING = "Pending"
    PREFLIGHT = "Preflight"
    RESTARTING = "Restarting"
    VERIFYING = "Verifying"
    OBSERVING = "Observing"
    PASSED = "Passed"
    HALTED = "Halted"
    ROLLED_BACK = "RolledBack"
    SUSPENDED = "Suspended"


class RiskAppetite(str, enum.Enum):
    """Runbook 32 Phase 3, "Batch sizing guidance"."""

    CONSERVATIVE = "Conservative"
    MODERATE = "Moderate"
    AGGRESSIVE = "Aggressive"


class Playbook(str, enum.Enum):
    """Runbook 32, "Rollback Playbook"."""

    R1 = "R1"  # disable all enforcement
    R2 = "R2"  # narrow the allowlist to the last known-good set
    R3 = "R3"  # auto-threshold back to recommend-only


EXPAND_BATCH_WINDOW = {
    RiskAppetite.CONSERVATIVE: timedelta(hours=24),
    RiskAppetite.MODERATE: timedelta(hours=4),
    RiskAppetite.AGGRESSIVE: timedelta(hours=1),
}

DEFAULT_PREFLIGHT_COMMAND = (
    "python3",
    "-m",
    "scripts.preflight_fill_prob",
    "--model",
    "$(GRINDER_FILL_MODEL_DIR)",
    "--eval",
    "$(GRINDER_FILL_PROB_EVAL_DIR)",
    "--auto-threshold",
)

# The CRD's patterns (and the API server's for object names), defined once for the package.
SYMBOL_PATTERN = r"^[A-Z0-9][A-Z0-9._-]{0,31}$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# --------------------------------------------------------------------------- field types


def _to_timedelta(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"{value!r} must be a duration string such as 90s, 4h or 1h30m")


Duration = Annotated[
    timedelta,
    BeforeValidator(_to_timedelta),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def _symbol(value: str) -> str:
    if not re.fullmatch(SYMBOL_PATTERN, value):
        raise ValueError(
            f"symbol {value!r} must be 1-32 upper-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. BTCUSDT); list symbols as separate items, not 'A,B'"
        )
    return value


Symbol = Annotated[str, AfterValidator(_symbol)]


_ZERO = timedelta(0)


# What this operator and Kubernetes write for an instant: RFC 3339, UTC, whole seconds.
_CANONICAL_INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _read_canonical(value: Any) -> Any:
    """"2024-05-01T12:00:00Z" -> the datetime in `timezone.utc`, read without pydantic's general
    parser: a status carries a dozen instants and every tick parses it, and pydantic's reading
    plus the tzinfo swap below were half of that parse. Anything else (another shape, a string
    that is no instant) goes on to pydantic's own datetime rules unchanged, errors included."""
    if type(value) is str and len(value) == 20 and _CANONICAL_INSTANT.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _utc(value: datetime) -> datetime:
    """The instant in UTC (`timezone.utc`), whole seconds; naive = UTC. Every timestamp of a
    status passes here at every parse: an offset of zero (what Kubernetes and this operator
    write, parsed by pydantic as its own UTC tzinfo) only swaps the tzinfo."""
    if value.tzinfo is timezone.utc and not value.microsecond:
        return value  # already what this returns (`_read_canonical`'s, the domain's `now`)
    offset = value.utcoffset()
    if offset is None or offset == _ZERO:
        return value.replace(tzinfo=timezone.utc, microsecond=0)
    return value.astimezone(timezone.utc).replace(microsecond=0)


def format_rfc3339(value: datetime) -> str:
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


# RFC 3339, UTC, whole seconds (what Kubernetes writes for metav1.Time).
Timestamp = Annotated[
    datetime,
    BeforeValidator(_read_canonical),
    AfterValidator(_utc),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]


def _duplicates(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({s for s in items if s in seen or seen.add(s)})  # type: ignore[func-returns-value]


# --------------------------------------------------------------------------- spec


class _SpecModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Observation(_SpecModel):
    """Minimum observation per step. `expandBatch` unset: by `riskAppetite` (24h/4h/1h)."""

    shadow: Duration = timedelta(hours=24)
    canary: Duration = timedelta(hours=1)
    expand_batch: Duration | None = None
    full: Duration = timedelta(hours=24)
    auto_threshold: Duration = timedelta(hours=24)


class Preflight(_SpecModel):
    enabled: bool = True
    command: tuple[str, ...] = Field(default=DEFAULT_PREFLIGHT_COMMAND, min_length=1)
    timeout: Duration = timedelta(minutes=10)

    @field_validator("timeout")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("preflight.timeout must be at least 1s")
        return value


class Prometheus(_SpecModel):
    # None: the operator's configured default. The CRD checks it is an absolute http(s) URL.
    url: str | None = None
    selector: str | None = None  # None: this Deployment's pods in this namespace
    interval: Duration = timedelta(seconds=30)

    @field_validator("selector")
    @classmethod
    def _promql_matchers(cls, value: str | None) -> str | None:
        # Only a shape the parser cannot read at all fails here (the CRD admits none); an
        # invalid regex parses, see selector_problems.
        if value is not None:
            try:
                parse_selector(value)
            except SelectorError as exc:
                raise ValueError(
                    f'{exc}; write PromQL label matchers without braces, e.g. job="grinder",pod=~"grinder-.*"'
                ) from None
        return value

    @property
    def selector_problems(self) -> tuple[str, ...]:
        """Why `selector` matches no series (a regex RE2 cannot compile); () when it is fine."""
        return parse_selector(self.selector).problems if self.selector else ()

    @field_validator("interval")
    @classmethod
    def _lower_bound(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("prometheus.interval must be at least 1s")
        return value


class ThresholdRange(_SpecModel):
    min_bps: int = Field(ge=0, le=10000)
    max_bps: int = Field(ge=0, le=10000)

    @model_validator(mode="after")
    def _ordered(self) -> "ThresholdRange":
        if self.min_bps > self.max_bps:
            raise ValueError(
                f"thresholdRange.minBps ({self.min_bps}) must be <= thresholdRange.maxBps ({self.max_bps})"
            )
        return self

    def contains(self, bps: float) -> bool:
        return self.min_bps <= bps <= self.max_bps


class Gates(_SpecModel):
    max_block_ratio: float = Field(default=0.99, ge=0.0, le=1.0)
    min_orders: int = Field(default=20, ge=1, le=1_000_000)
    threshold_range: ThresholdRange | None = None
    max_auto_threshold_delta_bps: int | None = Field(default=None, ge=0, le=10000)


class FillProbRolloutSpec(_SpecModel):
    """API.md "spec"; defaults exactly as the table says."""

    deployment_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    container_name: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    target_phase: Phase
    canary_symbols: tuple[Symbol, ...] = ()
    expand_batches: tuple[tuple[Symbol, ...], ...] = ()
    safe_symbols: tuple[Symbol, ...] = ()
    min_bps: int | None = Field(default=None, ge=0, le=10000)
    risk_appetite: RiskAppetite = RiskAppetite.MODERATE
    observation: Observation = Observation()
    preflight: Preflight = Preflight()
    prometheus: Prometheus = Prometheus()
    gates: Gates = Gates()
    progress_deadline: Duration = timedelta(minutes=10)
    suspend: bool = False

    @field_validator("target_phase")
    @classmethod
    def _a_ladder_step(cls, value: Phase) -> Phase:
        if value is Phase.PREFLIGHT:
            raise ValueError("targetPhase must be one of Shadow, Canary, Expand, Full, AutoThreshold")
        return value

    @field_validator("progress_deadline")
    @classmethod
    def _deadline_lower_bound(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("progressDeadline must be at least 1s")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "FillProbRolloutSpec":
        # The CRD's CEL rules, same wording, so a message reads the same from either side.
        if self.target_phase is not Phase.SHADOW and not self.canary_symbols:
            raise ValueError(
                f"canarySymbols is required (at least one symbol) unless targetPhase is Shadow "
                f"(targetPhase is {self.target_phase.value}): list 1-2 low-value symbols to enforce first"
            )
        if self.target_phase is Phase.EXPAND and not self.expand_batches:
            raise ValueError(
                "targetPhase Expand needs at least one expandBatches entry (or set targetPhase Canary or Full)"
            )
        if repeated := _duplicates(list(self.canary_symbols)):
            raise ValueError(f"duplicate symbols in canarySymbols: {', '.join(repeated)}; list each symbol once")
        for index, batch in enumerate(self.expand_batches):
            if not batch:
                raise ValueError(
                    f"expandBatches[{index}] is empty: each batch lists at least one symbol (remove the entry)"
                )
        if across := sorted(set(self.canary_symbols) & {s for b in self.expand_batches for s in b}):
            raise ValueError(
                f"duplicate symbols: {', '.join(across)} listed in both canarySymbols and expandBatches; "
                "each symbol belongs to exactly one step"
            )
        if repeated := _duplicates([s for b in self.expand_batches for s in b]):
            raise ValueError(
                f"duplicate symbol: {repeated[0]} is listed more than once in expandBatches; "
                "each symbol belongs to exactly one batch"
            )
        if outside := [s for s in self.safe_symbols if s not in self.canary_symbols]:
            raise ValueError(
                f"safeSymbols must be a subset of canarySymbols; not in canarySymbols: {', '.join(outside)}"
            )
        if self.observation.expand_batch is None:
            filled = self.observation.model_copy(update={"expand_batch": EXPAND_BATCH_WINDOW[self.risk_appetite]})
            object.__setattr__(self, "observation", filled)
        return self

    @cached_property
    def json_form(self) -> dict[str, Any]:
        """The spec as camelCase JSON (`status.appliedSpec`), made once per parsed spec: the spec
        is frozen and every tick compares against it. Shared: read it, never change it."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)

    @cached_property
    def ladder(self) -> tuple[Any, ...]:
        """The ladder's rungs (`domain.ladder.build_ladder`), made once per parsed spec as
        `json_form` is: every tick walks them. Shared and immutable."""
        from .domain.ladder import build_ladder  # the domain's; it imports this module

        return build_ladder(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> "FillProbRolloutSpec":
        """pydantic's copy, without `json_form` and `ladder` when fields change (pydantic copies
        `__dict__`, where what is cached lives)."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied.__dict__.pop("json_form", None)
            copied.__dict__.pop("ladder", None)
        return copied

    def observation_window(self, phase: Phase) -> timedelta:
        """Minimum observation for a step of `phase` (API.md `observation.*`)."""
        windows = {
            Phase.SHADOW: self.observation.shadow,
            Phase.CANARY: self.observation.canary,
            Phase.EXPAND: self.observation.expand_batch or EXPAND_BATCH_WINDOW[self.risk_appetite],
            Phase.FULL: self.observation.full,
            Phase.AUTO_THRESHOLD: self.observation.auto_threshold,
        }
        return windows[phase]


class SpecError(ValueError):
    """An invalid spec; `str()` is one line per problem, each naming the field and the fix."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _problem(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in ("spec", *error.get("loc", ())))
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown field (check the spelling against the FillProbRollout API)"
    return f"{where}: {message}"


def parse_spec(spec: Mapping[str, Any] | None) -> FillProbRolloutSpec:
    """The `spec` of a FillProbRollout object -> model; SpecError saying what to fix."""
    try:
        return FillProbRolloutSpec.model_validate(dict(spec or {}))
    except ValidationError as exc:
        raise SpecError([_problem(e) for e in exc.errors()]) from None


# --------------------------------------------------------------------------- status


class _StatusModel(BaseModel):
    # extra="ignore": a status written by a newer operator version still parses.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Threshold(_StatusModel):
    """From the preflight Job's output and the new pods' FILL_PROB_THRESHOLD_RESOLUTION_OK line."""

    configured_bps: int | None = None
    recommended_bps: int | None = None
    effective_bps: int | None = None
    mode: str | None = None


class LastRollback(_StatusModel):
    playbook: Playbook
    reason: str
    at: Timestamp
    evidence: dict[str, Any] = {}


class Condition(_StatusModel):
    """Standard shape (metav1.Condition)."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""
    last_transition_time: Timestamp
    observed_generation: int | None = None


class HistoryEntry(_StatusModel):
    at: Timestamp
    phase: str
    step: str
    action: str
    reason: str
    evidence: dict[str, Any] = {}


class AppliedEnv(_StatusModel):
    """Internal: the managed env keys as the operator last set them (None = unset).

    Seeded from the Deployment when the operator takes it over; the gates' expectations
    (enforce gauge, allowlist gauge, resolution mode) and R1/R3's "nothing else changed"
    are computed from it.
    """

    enforce: str | None = None  # GRINDER_FILL_MODEL_ENFORCE
    auto_threshold: str | None = None  # GRINDER_FILL_PROB_AUTO_THRESHOLD
    enforce_symbols: str | None = None  # GRINDER_FILL_PROB_ENFORCE_SYMBOLS
    min_bps: str | None = None  # GRINDER_FILL_PROB_MIN_BPS


class Restart(_StatusModel):
    """Internal: the last restart the operator issued (a step or a rollback).

    `token` = f"{generation}-{seq}" goes to the pod template annotation
    `grinder.io/restart-token`; the PatchEnv is re-issued (same token, same env) only while
    the Deployment does not carry it yet, so a crash between "patch" and "write status"
    never restarts twice. `verified`: the post-restart checks on the new pods passed.
    """

    seq: int
    token: str
    issued_at: Timestamp
    set_env: dict[str, str] = {}
    remove_env: list[str] = []
    verified: bool = False
    # When the Deployment was first seen carrying `token`: progressDeadline counts from here,
    # not from `issued_at` (an operator that was down never times out a patch it never made).
    reached_at: Timestamp | None = None


class PreflightRun(_StatusModel):
    """Internal: the preflight Job (Phase 0.2). `state`: Running|Succeeded|Failed|Skipped.

    `modelDir`/`evalDir`: the container's values the preflight ran against; when the
    Deployment's values change the preflight reruns (API.md, Phase 0).
    """

    run: int
    job_name: str | None = None
    state: str
    started_at: Timestamp | None = None
    model_dir: str | None = None
    eval_dir: str | None = None
    message: str | None = None


class RolloutStatus(_StatusModel):
    """API.md "status" plus internal bookkeeping (marked so), all camelCase in JSON."""

    phase: Phase = Phase.PREFLIGHT
    step: str = "Preflight"
    state: State = State.PENDING
    observed_generation: int | None = None
    enforced_symbols: list[str] = []
    # len(enforcedSymbols): the SYMBOLS printer column. In Full/AutoThreshold (no allowlist,
    # every symbol enforced) enforcedSymbols lists every symbol known from the spec and seen
    # in the new pods' metrics.
    enforced_symbol_count: int = 0
    last_known_good_symbols: list[str] = []
    observation_started_at: Timestamp | None = None
    observation_ends_at: Timestamp | None = None
    threshold: Threshold | None = None
    last_rollback: LastRollback | None = None
    conditions: list[Condition] = []
    history: list[HistoryEntry] = []
    # ---- internal bookkeeping (crash safety; not part of API.md's table) ----
    reason: str | None = None  # why the rollout is in `state` (a Reason/Progress value)
    message: str | None = None  # the same, for people
    batch: int | None = None  # k of "Expand k" (1-based) while phase is Expand
    applied_env: AppliedEnv | None = None
    restart: Restart | None = None
    preflight: PreflightRun | None = None
    resume_state: State | None = None  # the state to return to when `suspend` is cleared
    suspended_at: Timestamp | None = None  # the window does not count while suspended
    # Seconds of the current window that did not count (suspended, Deployment missing, metrics
    # missing): observationEndsAt = observationStartedAt + the step's window + this.
    paused_seconds: int = 0
    # The spec of the last generation the operator read (camelCase JSON): it keeps guarding
    # with it when a newer generation cannot be read, and re-arming compares against it.
    applied_spec: dict[str, Any] | None = None
    # metadata.uid of the Deployment the rung was applied to (a recreated one has another).
    deployment_uid: str | None = None
    # Keys of the alert (fingerprint + startsAt) and annotation requests already taken, newest
    # last, bounded: each is applied at most once even after history has rolled over.
    request_keys: list[str] = []

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_patch_body(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


_ATOMIC = frozenset({str, int, float, bool, type(None), datetime, timedelta, bytes})


def clone_model(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """`copy.deepcopy` of a model tree (what `model_copy(deep=True)` gives: the same values,
    aliasing kept, fields set kept), without deepcopy's generic machinery: for a status every
    tick copies (domain/tick.py), several times cheaper. Models, dicts, lists and tuples are
    copied here; str, numbers, datetimes and enum members are immutable and shared, as
    deepcopy shares them; anything else is handed to `copy.deepcopy`."""
    kind = type(value)
    if kind in _ATOMIC or isinstance(value, enum.Enum):
        return value
    if memo is None:
        memo = {}
    found = memo.get(id(value), memo)
    if found is not memo:
        return found
    if isinstance(value, BaseModel) and getattr(value, "__pydantic_private__", None) is None:
        copied = value.__copy__()
        memo[id(value)] = copied
        object.__setattr__(copied, "__dict__", {k: clone_model(v, memo) for k, v in value.__dict__.items()})
        if value.__pydantic_extra__:
            object.__setattr__(copied, "__pydantic_extra__", clone_model(value.__pydantic_extra__, memo))
        return copied
    if kind is dict:
        copied = {}
        memo[id(value)] = copied
        for k, v in value.items():
            copied[clone_model(k, memo)] = clone_model(v, memo)
        return copied
    if kind is list:
        copied = []
        memo[id(value)] = copied
        copied.extend(clone_model(v, memo) for v in value)
        return copied
    return copy.deepcopy(value, memo)


def status_from_dict(data: Mapping[str, Any] | None) -> RolloutStatus | None:
    """The object's `status` -> model; None when the operator has not written one yet.

    Keys the operator does not own (e.g. a `kopf` block) are ignored. A status that does not
    parse raises ValueError: resuming from a guess could repeat a restart or a rollback.
    """
    if not data or "state" not in data:
        return None
    try:
        return RolloutStatus.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(_problem(e).replace("spec.", "status.", 1) for e in exc.errors())
        raise ValueError(f"status does not parse: {problems}") from None
