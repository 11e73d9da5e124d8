"""Shared pieces of the operator e2e tests: a namespace per test, the example grinder
Deployment, a FillProbRollout, the operator as a real process, and polling with deadlines.

The operator runs as `python -m fillprob_operator` against the testbed, scoped to the test's
namespace, so tests in different namespaces never see each other's rollouts.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from kubernetes import client

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
CRD_FILE = REPO_ROOT / "crds" / "fillprobrollouts.grinder.io.yaml"
GROUP, VERSION, PLURAL = "grinder.io", "v1alpha1", "fillprobrollouts"
MANAGED_KEYS = (
    "GRINDER_FILL_MODEL_ENFORCE",
    "GRINDER_FILL_PROB_ENFORCE_SYMBOLS",
    "GRINDER_FILL_PROB_AUTO_THRESHOLD",
    "GRINDER_FILL_PROB_MIN_BPS",
)


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    """Poll `probe` until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as exc:  # noqa: BLE001 - a probe that raises is "not yet"
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(every)


def holds_for(seconds: float, predicate: Callable[[], Any], what: str, every: float = 0.5) -> Any:
    """Assert `predicate()` stays truthy for `seconds` (polled); returns its last value.

    The one place e2e tests wait a fixed time: to show that something does NOT happen.
    """
    deadline = time.monotonic() + seconds
    last: Any = None
    while True:
        last = predicate()
        assert last, f"{what}: stopped holding after {seconds - (deadline - time.monotonic()):.1f}s"
        if time.monotonic() >= deadline:
            return last
        time.sleep(every)


