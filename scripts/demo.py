#!/usr/bin/env python3
"""`make demo`: the operator walks a grinder up runbook 32's ladder, then rolls a CB trip back.

Run by `make demo` after `make venv testbed-build testbed-up`. It:
  1. cleans the demo namespace (grinder-demo) so a re-run starts from scratch;
  2. installs the operator with `helm upgrade --install` (charts/fillprob-operator, namespace
     fillprob-system, the chart's defaults: image fillprob-operator:<appVersion> built by
     `make images`, Prometheus through the Service monitoring/prometheus-operated, the webhook
     token from a Secret volume; watching grinder-demo only); if helm cannot,
     it runs `python -m fillprob_operator` in the background instead and says so;
  3. deploys examples/grinder-deployment.yaml and examples/fillprobrollout.yaml (windows DEMO_WINDOW,
     default 15s) in grinder-demo;
  4. prints a live timeline (step, state, gate values, decision and why) from status.history,
     the rollout's Events and Prometheus, while it walks Shadow -> Canary -> Expand -> Full ->
     AutoThreshold;
  5. trips the circuit breaker in AutoThreshold (POST /sim/faults) and shows the automatic R3;
  6. prints a summary and leaves everything running.
Knobs (env): DEMO_WINDOW (15s), DEMO_TIMEOUT (900 s to reach AutoThreshold), DEMO_NO_HELM=1
(show the background-process fallback).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from fillprob_operator.cli_render import compact_evidence, human, parse_time  # noqa: E402

NS = os.environ.get("DEMO_NAMESPACE", "grinder-demo")
OP_NS = os.environ.get("DEMO_OPERATOR_NAMESPACE", "fillprob-system")
RELEASE = "fillprob-operator"
WINDOW = os.environ.get("DEMO_WINDOW", "15s")
GROUP, VERSION, PLURAL = "grinder.io", "v1alpha1", "fillprobrollouts"
TESTBED_ENV = REPO / ".testbed" / "env"
FALLBACK_PID = REPO / ".testbed" / "run" / "demo-operator.pid"
FALLBACK_LOG = REPO / ".testbed" / "run" / "demo-operator.log"
FALLBACK_METRICS = "127.0.0.1:18081"
BOLD, DIM, RED, GREEN, YELLOW, RESET = (
    ("\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[33m", "\033[0m") if sys.stdout.isatty() else ("",) * 6
)
T0 = time.monotonic()


def say(text: str = "") -> None:
    print(text, flush=True)


def stage(text: str) -> None:
    say(f"\n{BOLD}== {text}{RESET}  {DIM}(+{human(time.monotonic() - T0)}){RESET}")


def fail(text: str) -> None:
    say(f"{RED}demo failed: {text}{RESET}")
    say(f"the testbed is left as it is; inspect with: .venv/bin/kubectl-fillprob status grinder -n {NS}")
    sys.exit(1)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # noqa: BLE001 - "not yet"
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def run(cmd: list[str], check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    if not quiet:
        say(f"{DIM}$ {' '.join(shlex.quote(c) for c in cmd)}{RESET}")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode != 0:
        fail(f"{cmd[0]} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


# --------------------------------------------------------------------------- environment


def load_testbed_env() -> None:
    if not TESTBED_ENV.is_file():
        fail(f"{TESTBED_ENV} missing: run `make testbed-up` first")
    for line in TESTBED_ENV.read_text().splitlines():
        if line.startswith("export "):
            key, _, raw = line[len("export "):].partition("=")
            os.environ[key] = os.path.expandvars((shlex.split(raw) or [""])[0])
    os.environ["PATH"] = f"{REPO / '.venv' / 'bin'}:{REPO / '.testbed' / 'cache' / 'bin'}:{os.environ['PATH']}"


class Cluster:
    def __init__(self) -> None:
        self.api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def rollout(self) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "grinder")

    def events(self) -> list:
        return [e for e in self.core.list_namespaced_event(NS).items if e.involved_object.kind == "FillProbRollout"]

    def running_pods(self, namespace: str, selector: str) -> list:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]

    def deployment_env(self) -> dict[str, str]:
        dep = self.apps.read_namespaced_deployment("grinder", NS)
        return {e.name: e.value for e in dep.spec.template.spec.containers[0].env or [] if e.value is not None}


def prom(query: str) -> float | None:
    url = os.environ["PROMETHEUS_URL"].rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            result = json.loads(resp.read())["data"]["result"]
    except Exception:  # noqa: BLE001 - shown as "n/a"
        return None
    return float(result[0]["value"][1]) if result else None


# --------------------------------------------------------------------------- stages


def clean(k: Cluster) -> None:
    stage(f"1/6 clean: namespace {NS} (re-runs start from scratch)")
    # The FillProbRollout first. The operator puts no finalizer on it (docs/install.md,
    # "Uninstalling"); one left by an older version is removed by the operator when it runs,
    # else by hand after a grace period.
    try:
        k.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "grinder")
        say(f"deleting FillProbRollout {NS}/grinder ...")
    except ApiException as exc:
        if exc.status != 404:
            raise

    def rollout_gone() -> bool:
        try:
            k.rollout()
            return False
        except ApiException as exc:
            return exc.status == 404
    deadline = time.monotonic() + 30
    while not rollout_gone() and time.monotonic() < deadline:
        time.sleep(1)
    if not rollout_gone():
        say(f"{YELLOW}the operator did not release it in 30s: removing the finalizer by hand{RESET}")
        k.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "grinder",
                                                {"metadata": {"finalizers": None}})
    try:
        k.core.delete_namespace(NS)
        say(f"deleting namespace {NS} ...")
    except ApiException as exc:
        if exc.status != 404:
            raise

    def gone() -> bool:
        try:
            k.core.read_namespace(NS)
            return False
        except ApiException as exc:
            return exc.status == 404
    wait_for(f"namespace {NS} to be deleted", gone, 180)
    k.core.create_namespace({"metadata": {"name": NS}})
    run(["kubectl", "apply", "-f", "crds/fillprobrollouts.grinder.io.yaml"])


def install_operator(k: Cluster) -> str:
    """helm upgrade --install; fallback: a background process. Returns the metrics URL."""
    stage(f"2/6 operator: helm upgrade --install {RELEASE} -n {OP_NS} (the chart's defaults, "
          f"watching {NS})")
    # (DEMO_NO_HELM=1 shows the fallback below)
    stop_fallback()
    helm = shutil.which("helm") if os.environ.get("DEMO_NO_HELM") != "1" else None
    if helm:
        existed = run(["helm", "status", RELEASE, "-n", OP_NS], check=False, quiet=True).returncode == 0
        proc = run([
            "helm", "upgrade", "--install", RELEASE, "charts/fillprob-operator", "-n", OP_NS, "--create-namespace",
            "--set", "rbac.scope=namespaced", "--set", f"watchNamespaces={{{NS}}}",
            "--wait", "--timeout", "3m",
        ], check=False)
        if proc.returncode == 0:
            if existed:  # a fresh operator: its metrics (detection time) are this run's only
                run(["kubectl", "-n", OP_NS, "rollout", "restart", f"deployment/{RELEASE}"])
                run(["kubectl", "-n", OP_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=180s"])
            selector = f"app.kubernetes.io/instance={RELEASE}"
            pod = wait_for("the operator pod to be ready", lambda: [
                p for p in k.running_pods(OP_NS, selector)
                if all(c.ready for c in p.status.container_statuses or [])], 180)[0]
            say(f"{GREEN}operator running in pod {OP_NS}/{pod.metadata.name} ({pod.status.pod_ip}){RESET}")
            return f"http://{pod.status.pod_ip}:8080/metrics"
        say(f"{YELLOW}helm install failed ({(proc.stderr or proc.stdout).strip()[-500:]}){RESET}")
    else:
        say(f"{YELLOW}" + ("DEMO_NO_HELM=1: not using helm" if os.environ.get("DEMO_NO_HELM") == "1"
                           else "helm not found (make testbed-build builds it)") + RESET)
    say(f"{YELLOW}fallback: running `python -m fillprob_operator` in the background "
        f"(log {FALLBACK_LOG.relative_to(REPO)}; it is not stopped by make testbed-down: "
        f"kill -- -$(cat {FALLBACK_PID.relative_to(REPO)})){RESET}")
    try:  # never two operators on one namespace: an earlier helm release's pod goes
        k.apps.delete_namespaced_deployment(RELEASE, OP_NS)
        say(f"deleted deployment {OP_NS}/{RELEASE} of an earlier helm install")
    except ApiException as exc:
        if exc.status != 404:
            raise
    env = dict(os.environ, FILLPROB_NAMESPACES=NS, FILLPROB_METRICS_ADDR=FALLBACK_METRICS,
               FILLPROB_PROMETHEUS_URL=os.environ["PROMETHEUS_URL"], FILLPROB_WEBHOOK_ADDR="off",
               PYTHONUNBUFFERED="1")
    FALLBACK_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(FALLBACK_LOG, "ab") as log:
        proc2 = subprocess.Popen([sys.executable, "-m", "fillprob_operator"], cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    FALLBACK_PID.write_text(str(proc2.pid))
    return f"http://{FALLBACK_METRICS}/metrics"


def stop_fallback() -> None:
    try:
        pid = int(FALLBACK_PID.read_text())
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, 15)
        say(f"stopped the previous demo's background operator (pid {pid})")
    except ProcessLookupError:
        pass
    FALLBACK_PID.unlink(missing_ok=True)


def deploy(k: Cluster) -> dict:
    stage(f"3/6 grinder: examples/grinder-deployment.yaml in {NS} (2 replicas of the simulator)")
    run(["kubectl", "apply", "-n", NS, "-f", "examples/grinder-deployment.yaml"])

    def available() -> bool:
        d = k.apps.read_namespaced_deployment("grinder", NS)
        return (d.status.available_replicas or 0) == d.spec.replicas and d.status.observed_generation == \
            d.metadata.generation
    wait_for("the grinder Deployment to be available", available, 180)
    say(f"{GREEN}grinder available{RESET}; starting env (runbook 32, Phase 0.3): "
        + " ".join(f"{k_}={v}" for k_, v in sorted(k.deployment_env().items()) if "ENFORCE" in k_ or "AUTO" in k_
                   or "MIN_BPS" in k_))

    stage(f"4/6 FillProbRollout: examples/fillprobrollout.yaml, every observation window {WINDOW}")
    body = yaml.safe_load((REPO / "examples" / "fillprobrollout.yaml").read_text())
    body["metadata"]["namespace"] = NS
    body["spec"]["observation"] = {k_: WINDOW for k_ in ("shadow", "canary", "expandBatch", "full", "autoThreshold")}
    path = REPO / ".testbed" / "run" / "demo-fillprobrollout.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    plan = run(["kubectl-fillprob", "plan", "-f", str(path)], check=True)
    for line in plan.stdout.splitlines():  # the plan, condensed: the env of each step
        if line[:2].strip().rstrip(".").isdigit() or line.strip().startswith("env:"):
            say(f"  {line.strip()}")
    run(["kubectl", "apply", "-f", str(path)])
    return body


class Timeline:
    """Prints history entries, Events ("why") and gate values as they change."""

    def __init__(self, k: Cluster, spec: dict) -> None:
        self.k, self.spec = k, spec
        self.history_seen = 0
        self.events_seen: set[tuple[str, int]] = set()
        self.last_gates = 0.0
        self.start: datetime | None = None

    def _offset(self, at: datetime | None) -> str:
        if at is None:
            return " " * 6
        self.start = self.start or at
        return ("+" + human(at - self.start)).rjust(6)

    def tick(self) -> dict:
        obj = self.k.rollout()
        status = obj.get("status") or {}
        history = status.get("history") or []
        for entry in history[self.history_seen:]:
            at = parse_time(entry.get("at"))
            colour = RED if entry["action"].startswith(("Rollback", "Halted")) else (
                GREEN if entry["action"] in ("StepPassed", "PreflightPassed", "ObservationStarted") else "")
            say(f"{colour}{self._offset(at)}  {entry.get('step', ''):<18} {entry['action']:<19} "
                f"{entry['reason']:<24}{RESET} {DIM}{compact_evidence(entry.get('evidence'), 90)}{RESET}")
        self.history_seen = len(history)
        for event in sorted(self.k.events(), key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp)):
            key = (event.metadata.uid, event.count or 1)
            if key in self.events_seen:
                continue
            self.events_seen.add(key)
            say(f"{' ' * 8}{DIM}why:{RESET} {event.message}")
        if status.get("state") == "Observing" and time.monotonic() - self.last_gates >= 5:
            self.last_gates = time.monotonic()
            say(f"{' ' * 8}{self.gates(status)}")
        return status

    def gates(self, status: dict) -> str:
        sel = f'namespace="{NS}"'
        blocks = prom(f"sum(increase(grinder_router_fill_prob_blocks_total{{{sel}}}[15s]))")
        orders = prom(f"sum(increase(grinder_router_orders_total{{{sel}}}[15s]))")
        trips = prom(f"sum(grinder_router_fill_prob_cb_trips_total{{{sel}}} and on(pod) up{{{sel}}} == 1)")
        bps = prom(f"max(grinder_router_fill_prob_auto_threshold_bps{{{sel}}} and on(pod) up{{{sel}}} == 1)")
        start, end = parse_time(status.get("observationStartedAt")), parse_time(status.get("observationEndsAt"))
        now = datetime.now(timezone.utc)
        window = f"{human(min(now, end) - start)}/{human(end - start)}" if start and end else "-"
        gates = self.spec["gates"]
        rng = gates.get("thresholdRange") or {}

        def n(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.0f}"
        verdict = "no-go signal!" if (trips or 0) > 0 else "holding, no no-go signal"
        return (f"gates [{status.get('step')}, window {window}]: blocks(15s)={n(blocks)} orders(15s)={n(orders)} "
                f"cbTrips={n(trips)} threshold={n(bps)}bps (range {rng.get('minBps')}..{rng.get('maxBps')}, "
                f"maxBlockRatio {gates.get('maxBlockRatio')}) -> {verdict}")


def walk(k: Cluster, body: dict) -> tuple[float, dict]:
    stage("5/6 the operator walks the ladder (one line per transition; 'why:' lines are its Events)")
    say(f"{DIM}   +T  step               action              reason                   evidence{RESET}")
    timeline = Timeline(k, body["spec"])
    deadline = time.monotonic() + float(os.environ.get("DEMO_TIMEOUT", "900"))
    while time.monotonic() < deadline:
        status = timeline.tick()
        if status.get("state") in ("Halted", "RolledBack"):
            fail(f"the rollout stopped at {status.get('step')}: {status.get('reason')}: {status.get('message')}")
        if status.get("phase") == "AutoThreshold" and status.get("state") in ("Observing", "Passed"):
            started = parse_time(status.get("observationStartedAt"))
            if started and (datetime.now(timezone.utc) - started).total_seconds() >= 5:
                break
        time.sleep(1)
    else:
        fail("the rollout did not reach AutoThreshold in time")

    stage("6/6 a circuit breaker trips in AutoThreshold (POST /sim/faults {\"cbTrip\": true} to each grinder pod)")
    pods = k.running_pods(NS, "app=grinder")
    t_fault = time.time()
    for pod in pods:
        req = urllib.request.Request(f"http://{pod.status.pod_ip}:9090/sim/faults", data=b'{"cbTrip": true}',
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback pod IP
            answer = json.loads(resp.read())
        say(f"  {pod.metadata.name}: injectedCbTrips={answer.get('injectedCbTrips')}")
    deadline = time.monotonic() + 180
    status: dict = {}
    while time.monotonic() < deadline:
        status = timeline.tick()
        if status.get("state") == "RolledBack":
            t_seen = time.time()
            break
        time.sleep(1)
    else:
        fail("no rollback within 180s of the CB trip")
    # the rollback restarts the pods too: show its post-restart verification
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = timeline.tick()
        if any(h["action"] == "RollbackVerified" for h in status.get("history") or []):
            break
        time.sleep(1)
    return t_seen - t_fault, status


def operator_metrics(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
    except Exception as exc:  # noqa: BLE001
        say(f"{YELLOW}operator metrics at {url} not readable: {exc}{RESET}")
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fillprob_rollout_") and f'namespace="{NS}"' in line or \
                line.startswith("fillprob_rollout_detection_seconds_"):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def summary(k: Cluster, status: dict, seen_after: float, metrics_url: str) -> None:
    stage("summary")
    history = status.get("history") or []
    started: dict[str, datetime] = {}
    say("steps passed:")
    for entry in history:
        at = parse_time(entry["at"])
        if entry["action"] in ("RestartIssued", "PreflightStarted") and at:
            started.setdefault(entry["step"], at)
        if entry["action"] in ("StepPassed", "PreflightPassed") and at:
            begun = started.get(entry["step"])
            took = human(at - begun) if begun else "?"
            say(f"  {GREEN}passed{RESET}  {entry['step']:<14} in {took:>6}  (restart, post-restart checks, "
                f"{WINDOW} window)" if entry["step"] != "Preflight" else
                f"  {GREEN}passed{RESET}  {'Preflight':<14} in {took:>6}  (preflight Job)")
    last = status.get("lastRollback") or {}
    say(f"rollback: {RED}{last.get('playbook')}{RESET} reason {last.get('reason')} at {last.get('at')} "
        f"-> step now {status.get('step')}, state {status.get('state')}")
    say(f"  evidence: {compact_evidence(last.get('evidence'), 200)}")
    env = k.deployment_env()
    say("  Deployment env now: " + " ".join(f"{key}={env.get(key, '(unset)')}" for key in (
        "GRINDER_FILL_MODEL_ENFORCE", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS", "GRINDER_FILL_PROB_AUTO_THRESHOLD")))
    say(f"  fault injected -> RolledBack seen in status by this script (polling every 1s): {seen_after:.1f}s")
    m = operator_metrics(metrics_url)
    count = sum(v for n, v in m.items() if n.startswith("fillprob_rollout_detection_seconds_count"))
    total = sum(v for n, v in m.items() if n.startswith("fillprob_rollout_detection_seconds_sum"))
    if count:
        say(f"  detection time (operator metric fillprob_rollout_detection_seconds, no-go visible in Prometheus "
            f"-> env patched): {total / count:.2f}s mean over {count:.0f}")
    rollbacks = {n: v for n, v in m.items() if n.startswith("fillprob_rollout_rollbacks_total")}
    for name, value in rollbacks.items():
        say(f"  {name} {value:.0f}")
    say(f"total demo time (after the build): {human(time.monotonic() - T0)}")
    say()
    say(f"{BOLD}The testbed is still up. Explore:{RESET}")
    say(f"  . .testbed/env && export PATH=$PWD/.venv/bin:$PATH   # kubectl + the kubectl-fillprob plugin")
    say(f"  kubectl-fillprob status grinder -n {NS}               # or: kubectl fillprob status grinder -n {NS}")
    say(f"  kubectl get fpr -n {NS}; kubectl describe fpr grinder -n {NS}")
    say(f"  helm list -n {OP_NS}")
    say(f"Tear down: make testbed-down")


def main() -> int:
    load_testbed_env()
    k = Cluster()
    try:
        k.core.list_namespace(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001
        fail(f"the testbed API server is unreachable ({exc}); run `make testbed-up`")
    say(f"{BOLD}FillProbRollout demo{RESET}: runbook 32 as a controller, on the local testbed "
        f"({os.environ['KUBECONFIG']})")
    clean(k)
    metrics_url = install_operator(k)
    body = deploy(k)
    seen_after, status = walk(k, body)
    summary(k, status, seen_after, metrics_url)
    say(f"\n{DIM}$ kubectl-fillprob status grinder -n {NS} --history 6{RESET}")
    say(run(["kubectl-fillprob", "status", "grinder", "-n", NS, "--history", "6"], check=False, quiet=True).stdout)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("\ninterrupted; the testbed is left as it is (make testbed-down tears it down)")
        sys.exit(130)
