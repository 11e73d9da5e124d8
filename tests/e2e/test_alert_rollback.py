"""Alert-driven rollback end to end (API.md, "Manual and alert-driven rollback"):

grinder CB trip -> Prometheus evaluates the chart's files/prometheus-rules.yml ->
Alertmanager -> the chart-installed operator's webhook (bearer token from the chart's
Secret) -> R1 applied to the Deployment.

The rollout's own gates would catch the trip too; to prove the alert path, its gate
evaluation interval is set to 5m once it has Passed Canary, so only the webhook can wake it
within the test. The test rewrites the testbed's Alertmanager config and drops the rules file
into its Prometheus rules dir, and restores both at the end.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from datetime import datetime, timezone

import pytest
from chart_release import CHART, ChartRelease, wait_rollout
from support import http, wait_for

pytestmark = pytest.mark.e2e

RULES_FILE = CHART / "files" / "prometheus-rules.yml"
ALERT = "FillProbCircuitBreakerTripped"



def reload(url: str) -> None:
    status, text = http("POST", f"{url}/-/reload")
    assert status == 200, f"POST {url}/-/reload: {status} {text}"


def alert_path(testbed, env) -> str:
    """Where an alert that never reached the webhook stopped: the trip counter's samples as
    Prometheus has them, the rule's state, and the alerts Alertmanager holds."""
    query = f'grinder_router_fill_prob_cb_trips_total{{namespace="{env.namespace}"}}[2m]'
    found = []
    for what, url in (
        ("the trip counter", f"{testbed.prometheus_url}/api/v1/query?query={urllib.parse.quote(query)}"),
        ("Prometheus' alerts", f"{testbed.prometheus_url}/api/v1/alerts"),
        ("Alertmanager's alerts", f"{testbed.alertmanager_url}/api/v2/alerts"),
    ):
        try:
            status, answer = http("GET", url)
            found.append(f"{what}: {status} {json.dumps(answer)[:2000]}")
        except Exception as exc:  # a diagnosis must not hide the failure it explains
            found.append(f"{what}: {exc!r}")
    return "\n".join(found)


@pytest.fixture
def release(k8s_api, crd_installed):
    rel = ChartRelease(k8s_api, "alert")
    yield rel
    rel.teardown()


@pytest.fixture
def alert_routing(testbed):
    """Install the chart's rules into the testbed Prometheus and give back `point(url, token)`,
    which routes Alertmanager to the operator's webhook; both restored afterwards."""
    if testbed.alertmanager_config is None or testbed.prometheus_rules_dir is None:
        pytest.fail("this test rewrites the testbed's Alertmanager config and Prometheus rules dir; "
                    "ALERTMANAGER_CONFIG / PROMETHEUS_RULES_DIR are unknown for this cluster")
    original = testbed.alertmanager_config.read_text()
    rule_file = testbed.prometheus_rules_dir / "fillprob-operator-chart.yml"
    shutil.copyfile(RULES_FILE, rule_file)
    reload(testbed.prometheus_url)

    def loaded() -> bool:
        _, rules = http("GET", f"{testbed.prometheus_url}/api/v1/rules")
        return any(g["file"] == str(rule_file) and any(r["name"] == ALERT for r in g["rules"])
                   for g in rules["data"]["groups"])

    wait_for("Prometheus to load the chart's rules", loaded, 30)

    def point(url: str, token: str) -> None:
        testbed.alertmanager_config.write_text(
            "# written by tests/e2e/test_alert_rollback.py; restored after the test\n"
            "route:\n"
            "  receiver: fillprob-operator\n"
            "  group_by: [alertname, namespace, fillprob_rollout]\n"
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: fillprob-operator\n"
            "    webhook_configs:\n"
            f"      - url: {json.dumps(url)}\n"
            "        send_resolved: true\n"
            "        http_config:\n"
            "          authorization:\n"
            "            type: Bearer\n"
            f"            credentials: {json.dumps(token)}\n"
        )
        reload(testbed.alertmanager_url)
        wait_for("Alertmanager to load the receiver",
                 lambda: url in http("GET", f"{testbed.alertmanager_url}/api/v2/status")[1]["config"]["original"], 15)

    try:
        yield point
    finally:
        testbed.alertmanager_config.write_text(original)
        reload(testbed.alertmanager_url)
        rule_file.unlink(missing_ok=True)
        reload(testbed.prometheus_url)


def rollbacks(status: dict) -> list[dict]:
    return [h for h in status.get("history", []) if str(h.get("action", "")).startswith("Rollback")]