def get_through_port_forward(kubectl: list[str], namespace: str, pod: str, port: int, path: str) -> str:
    """GET http://127.0.0.1:<local><path> through `kubectl port-forward pod/<pod> <local>:<port>`
    (`kubectl`: the command and its --kubeconfig). Fails with kubectl's own output when the
    forward does not carry the request."""
    local = free_port()
    forward = subprocess.Popen(  # noqa: S603
        [*kubectl, "-n", namespace, "port-forward", "--address", "127.0.0.1", f"pod/{pod}", f"{local}:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def get() -> str | None:
        if forward.poll() is not None:
            return None
        with urllib.request.urlopen(f"http://127.0.0.1:{local}{path}", timeout=5) as resp:  # noqa: S310
            return resp.read().decode()

    try:
        return wait_for(f"GET {path} through kubectl port-forward on 127.0.0.1:{local}", get, 30)
    except AssertionError as exc:
        forward.terminate()
        out, err = forward.communicate(timeout=10)
        raise AssertionError(f"{exc}\nkubectl port-forward (exit {forward.returncode}):\n{out}{err}") from None
    finally:
        if forward.poll() is None:
            forward.terminate()
            forward.wait(10)


# Listening ports for the tests' operators: below the kernel's ephemeral range (where a bind to
# port 0 would pick) and clear of the testbed's own (10000-10259, 19090-19094, 23790, 23800). An
# operator killed and started again keeps its metrics port, and in between any outgoing
# connection on the machine may take that number as its local port: the restarted operator's
# bind then fails (EADDRINUSE) for as long as that connection lives (a watch: minutes). It did,
# once, in CI (test_chaos_api_server_restarts).
LISTEN_PORTS = (24000, 32000)


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = LISTEN_PORTS[0], min(LISTEN_PORTS[1], ephemeral_low)
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def ensure_crd(api: client.ApiClient) -> None:
    """Install crds/ (create, or replace), then wait until Established.

    Safe when several pytest-xdist workers run it at once: a create that lost the race (409
    AlreadyExists) or a replace on a stale resourceVersion (409 Conflict) reads again and
    retries. Replacing with an identical body changes nothing on the server.
    """
    ext = client.ApiextensionsV1Api(api)
    manifest = yaml.safe_load(CRD_FILE.read_text())
    name = manifest["metadata"]["name"]

    def installed() -> bool:
        body = copy.deepcopy(manifest)
        try:
            current = ext.read_custom_resource_definition(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            try:
                ext.create_custom_resource_definition(body)
            except client.ApiException as create_exc:
                if create_exc.status == 409:  # another worker created it first: read it again
                    return False
                raise
            return True
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        try:
            ext.replace_custom_resource_definition(name, body)
        except client.ApiException as exc:
            if exc.status == 409:  # changed meanwhile: read and retry
                return False
            raise
        return True

    wait_for("CRD created or replaced", installed, 30)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for("CRD Established", established, 30)


PEERING_CRDS_FILE = REPO_ROOT / "charts" / "fillprob-operator" / "crds" / "kopf-peerings.yaml"


def ensure_peering_crds(api: client.ApiClient) -> None:
    """kopf's peering CRDs (the chart's crds/kopf-peerings.yaml), for operator processes run with
    FILLPROB_PEERING: created when missing, never replaced (a `helm install` may own them; helm
    skips CRDs that exist). Safe when several pytest-xdist workers run it at once."""
    ext = client.ApiextensionsV1Api(api)
    for manifest in yaml.safe_load_all(PEERING_CRDS_FILE.read_text()):
        name = manifest["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(manifest)
        except client.ApiException as exc:
            if exc.status != 409:  # 409: there already, or another worker created it first
                raise

        def established(name: str = name) -> bool:
            crd = ext.read_custom_resource_definition(name)
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        wait_for(f"CRD {name} Established", established, 30)


@dataclass
class Env:
    """One test's world: its namespace, clients, and helpers on its Deployment and rollout."""

    api: client.ApiClient
    namespace: str
    deployment: str = "grinder"
    rollout: str = "grinder"
    operator: "OperatorProcess | None" = None
    extra: dict = field(default_factory=dict)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # --- the grinder Deployment -------------------------------------------------------
    def apply_grinder(self, env_overrides: dict[str, str | None] | None = None, replicas: int = 2) -> dict:
        """Create the example grinder Deployment, env changed by `env_overrides` (None removes)."""
        body = yaml.safe_load((EXAMPLES / "grinder-deployment.yaml").read_text())
        body["metadata"]["name"] = self.deployment
        body["metadata"]["namespace"] = self.namespace
        body["spec"]["replicas"] = replicas
        container = body["spec"]["template"]["spec"]["containers"][0]
        env = [e for e in container.get("env", []) if e["name"] not in (env_overrides or {})]
        for key, value in (env_overrides or {}).items():
            if value is not None:
                env.append({"name": key, "value": value})
        container["env"] = env
        self.apps.create_namespaced_deployment(self.namespace, body)
        return body

    def grinder_env(self) -> dict[str, str | None]:
        dep = self.apps.read_namespaced_deployment(self.deployment, self.namespace)
        container = dep.spec.template.spec.containers[0]
        # The API server drops `value: ""`; an entry with neither value nor valueFrom is empty.
        return {e.name: (e.value if e.value is not None or e.value_from else "") for e in container.env or []}

    def managed_env(self) -> dict[str, str | None]:
        env = self.grinder_env()
        return {k: env[k] for k in MANAGED_KEYS if k in env}

    def wait_grinder_available(self, timeout: float = 90) -> None:
        def available() -> bool:
            d = self.apps.read_namespaced_deployment(self.deployment, self.namespace)
            s = d.status
            return bool(
                s.observed_generation == d.metadata.generation
                and (s.updated_replicas or 0) == d.spec.replicas
                and (s.available_replicas or 0) == d.spec.replicas
                and (s.replicas or 0) == d.spec.replicas
            )

        wait_for("grinder Deployment available", available, timeout)

    def grinder_pods(self) -> list[client.V1Pod]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector="app=grinder").items
        return [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]

    def sim_fault(self, fault: dict, pod: client.V1Pod | None = None) -> list[dict]:
        """POST /sim/faults to one pod, or to every running grinder pod."""
        results = []
        for p in [pod] if pod else self.grinder_pods():
            req = urllib.request.Request(
                f"http://{p.status.pod_ip}:9090/sim/faults",
                data=json.dumps(fault).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (loopback pod IP)
                results.append(json.loads(resp.read()))
        return results

    # --- the FillProbRollout ------------------------------------------------------------
    def rollout_body(self, **spec_overrides: Any) -> dict:
        body = yaml.safe_load((EXAMPLES / "fillprobrollout.yaml").read_text())
        body["metadata"] = {"name": self.rollout, "namespace": self.namespace}
        body["spec"]["deploymentName"] = self.deployment
        body["spec"].update(copy.deepcopy(spec_overrides))
        return body

    def apply_rollout(self, **spec_overrides: Any) -> dict:
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.rollout_body(**spec_overrides)
        )

    def get_rollout(self) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.rollout)

    def status(self) -> dict:
        return self.get_rollout().get("status") or {}

    def patch_spec(self, **spec: Any) -> dict:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.rollout, {"spec": spec}
        )

    def annotate(self, annotations: dict[str, str | None]) -> dict:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.rollout, {"metadata": {"annotations": annotations}}
        )

    def wait_status(self, what: str, predicate: Callable[[dict], bool], timeout: float = 120) -> dict:
        def probe() -> dict | None:
            st = self.status()
            return st if predicate(st) else None

        try:
            return wait_for(what, probe, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstatus now: {json.dumps(self.status(), indent=1)[:4000]}"
                                 f"\n{self.operator.tail() if self.operator else ''}") from None

    def wait_state(self, state: str, step: str | None = None, timeout: float = 120) -> dict:
        return self.wait_status(
            f"state={state} step={step}",
            lambda st: st.get("state") == state and (step is None or st.get("step") == step),
            timeout,
        )

    def events(self) -> list[client.CoreV1Event]:
        return [
            e for e in self.core.list_namespaced_event(self.namespace).items
            if e.involved_object.kind == "FillProbRollout" and e.involved_object.name == self.rollout
        ]

    def wait_event(self, reason: str, type_: str | None = None, timeout: float = 30) -> client.CoreV1Event:
        """The Event is posted after the status write that records the transition: poll for it."""
        return wait_for(
            f"a {type_ or ''} Event {reason} on {self.namespace}",
            lambda: next((e for e in self.events() if e.reason == reason and type_ in (None, e.type)), None),
            timeout=timeout,
        )

    def condition(self, type_: str) -> dict | None:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), None)


