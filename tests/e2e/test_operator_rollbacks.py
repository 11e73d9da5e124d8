"""Rollback rows of API.md's gate table, each proven end to end on the testbed (issue 3).

Every test walks a real grinder Deployment (the simulator) up the ladder with windows of
seconds, holds the step under test in Observing with a long window, injects a fault through
the simulator's `POST /sim/faults`, and then compares the Deployment's managed env and the
rollout's status with API.md's tables: the R1/R2/R3 env rows (only the playbook's keys
change), `state: RolledBack`, `lastRollback {playbook, reason, at, evidence}`, a history
entry with evidence, a Warning Event and the operator's own metrics.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest
from support import wait_for

pytestmark = pytest.mark.e2e

ENFORCE = "GRINDER_FILL_MODEL_ENFORCE"
SYMBOLS = "GRINDER_FILL_PROB_ENFORCE_SYMBOLS"
AUTO = "GRINDER_FILL_PROB_AUTO_THRESHOLD"
MIN_BPS = "GRINDER_FILL_PROB_MIN_BPS"

CANARY = ["SYM1", "SYM2"]
BATCH1 = ["SYM3", "SYM4"]
BATCH2 = ["SYM5", "SYM6"]
FAST = "5s"  # windows of the steps below the one under test
HOLD = "10m"  # the step under test stays Observing while the fault is injected
WALK = 150  # seconds allowed to walk up to the step under test


def spec(target: str, **overrides):
    """The example rollout, gates evaluated every second, every window short unless overridden."""
    body = {
        "targetPhase": target,
        "canarySymbols": CANARY,
        "expandBatches": [BATCH1, BATCH2],
        "safeSymbols": ["SYM1"],
        "minBps": 2500,
        "observation": {"shadow": FAST, "canary": FAST, "expandBatch": FAST, "full": FAST, "autoThreshold": FAST},
        "prometheus": {"interval": "1s"},
        "progressDeadline": "2m",
    }
    body.update(overrides)
    return body


def start(env, rollout_spec: dict, env_overrides: dict | None = None, replicas: int = 1) -> None:
    env.apply_grinder(env_overrides, replicas=replicas)
    env.wait_grinder_available()
    env.apply_rollout(**rollout_spec)


def observing(env, step: str, timeout: float = WALK) -> dict:
    """Wait until `step` is Observing with its metrics in Prometheus (the new pods verified)."""
    st = env.wait_status(
        f"{step} Observing with metrics",
        lambda s: s.get("state") == "Observing" and s.get("step") == step
        and any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s.get("conditions", [])),
        timeout,
    )
    env.wait_grinder_available()
    return st


def inject(env, fault: dict) -> None:
    """The fault on every running pod of the step under test (they are all new pods)."""
    results = wait_for(f"fault {fault} accepted", lambda: env.sim_fault(fault), 30)
    assert results, "no running grinder pod to inject into"


def rolled_back(env, playbook: str, timeout: float = 90, after: str | None = None) -> dict:
    """Wait for RolledBack with lastRollback.playbook (newer than `after`, a lastRollback.at)."""
    return env.wait_status(
        f"RolledBack by {playbook}",
        lambda s: s.get("state") == "RolledBack"
        and (s.get("lastRollback") or {}).get("playbook") == playbook
        and (after is None or (s.get("lastRollback") or {}).get("at") != after),
        timeout,
    )


def rollback_verified(env, at: str, timeout: float = 90) -> dict:
    """Wait for the rollback's own restart to pass its post-restart checks (RollbackVerified
    after lastRollback.at): the pods now running are the rolled-back ones, being guarded."""
    st = env.wait_status(
        "RollbackVerified",
        lambda s: any(h["action"] == "RollbackVerified" and h["at"] >= at for h in s.get("history", [])),
        timeout,
    )
    env.wait_grinder_available()
    return st


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def managed(env) -> dict:
    """The managed keys of the Deployment's container; "" for a key set empty (the API server
    drops an empty `value`, so the client reads it back as None; no managed key uses valueFrom)."""
    return {k: "" if v is None else v for k, v in env.managed_env().items()}


def assert_env(env, expected: dict, timeout: float = 30) -> None:
    """The managed env becomes `expected` (status is written before the env patch it records,
    so the Deployment may trail the RolledBack status by one API call)."""
    wait_for(f"managed env {expected}", lambda: managed(env) == expected, timeout)


def unmanaged(env) -> dict:
    return {k: v for k, v in env.grinder_env().items() if k not in (ENFORCE, SYMBOLS, AUTO, MIN_BPS)}


def assert_rollback_recorded(env, st: dict, playbook: str, reasons: set[str]) -> dict:
    """lastRollback {playbook, reason, at, evidence}, its history entry and its Warning Event."""
    last = st["lastRollback"]
    assert last["playbook"] == playbook
    assert last["reason"] in reasons, last
    parse_time(last["at"])
    evidence = last["evidence"]
    assert evidence, "lastRollback.evidence is empty"
    assert evidence.get("playbook") == playbook
    entry = next(h for h in reversed(st["history"]) if h["action"] == f"Rollback{playbook}")
    assert entry["reason"] == last["reason"]
    assert entry["at"] == last["at"]
    assert entry["evidence"], "history entry without evidence"
    wait_for(
        f"Warning Event {last['reason']} for {playbook}",
        lambda: [e for e in env.events() if e.type == "Warning" and e.reason == last["reason"]
                 and f"{playbook} applied" in (e.message or "")],
        30,
    )
    return last


def metric_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    """The value of one sample of `name` whose labels include `labels` (None: absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        body = line[len(name):]
        found = dict(re.findall(r'(\w+)="([^"]*)"', body.split("}")[0])) if body.startswith("{") else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def assert_metrics(env, playbook: str, reason: str, detection: bool = True) -> None:
    text = env.operator.metrics()
    labels = {"namespace": env.namespace, "name": env.rollout, "playbook": playbook, "reason": reason}
    count = metric_value(text, "fillprob_rollout_rollbacks_total", labels)
    assert count is not None and count >= 1, f"fillprob_rollout_rollbacks_total{labels} = {count}"
    if detection:
        seen = metric_value(text, "fillprob_rollout_detection_seconds_count", {})
        assert seen is not None and seen >= 1, f"fillprob_rollout_detection_seconds_count = {seen}"


# ---------------------------------------------------------------------------------- tests


def test_cb_trip_in_canary_applies_r1(grinder_env):
    """CB trip x Canary -> R1: only ENFORCE becomes 0; everything else stays as it was."""
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": HOLD}))
    observing(env, "Canary")
    before, other = managed(env), unmanaged(env)
    assert before == {ENFORCE: "1", SYMBOLS: "SYM1,SYM2", AUTO: "0", MIN_BPS: "2500"}

    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R1")

    assert_env(env, {**before, ENFORCE: "0"})
    assert unmanaged(env) == other
    assert st["phase"] == "Shadow" and st["step"].endswith("(R1)")
    last = assert_rollback_recorded(env, st, "R1", {"CircuitBreakerTripped"})
    ev = last["evidence"]
    assert ev.get("cbTrips") or any("FILL_PROB_CIRCUIT_BREAKER_TRIPPED" in line for line in ev.get("logLines", [])), ev
    assert ev["setEnv"] == {ENFORCE: "0"}
    assert_metrics(env, "R1", "CircuitBreakerTripped")


def test_cb_trip_line_wakes_the_rollout_long_before_its_30s_interval(grinder_env):
    """Issue 10: the pods' logs are followed; a FILL_PROB_CIRCUIT_BREAKER_TRIPPED line wakes the
    rollout at once. With the default 30 s interval, the CB trip in Canary is answered (R1 in
    the env) well before the next scheduled evaluation could have seen it."""
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": HOLD}))
    observing(env, "Canary")
    before = managed(env)
    env.patch_spec(prometheus={"interval": "30s"})
    labels = {"namespace": env.namespace, "name": env.rollout}
    wait_for("a tick at the 30 s interval",
             lambda: metric_value(env.operator.metrics(), "fillprob_rollout_evaluation_interval_seconds", labels) == 30,
             30, every=0.1)
    last_tick = metric_value(env.operator.metrics(), "fillprob_rollout_last_evaluation_timestamp_seconds", labels)

    tripped = time.time()
    inject(env, {"cbTrip": True})
    wait_for("ENFORCE=0 (R1)", lambda: managed(env).get(ENFORCE) == "0", 10, every=0.05)
    patched = time.time()
    print(f"CB trip -> env patched in {patched - tripped:.3f}s; next scheduled tick was "
          f"{last_tick + 30 - tripped:.1f}s away")
    assert patched < last_tick + 30, "patched only at the scheduled tick: the log line did not wake the rollout"

    assert_env(env, {**before, ENFORCE: "0"})
    st = rolled_back(env, "R1")
    last = assert_rollback_recorded(env, st, "R1", {"CircuitBreakerTripped"})
    assert any("FILL_PROB_CIRCUIT_BREAKER_TRIPPED" in line for line in last["evidence"].get("logLines", [])), last
    text = env.operator.metrics()
    follows = metric_value(text, "fillprob_operator_kubernetes_requests_total", {"verb": "follow", "resource": "pods/log"})
    assert follows is not None and follows >= 1, follows


def test_cb_trip_in_expand2_applies_r2_to_batch1_set(grinder_env):
    """CB trip x Expand k -> R2 to k-1: ENFORCE_SYMBOLS = canary + batch 1, the last known-good
    (the allowlist of the last step that Passed); ENFORCE stays 1, nothing else changes."""
    env = grinder_env
    start(env, spec("Expand", observation={"shadow": FAST, "canary": FAST, "expandBatch": "15s"}))
    # Windows follow the spec (API.md, Everyday change): once Expand 2 has started, a longer
    # expandBatch holds it there (its window has 15s, the patch lands well within it).
    env.wait_status("Expand 2/2 started", lambda st: st.get("step") == "Expand 2/2", timeout=180)
    env.patch_spec(observation={"shadow": FAST, "canary": FAST, "expandBatch": HOLD})
    st = observing(env, "Expand 2/2")
    good = CANARY + BATCH1
    assert st["lastKnownGoodSymbols"] == good
    before, other = managed(env), unmanaged(env)
    assert before == {ENFORCE: "1", SYMBOLS: ",".join(good + BATCH2), AUTO: "0", MIN_BPS: "2500"}

    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R2")

    assert_env(env, {**before, SYMBOLS: ",".join(good)})
    assert unmanaged(env) == other
    assert st["phase"] == "Expand" and st["step"].startswith("Expand 1") and st["step"].endswith("(R2)"), st["step"]
    assert st["enforcedSymbols"] == good
    last = assert_rollback_recorded(env, st, "R2", {"CircuitBreakerTripped"})
    assert last["evidence"]["setEnv"] == {ENFORCE: "1", SYMBOLS: ",".join(good)}
    assert_metrics(env, "R2", "CircuitBreakerTripped")


def test_symbol_all_blocked_in_canary_applies_r2_to_safe_symbols(grinder_env):
    """A symbol all blocked x Canary -> R2; with no last known-good allowlist (only Shadow has
    passed, and it has none) R2 falls to safeSymbols.

    The simulator's blockAll fault blocks every enforced order, which in production also trips
    the circuit breaker through the block rate -- and a CB trip in Canary is R1, the more
    severe answer that wins when both signals show. To prove the "all blocked" row on its own,
    deterministically, this Deployment's breaker threshold is GRINDER_SIM_CB_BLOCK_RATE=1.0
    (a block rate can never exceed 1.0, so the breaker never trips): the only no-go is the
    block ratio of SYM1/SYM2 reaching gates.maxBlockRatio over gates.minOrders orders.
    """
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": HOLD}), {"GRINDER_SIM_CB_BLOCK_RATE": "1.0"})
    st = observing(env, "Canary")
    assert st.get("lastKnownGoodSymbols", []) == []
    before, other = managed(env), unmanaged(env)

    inject(env, {"blockAll": True})
    st = rolled_back(env, "R2")

    assert_env(env, {**before, ENFORCE: "1", SYMBOLS: "SYM1"})
    assert unmanaged(env) == other
    assert st["phase"] == "Canary" and st["step"].endswith("(R2)"), st["step"]
    assert st["enforcedSymbols"] == ["SYM1"]
    last = assert_rollback_recorded(env, st, "R2", {"AllOrdersBlocked"})
    blocked = last["evidence"]["blockedSymbols"]
    # The first canary symbol to cross maxBlockRatio decides; the other may not have yet.
    assert blocked and set(blocked) <= set(CANARY), blocked
    assert all(v["ratio"] >= 0.99 and v["orders"] >= 20 for v in blocked.values()), blocked
    assert "CircuitBreakerTripped" not in last["evidence"]["signals"]
    assert_metrics(env, "R2", "AllOrdersBlocked")


def test_all_blocked_in_canary_with_production_breaker_applies_r1(grinder_env):
    """The same blockAll fault in Canary with the production breaker (default 0.9): the block
    rate trips the breaker within ~50 orders, long before the block ratio over the gate's
    lookback reaches maxBlockRatio, and a CB trip in Canary is R1 (API.md's table; were both
    seen at once, R1 still wins: "stop the bleeding first", R1 > R2 > R3)."""
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": HOLD}))
    observing(env, "Canary")
    before = managed(env)

    inject(env, {"blockAll": True})
    st = rolled_back(env, "R1")

    assert_env(env, {**before, ENFORCE: "0"})
    last = assert_rollback_recorded(env, st, "R1", {"CircuitBreakerTripped"})
    assert "CircuitBreakerTripped" in last["evidence"]["signals"]
    assert_metrics(env, "R1", "CircuitBreakerTripped")


def test_symbol_all_blocked_in_expand1_applies_r2_to_canary(grinder_env):
    """A symbol all blocked x Expand 1 -> R2 back to the canary set, with the production
    breaker (GRINDER_SIM_CB_BLOCK_RATE default 0.9): blockAll trips the breaker too, and in
    Expand both rows say R2, so the outcome is R2 whichever signal the gates see first; the
    recorded reason is one of the two (whichever the gates saw first)."""
    env = grinder_env
    start(env, spec("Expand", observation={"shadow": FAST, "canary": FAST, "expandBatch": HOLD}))
    st = observing(env, "Expand 1/2")
    assert st["lastKnownGoodSymbols"] == CANARY
    before, other = managed(env), unmanaged(env)

    inject(env, {"blockAll": True})
    st = rolled_back(env, "R2")

    assert_env(env, {**before, SYMBOLS: ",".join(CANARY)})
    assert unmanaged(env) == other
    assert st["step"] == "Canary (R2)", st["step"]
    last = assert_rollback_recorded(env, st, "R2", {"AllOrdersBlocked", "CircuitBreakerTripped"})
    assert set(last["evidence"]["signals"]) <= {"AllOrdersBlocked", "CircuitBreakerTripped"}
    assert_metrics(env, "R2", last["reason"])


def auto_threshold_spec(**overrides) -> dict:
    """Straight to AutoThreshold (no Expand batches, to keep the walk short); the eval report
    recommends 2500 bps, inside thresholdRange [1000, 3000]."""
    return spec(
        "AutoThreshold",
        expandBatches=[],
        observation={"shadow": FAST, "canary": FAST, "full": FAST, "autoThreshold": HOLD},
        gates={"thresholdRange": {"minBps": 1000, "maxBps": 3000}},
        **overrides,
    )


def test_unexpected_threshold_in_autothreshold_applies_r3(grinder_env):
    """Unexpected threshold x AutoThreshold -> R3: only AUTO_THRESHOLD becomes 0. The fault
    moves the recommended threshold by +2000 bps without a restart; in auto_apply the
    effective threshold follows, to 4500 bps, outside gates.thresholdRange [1000, 3000]."""
    env = grinder_env
    start(env, auto_threshold_spec())
    st = observing(env, "AutoThreshold", timeout=WALK + 30)
    assert st["threshold"]["mode"] == "auto_apply" and st["threshold"]["effectiveBps"] == 2500
    before, other = managed(env), unmanaged(env)
    assert before == {ENFORCE: "1", SYMBOLS: "", AUTO: "1", MIN_BPS: "2500"}

    inject(env, {"thresholdJumpBps": 2000})
    st = rolled_back(env, "R3")

    assert_env(env, {**before, AUTO: "0"})
    assert unmanaged(env) == other
    assert st["phase"] == "Full" and st["step"] == "Full (R3)", st["step"]
    last = assert_rollback_recorded(env, st, "R3", {"UnexpectedThreshold"})
    assert 4500 in last["evidence"]["autoThresholdBps"].values() or any(
        v.get("gauge") == 4500 for v in last["evidence"]["autoThresholdBps"].values() if isinstance(v, dict)
    ), last["evidence"]
    assert last["evidence"]["setEnv"] == {AUTO: "0"}
    assert_metrics(env, "R3", "UnexpectedThreshold")


def test_second_no_go_escalates_r3_r2_r1(grinder_env):
    """While rolled back a further no-go escalates: R3 -> R2 -> R1 (API.md, Gates).

    R3 (unexpected threshold in AutoThreshold) leaves Full's env; a CB trip there is R2 by the
    table and R2 by escalation: back to the last known-good allowlist (the canary set). A CB
    trip on that rung is R1 by the table and by escalation: enforcement off. Each rollback
    restarts the pods (clearing the simulator's faults), so each fault goes to the pods of
    the rung just rolled back to, once their post-restart checks passed."""
    env = grinder_env
    start(env, auto_threshold_spec())
    observing(env, "AutoThreshold", timeout=WALK + 30)
    base = managed(env)

    inject(env, {"thresholdJumpBps": 2000})
    st = rolled_back(env, "R3")
    assert_env(env, {**base, AUTO: "0"})
    first = st["lastRollback"]["at"]
    rollback_verified(env, first)

    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R2", after=first)
    assert_env(env, {**base, AUTO: "0", SYMBOLS: ",".join(CANARY)})
    assert st["step"] == "Canary (R2)", st["step"]
    assert_rollback_recorded(env, st, "R2", {"CircuitBreakerTripped"})
    second = st["lastRollback"]["at"]
    rollback_verified(env, second)

    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R1", after=second)
    assert_env(env, {**base, AUTO: "0", SYMBOLS: ",".join(CANARY), ENFORCE: "0"})
    assert st["phase"] == "Shadow" and st["step"].endswith("(R1)"), st["step"]
    assert_rollback_recorded(env, st, "R1", {"CircuitBreakerTripped"})
    actions = [h["action"] for h in st["history"] if h["action"].startswith("Rollback") and h["action"][-2:] in
               ("R1", "R2", "R3")]
    assert actions == ["RollbackR3", "RollbackR2", "RollbackR1"], actions
    for playbook, reason in (("R3", "UnexpectedThreshold"), ("R2", "CircuitBreakerTripped"),
                             ("R1", "CircuitBreakerTripped")):
        assert_metrics(env, playbook, reason)


def test_rollback_annotation_applies_r2_now_and_is_removed(grinder_env):
    """`grinder.io/rollback: R2` on the FillProbRollout applies R2 at once (no signal needed),
    the operator removes the annotation (and `grinder.io/rollback-reason`, the operator's
    optional "why"), and history records who (the field manager that set it) and why."""
    env = grinder_env
    start(env, spec("Expand", observation={"shadow": FAST, "canary": FAST, "expandBatch": HOLD}))
    observing(env, "Expand 1/2")
    before, other = managed(env), unmanaged(env)
    why = "e2e: batch 1 looks wrong on the desk"

    env.annotate({"grinder.io/rollback": "R2", "grinder.io/rollback-reason": why})
    st = rolled_back(env, "R2", timeout=60)

    assert_env(env, {**before, SYMBOLS: ",".join(CANARY)})
    assert unmanaged(env) == other
    assert st["step"] == "Canary (R2)", st["step"]
    last = assert_rollback_recorded(env, st, "R2", {"ManualRollback"})
    entry = next(h for h in reversed(st["history"]) if h["action"] == "RollbackR2")
    for evidence in (last["evidence"], entry["evidence"]):
        assert evidence["annotation"] == "R2"
        assert evidence["why"] == why
        assert evidence["manager"], evidence  # who: the field manager that set the annotation
        assert evidence["source"].startswith("annotation grinder.io/rollback=R2 by ")
    wait_for(
        "rollback annotations removed",
        lambda: not {"grinder.io/rollback", "grinder.io/rollback-reason"}
        & set((env.get_rollout()["metadata"].get("annotations") or {})),
        30,
    )
    assert_metrics(env, "R2", "ManualRollback", detection=False)  # not detected from metrics
    # Applied once: the annotation gone, the rollout is still RolledBack by this one request.
    rollback_verified(env, last["at"])
    st = env.status()
    assert [h["action"] for h in st["history"]].count("RollbackR2") == 1
    assert st["state"] == "RolledBack" and st["lastRollback"]["at"] == last["at"]


def test_no_climbing_after_rollback_until_spec_changes(grinder_env):
    """After a rollback the rollout stays RolledBack and never climbs on its own, though every
    window below is 5s; a spec change (a new generation: here the canary window) re-arms it
    and it walks up again, step by step."""
    env = grinder_env
    start(env, spec("Expand", observation={"shadow": FAST, "canary": HOLD, "expandBatch": FAST}))
    observing(env, "Canary")
    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R1")
    rolled_env = {ENFORCE: "0", SYMBOLS: ",".join(CANARY), AUTO: "0", MIN_BPS: "2500"}
    assert_env(env, rolled_env)
    rollback_verified(env, st["lastRollback"]["at"])
    generation = st["observedGeneration"]

    # Several 5s windows: checked every second for 25s (a hold, so it polls to a deadline
    # rather than waiting for a change), still RolledBack by the same rollback, env unchanged.
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        now = env.status()
        assert now["state"] == "RolledBack", now.get("state")
        assert now["lastRollback"] == st["lastRollback"]
        assert managed(env) == rolled_env
        time.sleep(1)
    since = st["lastRollback"]["at"]
    assert not [h for h in env.status()["history"] if h["action"] == "RestartIssued" and h["at"] > since]

    env.patch_spec(observation={"shadow": FAST, "canary": "6s", "expandBatch": FAST})
    st = env.wait_status("re-armed", lambda s: s.get("observedGeneration", 0) > generation
                         and any(h["action"] == "RestartIssued" and h["reason"] == "Rearmed" for h in s["history"]), 60)
    assert st["state"] != "RolledBack"
    st = env.wait_state("Passed", "Expand 2/2", timeout=WALK)
    assert_env(env, {ENFORCE: "1", SYMBOLS: ",".join(CANARY + BATCH1 + BATCH2), AUTO: "0", MIN_BPS: "2500"})
    steps = [h["step"] for h in st["history"] if h["action"] == "StepPassed" and h["at"] > st["lastRollback"]["at"]]
    assert steps == ["Shadow", "Canary", "Expand 1/2", "Expand 2/2"], steps
