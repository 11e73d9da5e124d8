"""The operator's own metrics (API.md) on its /metrics while it walks and rolls back."""

from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import Env, wait_for

pytestmark = pytest.mark.e2e

INTERVAL = 2.0


def samples(env: Env) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the operator's /metrics."""
    out = {}
    for family in text_string_to_metric_families(env.operator.metrics()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(values: dict, metric: str, /, **labels: str) -> dict[tuple, float]:
    return {
        key: v for key, v in values.items()
        if key[0] == metric and all(dict(key[1]).get(k) == want for k, want in labels.items())
    }


def info_state(env: Env) -> tuple[str, str] | None:
    """(phase, state) of this rollout's fillprob_rollout_info series (there must be one)."""
    series = pick(samples(env), "fillprob_rollout_info", namespace=env.namespace, name=env.rollout)
    assert len(series) <= 1, series
    for (_, labels), value in series.items():
        assert value == 1
        return dict(labels)["phase"], dict(labels)["state"]
    return None


def test_operator_metrics_during_walk_and_cb_rollback(grinder_env):
    env = grinder_env
    prometheus_url = os.environ["PROMETHEUS_URL"].rstrip("/")
    env.apply_grinder()
    env.wait_grinder_available()
    env.apply_rollout(
        targetPhase="Canary",
        canarySymbols=["SYM1", "SYM2"],
        observation={"shadow": "4s", "canary": "10m"},
        prometheus={"interval": f"{INTERVAL:.0f}s"},
    )

    # fillprob_rollout_info follows the walk: one series per rollout, labels = where it stands.
    seen: set[tuple[str, str]] = set()

    def reached_canary_observing() -> bool:
        now = info_state(env)
        if now:
            seen.add(now)
        return now == ("Canary", "Observing")

    wait_for("fillprob_rollout_info{phase=Canary,state=Observing}", reached_canary_observing, 150, every=0.3)
    print("info (phase, state) seen:", sorted(seen))
    assert ("Shadow", "Passed") in seen or ("Shadow", "Observing") in seen, seen

    values = samples(env)
    go = pick(values, "fillprob_rollout_gate_evaluations_total", result="go")
    assert sum(go.values()) >= 1, pick(values, "fillprob_rollout_gate_evaluations_total")
    queries = pick(values, "fillprob_rollout_prometheus_queries_total", url=prometheus_url, result="ok")
    assert sum(queries.values()) >= 1, pick(values, "fillprob_rollout_prometheus_queries_total")
    latency = pick(values, "fillprob_rollout_prometheus_query_seconds_count")
    assert sum(latency.values()) >= sum(queries.values()), (latency, queries)
    assert pick(values, "fillprob_rollout_prometheus_query_seconds_bucket")
    assert not pick(values, "fillprob_rollout_rollbacks_total", namespace=env.namespace)
    assert sum(pick(values, "fillprob_rollout_detection_seconds_count").values()) == 0
    print("gate evaluations:", {dict(k[1])["result"]: v for k, v in
                                pick(values, "fillprob_rollout_gate_evaluations_total").items()})
    print("prometheus queries:", {dict(k[1])["result"]: v for k, v in
                                  pick(values, "fillprob_rollout_prometheus_queries_total").items()})

    # A circuit-breaker trip in Canary: R1, counted once, detection timed.
    env.sim_fault({"cbTrip": True})
    st = env.wait_state("RolledBack", timeout=60)
    assert st["lastRollback"]["playbook"] == "R1" and st["lastRollback"]["reason"] == "CircuitBreakerTripped"

    def rollback_counted() -> dict | None:
        v = samples(env)
        return v if pick(v, "fillprob_rollout_rollbacks_total", namespace=env.namespace) else None

    values = wait_for("fillprob_rollout_rollbacks_total for the R1", rollback_counted, 30)
    rollbacks = pick(values, "fillprob_rollout_rollbacks_total", namespace=env.namespace)
    assert rollbacks == {
        ("fillprob_rollout_rollbacks_total", tuple(sorted({
            "namespace": env.namespace, "name": env.rollout, "playbook": "R1", "reason": "CircuitBreakerTripped",
        }.items()))): 1.0
    }, rollbacks
    count = sum(pick(values, "fillprob_rollout_detection_seconds_count").values())
    total = sum(pick(values, "fillprob_rollout_detection_seconds_sum").values())
    print(f"fillprob_rollout_detection_seconds: count={count} sum={total:.2f}s")
    assert count == 1, count
    # From the Prometheus sample showing the trip to the env patch: a few scrape/evaluation intervals.
    assert 0 <= total <= 60, total
    assert sum(pick(values, "fillprob_rollout_gate_evaluations_total", result="nogo").values()) >= 1
    assert info_state(env) == (st["phase"], "RolledBack"), (info_state(env), st["phase"])
