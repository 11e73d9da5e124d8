"""Reasons: the CamelCase words in conditions, history entries and Events.

`Reason` is exactly API.md's list (why a rollout stopped, rolled back or passed). `Progress`
names the ordinary steps of the walk and the condition reasons that API.md leaves open.
"""

from __future__ import annotations

import enum


class Reason(str, enum.Enum):
    """API.md, status: "Reasons are CamelCase constants"."""

    CIRCUIT_BREAKER_TRIPPED = "CircuitBreakerTripped"
    ALL_ORDERS_BLOCKED = "AllOrdersBlocked"
    BLOCKS_OUTSIDE_ALLOWLIST = "BlocksOutsideAllowlist"
    THRESHOLD_RESOLUTION_FAILED = "ThresholdResolutionFailed"
    MODEL_DIR_UNSET = "ModelDirUnset"
    UNEXPECTED_THRESHOLD = "UnexpectedThreshold"
    RECOMMENDED_THRESHOLD_JUMPED = "RecommendedThresholdJumped"
    PREFLIGHT_FAILED = "PreflightFailed"
    STARTING_STATE_INVALID = "StartingStateInvalid"
    RESTART_TIMED_OUT = "RestartTimedOut"
    ALERT_FIRED = "AlertFired"
    MANUAL_ROLLBACK = "ManualRollback"
    OBSERVATION_PASSED = "ObservationPassed"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    ENV_CHANGED_OUTSIDE = "EnvChangedOutside"
    DEPLOYMENT_MISSING = "DeploymentMissing"
    INVALID_SPEC = "InvalidSpec"
    ROLLBACK_SKIPPED = "RollbackSkipped"


class Progress(str, enum.Enum):
    """Reasons for the ordinary walk (Normal events) and for conditions API.md does not name."""

    PREFLIGHT_STARTED = "PreflightStarted"
    PREFLIGHT_PASSED = "PreflightPassed"
    PREFLIGHT_SKIPPED = "PreflightSkipped"
    MODEL_CHANGED = "ModelChanged"
    STEP_STARTED = "StepStarted"
    ROLLOUT_COMPLETE = "RolloutComplete"
    POST_RESTART_CHECKS_PASSED = "PostRestartChecksPassed"
    TARGET_REACHED = "TargetReached"
    TARGET_LOWERED = "TargetLowered"
    STEP_CHANGED = "StepChanged"
    REARMED = "Rearmed"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    CONTAINER_NOT_FOUND = "ContainerNotFound"
    METRICS_RECEIVED = "MetricsReceived"
    ROLLBACK_REQUEST_INVALID = "RollbackRequestInvalid"
    AS_EXPECTED = "AsExpected"
    NOT_OBSERVED_YET = "NotObservedYet"
    STATUS_BEHIND = "StatusBehindDeployment"
