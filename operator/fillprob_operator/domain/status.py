"""Status bookkeeping: standard conditions, bounded history, the status patch.

Conditions keep `lastTransitionTime` unless their status flips (a rewritten timestamp is a hot
loop). History is newest last, bounded to the last 100 entries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from ..api import Condition, HistoryEntry, RolloutStatus, State
from .reasons import Progress

HISTORY_LIMIT = 100
READY, PROGRESSING, DEGRADED, METRICS_AVAILABLE = "Ready", "Progressing", "Degraded", "MetricsAvailable"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED, METRICS_AVAILABLE)

WALKING = (State.PENDING, State.PREFLIGHT, State.RESTARTING, State.VERIFYING, State.OBSERVING)


def _status_word(value: bool | None) -> str:
    return "Unknown" if value is None else ("True" if value else "False")


def set_condition(
    conditions: list[Condition],
    type_: str,
    value: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> list[Condition]:
    """The list with `type_` set; lastTransitionTime moves only when the status flips."""
    word = _status_word(value)
    old = next((c for c in conditions if c.type == type_), None)
    if old is not None and (old.status, old.reason, old.message, old.observed_generation) == (
            word, reason, message, generation):
        new = old  # unchanged, as at the steady state's every tick: no new model to validate
    else:
        since = old.last_transition_time if old is not None and old.status == word else now
        new = Condition(type=type_, status=word, reason=reason, message=message,
                        last_transition_time=since, observed_generation=generation)
    rest = [c for c in conditions if c.type != type_]
    ordered = sorted([*rest, new], key=lambda c: CONDITION_TYPES.index(c.type) if c.type in CONDITION_TYPES else 99)
    return ordered


def state_conditions(status: RolloutStatus, at_target: bool) -> dict[str, tuple[bool, str, str]]:
    """Ready / Progressing / Degraded as (status, reason, message) for the rollout's state."""
    reason = status.reason or status.state.value
    message = status.message or ""
    ready = status.state is State.PASSED and at_target
    progressing = status.state in WALKING
    degraded = status.state in (State.HALTED, State.ROLLED_BACK)
    return {
        READY: (ready, Progress.TARGET_REACHED.value if ready else reason, message),
        PROGRESSING: (progressing, reason, message),
        DEGRADED: (degraded, reason if degraded else Progress.AS_EXPECTED.value, message if degraded else ""),
    }


def append_history(history: list[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """Newest last, the last HISTORY_LIMIT entries."""
    return [*history, entry][-HISTORY_LIMIT:]


def request_seen(status: RolloutStatus, key: str) -> bool:
    """A rollback request (annotation/alert) with this key is already in history."""
    return bool(key) and any(h.evidence.get("requestKey") == key for h in status.history)


def enforced_symbol_count(status: RolloutStatus) -> int:
    """The SYMBOLS printer column (`.status.enforcedSymbolCount`)."""
    return len(status.enforced_symbols)


def merge_patch(old: Any, new: Any) -> Any:
    """JSON merge patch (RFC 7386) turning `old` into `new`: vanished keys become null."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def status_patch(old: RolloutStatus | Mapping[str, Any] | None, new: RolloutStatus) -> dict[str, Any]:
    """The merge patch for `.status`: fields the domain cleared (e.g. observationEndsAt) are
    nulled, so a merge-patching client does not leave them behind."""
    before = old.to_patch_body() if isinstance(old, RolloutStatus) else dict(old or {})
    return merge_patch(before, new.to_patch_body())
