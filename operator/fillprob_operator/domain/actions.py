"""What `decide()` asks the adapters to do. Adapters execute; they never decide."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Union


@dataclass(frozen=True)
class PatchEnv:
    """Strategic-merge patch of the managed container's env, plus the restart marker.

    `set_env` keys get these values, `remove_env` keys are deleted, every other env
    entry is left untouched. `restart_token` goes to the pod template annotation
    `grinder.io/restart-token`; the adapter skips the patch when the Deployment
    already carries this token (crash safety: never restart twice for one step).
    """

    container: str
    set_env: Mapping[str, str] = field(default_factory=dict)
    remove_env: tuple[str, ...] = ()
    restart_token: str = ""


@dataclass(frozen=True)
class RunPreflight:
    """Create (if absent) the preflight Job from the managed container's image, env, volumes."""

    job_name: str
    container: str
    command: tuple[str, ...]
    timeout_seconds: int


@dataclass(frozen=True)
class EmitEvent:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class ClearRollbackAnnotation:
    """Remove `grinder.io/rollback` from the FillProbRollout once it has been applied."""


Action = Union[PatchEnv, RunPreflight, EmitEvent, ClearRollbackAnnotation]