class OperatorProcess:
    """`python -m fillprob_operator` for one namespace, output kept in a file.

    `argv` runs something else in its place with the same environment: the chaos test's
    launcher (tests/e2e/chaos_operator.py), which is this operator with one fault armed.
    """

    def __init__(self, namespace: str, log_dir: Path, extra_env: dict[str, str] | None = None,
                 argv: list[str] | None = None):
        self.namespace = namespace
        self.metrics_port = free_port()
        self.log_path = log_dir / f"operator-{namespace}-{uuid.uuid4().hex[:6]}.log"
        self.extra_env = extra_env or {}
        self.argv = argv or [sys.executable, "-m", "fillprob_operator"]
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "OperatorProcess":
        env = dict(os.environ)
        env.update(
            {
                "FILLPROB_NAMESPACES": self.namespace,
                "FILLPROB_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
                "FILLPROB_PROMETHEUS_URL": os.environ["PROMETHEUS_URL"],
                "FILLPROB_PROMETHEUS_LOOKBACK": "10s",
                "FILLPROB_WEBHOOK_ADDR": "off",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        log.write(f"--- start {self.starts + 1} ---\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.starts += 1
        return self

    def kill9(self) -> None:
        """Crash: SIGKILL the whole process group, no cleanup handlers run."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def exited(self) -> int | None:
        """The exit status of the last start once it has ended (-9: SIGKILL), else None."""
        return self.proc.poll() if self.proc else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:  # noqa: S310
            return r.read().decode()

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "operator log tail:\n" + "\n".join(text)


def make_env(api: client.ApiClient, prefix: str) -> Env:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    return Env(api=api, namespace=ns)


def delete_env(env: Env) -> None:
    """Delete the rollout while the operator still runs, then the rest.

    The operator puts no finalizer on rollouts; one left by an older version (or a test that
    sets it) is removed by hand, so the namespace never sticks in Terminating.
    """
    try:
        env.custom.delete_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, env.rollout)
    except client.ApiException:
        pass

    def rollout_gone() -> bool:
        try:
            env.get_rollout()
        except client.ApiException as exc:
            return exc.status == 404
        return False

    try:
        wait_for("FillProbRollout deleted", rollout_gone, 20)
    except AssertionError:
        try:
            env.custom.patch_namespaced_custom_object(
                GROUP, VERSION, env.namespace, PLURAL, env.rollout, {"metadata": {"finalizers": None}}
            )
        except client.ApiException:
            pass
    if env.operator:
        env.operator.stop()
    try:
        env.core.delete_namespace(env.namespace)
    except client.ApiException:
        pass


TESTBED_PROMETHEUS_YML = REPO_ROOT / ".testbed" / "run" / "prometheus" / "prometheus.yml"
PROMETHEUS_BIN = REPO_ROOT / ".testbed" / "cache" / "bin" / "prometheus"


class DedicatedPrometheus:
    """A real Prometheus for one test: same binary and pod discovery as the testbed's (its
    kubernetes_sd scrape config, limited to the test's namespace), fresh storage, a free loopback
    port; stopped and started again on the same port and storage. Other tests never see it."""

    def __init__(self, namespace: str, workdir: Path):
        self.namespace = namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.storage = workdir / "data"
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None
        self.storage.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load(TESTBED_PROMETHEUS_YML.read_text())
        # No rules and no Alertmanager: this Prometheus only feeds one rollout's gates.
        config.pop("rule_files", None)
        config.pop("alerting", None)
        for job in config["scrape_configs"]:
            for sd in job.get("kubernetes_sd_configs", []):
                sd["namespaces"] = {"names": [namespace]}  # only this test's pods: less load
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> "DedicatedPrometheus":
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [
                str(PROMETHEUS_BIN),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.storage}",
                "--storage.tsdb.retention.time=1h",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(f"Prometheus {self.url} ready", self._ready, 60)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Prometheus exited {self.proc.returncode}: {self.tail()}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310 (loopback)
            return resp.status == 200

    def scrapes_pods(self) -> bool:
        query = urllib.parse.quote(f'up{{namespace="{self.namespace}"}} == 1')
        with urllib.request.urlopen(f"{self.url}/api/v1/query?query={query}", timeout=2) as resp:  # noqa: S310
            return bool(json.loads(resp.read())["data"]["result"])

    def kill9(self) -> None:
        """A crash: SIGKILL, no shutdown (the next start replays the WAL)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait for the exit (a real outage, not a pause)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 15) -> tuple[int, Any]:
    """One request to a test endpoint (loopback or the testbed's pod IPs): the status and the
    body, parsed as JSON when it is JSON, else as text; an HTTP error is an answer, not a raise."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (the testbed's addresses)
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")