def hold(what: str, probe, seconds: float) -> None:
    """`probe()` stays truthy for `seconds` (polled)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert probe(), f"{what} stopped holding"
        time.sleep(0.5)


def test_cb_trip_alert_rolls_back_canary_through_the_webhook(release: ChartRelease, alert_routing, testbed):
    release.install()
    env = release.env()
    body = env.apply_grinder()
    labels = body["spec"]["template"]["metadata"]["labels"]
    assert labels.get("fillprob_rollout") == env.rollout, "the example's pods must carry fillprob_rollout=<rollout>"
    env.wait_grinder_available()
    env.apply_rollout(targetPhase="Canary", observation={"shadow": "5s", "canary": "5s"},
                      prometheus={"interval": "2s"})
    wait_rollout(env, release, "Canary Passed",
                 lambda s: s.get("step") == "Canary" and s.get("state") == "Passed", timeout=240)

    # From now on Prometheus is looked at only every 5 minutes (the pods' logs are still followed).
    patched = env.patch_spec(prometheus={"interval": "5m"})
    generation = patched["metadata"]["generation"]
    wait_rollout(env, release, "the 5m interval taken in",
                 lambda s: s.get("observedGeneration") == generation and s.get("state") == "Passed", 60)
    token, url = release.webhook_token(), release.webhook_url()
    alert_routing(url, token)
    before = env.apps.read_namespaced_deployment(env.deployment, env.namespace).metadata.generation

    # The CB line is in the pod's log at once, and the operator follows that log: it rolls back
    # (R1) long before its 5m interval and before the alert, which Prometheus' rule and
    # Alertmanager deliver later. The alert is then taken once and recorded: R1 is in place
    # already, so it is skipped (recorded with why), never applied twice.
    tripped = time.monotonic()
    env.sim_fault({"cbTrip": True})

    def patched_to_r1() -> bool:
        dep = env.apps.read_namespaced_deployment(env.deployment, env.namespace)
        env_now = {e.name: e.value for e in dep.spec.template.spec.containers[0].env or []}
        return dep.metadata.generation > before and env_now.get("GRINDER_FILL_MODEL_ENFORCE") == "0"

    try:
        wait_for("R1 to be patched in", patched_to_r1, 120, every=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{release.logs()}") from None
    print(f"CB trip -> the operator's log stream -> Deployment patched (R1): {time.monotonic() - tripped:.1f}s")

    def alert_taken(s: dict) -> bool:
        return any(str((h.get("evidence") or {}).get("requestKey", "")).startswith("alert:")
                   for h in s.get("history", []))

    try:
        st = wait_rollout(env, release, "the alert taken (a history entry with its request key)", alert_taken, 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{alert_path(testbed, env)}") from None
    print(f"CB trip -> Prometheus rule -> Alertmanager -> webhook -> taken: {time.monotonic() - tripped:.1f}s")
    assert st["lastRollback"]["playbook"] == "R1"
    assert st["lastRollback"]["reason"] == "CircuitBreakerTripped"
    done = rollbacks(st)
    assert [h["action"] for h in done] == ["RollbackR1", "RollbackSkipped"], done
    entry = done[1]
    evidence = entry["evidence"]
    assert evidence.get("why"), evidence  # why it changed nothing (R1 is in place already)
    assert evidence["alertname"] == ALERT
    assert evidence["labels"]["fillprob_rollout"] == env.rollout
    assert evidence["labels"]["namespace"] == env.namespace
    assert evidence["requestKey"].startswith(f"alert:{evidence['fingerprint']}:")
    managed = env.managed_env()
    assert managed["GRINDER_FILL_MODEL_ENFORCE"] == "0"
    assert managed["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"] == "SYM1,SYM2"  # R1: nothing else changed

    # The same alert again (Alertmanager re-sends; a second replica might too): nothing more.
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    alert = {"status": "firing", "labels": evidence["labels"], "annotations": evidence.get("annotations", {}),
             "startsAt": evidence["startsAt"], "endsAt": "0001-01-01T00:00:00Z",
             "fingerprint": evidence["fingerprint"], "generatorURL": evidence.get("generatorURL", "")}
    payload = {"version": "4", "status": "firing", "receiver": "fillprob-operator", "groupKey": "{}:{}",
               "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": [alert]}
    status, result = http("POST", url, json.dumps(payload).encode(), headers)
    assert status == 200 and not result["accepted"] and result["ignored"], result
    assert "duplicate" in result["ignored"][0]["reason"], result
    resolved = {**payload, "status": "resolved",
                "alerts": [{**alert, "status": "resolved", "endsAt": datetime.now(timezone.utc).isoformat()}]}
    status, result = http("POST", url, json.dumps(resolved).encode(), headers)
    assert status == 200 and not result["accepted"] and result["ignored"], result
    generation_after = env.apps.read_namespaced_deployment(env.deployment, env.namespace).metadata.generation
    hold("one rollback, no further Deployment patch",
         lambda: len(rollbacks(env.status())) == 2
         and env.apps.read_namespaced_deployment(env.deployment, env.namespace).metadata.generation == generation_after,
         5)

    # Bad requests against the running operator: refused, and it keeps serving.
    status, result = http("POST", url, json.dumps(payload).encode(), {**headers, "Authorization": "Bearer wrong"})
    assert status == 401, (status, result)
    status, result = http("POST", url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    assert status == 401, (status, result)
    status, result = http("POST", url, b"{not json", headers)
    assert status == 400, (status, result)
    status, result = http("POST", url, json.dumps({"version": "3", "alerts": "x"}).encode(), headers)
    assert status == 400, (status, result)
    status, result = http("GET", url.replace("/alertmanager", "/healthz"))
    assert status == 200, (status, result)
    status, result = http("POST", url, json.dumps({**payload, "alerts": []}).encode(), headers)
    assert status == 200 and result == {"accepted": [], "ignored": [], "rejected": []}, result
    # An alert for a rollout this operator does not watch is rejected, not queued.
    stranger = {**alert, "fingerprint": "0123456789abcdef",
                "labels": {**alert["labels"], "namespace": release.other}}
    status, result = http("POST", url, json.dumps({**payload, "alerts": [stranger]}).encode(), headers)
    assert status == 200 and result["rejected"] and not result["accepted"], result
    pod = release.pod()
    assert (pod.status.container_statuses[0].restart_count or 0) == 0
    assert len(rollbacks(env.status())) == 2  # R1 (the log) and the alert, skipped: nothing more

    release.uninstall()
