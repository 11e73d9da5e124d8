"""Missing data is not a verdict (API.md, Gates): the step holds, the window does not count.

Other tests share the testbed's Prometheus, so the outage test starts its OWN real Prometheus
(support.DedicatedPrometheus: the testbed's binary and its kubernetes_sd scrape config, limited
to the test's namespace, fresh storage, a free loopback port), points `spec.prometheus.url` at
it, and really stops it (SIGTERM, waits for the exit) in the middle of an observation window,
then starts it again on the same port and storage.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from typing import Any, Callable

import pytest
from support import PROMETHEUS_BIN, DedicatedPrometheus, Env, holds_for, wait_for

pytestmark = pytest.mark.e2e

INTERVAL = 2.0  # spec.prometheus.interval of these tests, seconds


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def own_prometheus(grinder_env, tmp_path):
    assert PROMETHEUS_BIN.exists(), f"{PROMETHEUS_BIN} missing: run `make testbed-up`"
    prom = DedicatedPrometheus(grinder_env.namespace, tmp_path / "prometheus")
    yield prom
    prom.stop()
    shutil.rmtree(tmp_path / "prometheus", ignore_errors=True)


def metrics_condition(env: Env) -> dict:
    return env.condition("MetricsAvailable") or {}


def test_prometheus_down_mid_window_holds_then_resumes(grinder_env, own_prometheus):
    env, prom = grinder_env, own_prometheus
    prom.start()
    env.apply_grinder()
    env.wait_grinder_available()
    env.apply_rollout(
        targetPhase="Shadow",
        observation={"shadow": "20s"},
        prometheus={"url": prom.url, "interval": f"{INTERVAL:.0f}s"},
    )
    st = env.wait_state("Observing", "Shadow", timeout=150)
    assert metrics_condition(env).get("status") == "True", st.get("conditions")
    wait_for("the dedicated Prometheus scraping the grinder pods", prom.scrapes_pods, 30)
    env_before = env.managed_env()
    ends_before = ts(st["observationEndsAt"])
    history_before = len(st.get("history", []))

    # --- outage, well inside the window -------------------------------------------------
    prom.stop()
    stopped_at = time.monotonic()
    print(f"Prometheus stopped {(ends_before - ts(st['observationStartedAt'])).total_seconds():.0f}s window, "
          f"ends {st['observationEndsAt']}")
    st = env.wait_status(
        "MetricsAvailable=False after Prometheus stopped",
        lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "False" for c in s.get("conditions", [])),
        timeout=6 * INTERVAL + 10,
    )
    cond = metrics_condition(env)
    print(f"while down: MetricsAvailable={cond['status']} reason={cond['reason']} message={cond['message']!r}")
    assert cond["reason"] == "MetricsUnavailable"
    assert "PrometheusUnreachable" in cond["message"] or "unreachable" in cond["message"].lower(), cond

    # Hold past the original end of the window (and a few intervals more): nothing moves.
    def holding() -> bool:
        s = env.status()
        return bool(
            s.get("state") == "Observing"
            and s.get("step") == "Shadow"
            and not s.get("lastRollback")
            and metrics_condition(env).get("status") == "False"
            and env.managed_env() == env_before
        )

    hold = max(0.0, (ends_before - datetime.now(ends_before.tzinfo)).total_seconds()) + 3 * INTERVAL
    holds_for(hold, holding, "Observing, MetricsAvailable=False, env unchanged while Prometheus is down")
    st = env.status()
    assert ts(st["observationEndsAt"]) == ends_before or ts(st["observationEndsAt"]) > ends_before
    assert not [h for h in st.get("history", [])[history_before:] if h["action"] in ("StepPassed",)
                or h["action"].startswith("Rollback")], st["history"][history_before:]
    env.wait_event("MetricsUnavailable")

    # --- Prometheus back on the same port and storage -----------------------------------
    prom.start()
    outage = time.monotonic() - stopped_at
    st = env.wait_status(
        "MetricsAvailable=True after Prometheus is back",
        lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s.get("conditions", [])),
        timeout=60,
    )
    ends_after = ts(st["observationEndsAt"])
    extension = (ends_after - ends_before).total_seconds()
    print(f"outage {outage:.1f}s; window extended by {extension:.1f}s to {st['observationEndsAt']}; "
          f"condition: {metrics_condition(env)['message']!r}")
    assert st["state"] == "Observing", st["state"]
    # The window was extended by about the outage: from the first failed evaluation to the
    # first good one (an interval or two of detection at each end, plus discovery/scrape).
    assert outage - 3 * INTERVAL - 2 <= extension <= outage + 30, (outage, extension)
    st = env.wait_state("Passed", "Shadow", timeout=60 + extension)
    passed_at = ts(next(h for h in reversed(st["history"]) if h["action"] == "StepPassed")["at"])
    assert passed_at >= ends_after, (passed_at, ends_after)
    assert env.managed_env() == env_before
    assert not st.get("lastRollback")


def test_series_absent_holds_and_never_promotes(grinder_env):
    """A selector that matches none of the pods: MetricsAvailable=False, the step never passes."""
    env = grinder_env
    env.apply_grinder()
    env.wait_grinder_available()
    nothing = f'namespace="{env.namespace}",pod=~"no-such-pod-.*"'
    env.apply_rollout(
        targetPhase="Canary",
        canarySymbols=["SYM1", "SYM2"],
        observation={"shadow": "4s", "canary": "4s"},
        prometheus={"interval": f"{INTERVAL:.0f}s", "selector": nothing},
    )
    st = env.wait_status(
        "MetricsAvailable=False in the Shadow step",
        lambda s: s.get("step") == "Shadow" and any(
            c["type"] == "MetricsAvailable" and c["status"] == "False" for c in s.get("conditions", [])),
        timeout=150,
    )
    cond = metrics_condition(env)
    print(f"series absent: state={st['state']} MetricsAvailable={cond['status']} reason={cond['reason']} "
          f"message={cond['message']!r}")
    assert cond["reason"] == "MetricsUnavailable"
    shadow_env = env.managed_env()
    assert shadow_env.get("GRINDER_FILL_MODEL_ENFORCE") == "0"

    def holding() -> bool:
        s = env.status()
        return bool(
            s.get("step") == "Shadow"
            and s.get("state") in ("Restarting", "Verifying", "Observing")
            and not s.get("lastRollback")
            and metrics_condition(env).get("status") == "False"
            and env.managed_env() == shadow_env
        )

    # Well past the 4s window and several intervals: no pass, no promotion to Canary, no rollback.
    holds_for(6 * INTERVAL + 4, holding, "Shadow held with series absent")
    assert not any(h["action"] == "StepPassed" for h in env.status().get("history", []))

    # The selector fixed: the same step goes on and passes (no rollback, no halt on the way).
    env.patch_spec(prometheus={"interval": f"{INTERVAL:.0f}s",
                               "selector": f'namespace="{env.namespace}",pod=~"{env.deployment}-.*"'})
    st = env.wait_state("Passed", "Canary", timeout=150)
    assert metrics_condition(env).get("status") == "True"
    assert not st.get("lastRollback")
    assert env.managed_env()["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"] == "SYM1,SYM2"
