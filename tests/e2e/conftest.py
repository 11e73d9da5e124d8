"""Shared fixtures for the e2e tier: the testbed (or any cluster named by KUBECONFIG).

Endpoints come from the environment when set (KUBECONFIG, PROMETHEUS_URL, ALERTMANAGER_URL),
otherwise from `.testbed/env` written by `make testbed-up`. An unreachable testbed FAILS the
tests (never skips): an e2e run that silently tested nothing would look green.

Side by side: `make test` runs the tier in two pytest invocations, first `-m "not serial"` on
several pytest-xdist workers (each test in its own namespace, with its own operator process),
then `-m serial` alone. A test is `serial` when it changes what every test shares (the
testbed's Alertmanager and Prometheus) or when what it measures is the shared node itself:
`SERIAL_FIXTURES` and `SERIAL_FILES` below say which and why. Session fixtures run once per worker, so they must be
idempotent and safe when two workers run them at the same moment.
"""

from __future__ import annotations

import os
import shlex
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]
TESTBED_ENV = REPO_ROOT / ".testbed" / "env"
TESTBED_BIN = REPO_ROOT / ".testbed" / "cache" / "bin"
HOW_TO_START = "start it with `make testbed-up` (or point KUBECONFIG/PROMETHEUS_URL/ALERTMANAGER_URL at one)"

# What makes a test `serial`: a fixture it uses, or the file it is in -> why.
SERIAL_FIXTURES = {
    "alert_routing": "rewrites the testbed's Alertmanager config and Prometheus rules dir and reloads both",
    "webhook": "points the testbed's Alertmanager at its own receiver (config rewritten, reloaded)",
    "testbed_restarts": "restarts the testbed's kube-apiserver (testbed/restart.sh): every other test's "
                        "operator, watches and kubectl lose the API server meanwhile",
}
SERIAL_FILES = {
    "test_crd_upgrade.py": "swaps the cluster-scoped FillProbRollout CRD (the previous version, then the "
                           "chart's upgrade) that every other test's rollouts use; restores it at the end",
    "test_kube_prometheus_stack.py": "installs prometheus-operator's CRDs (cluster-scoped, every namespace "
                                     "sees them) for a dry run of the chart's objects; removes them again",
}
# Tests that walk a grinder through restarts and windows (minutes each) start first, so that
# the quick ones fill the gaps at the end instead of one long test finishing alone.
LONG_FIXTURES = ("grinder_env", "release")


@dataclass(frozen=True)
class Testbed:
    kubeconfig: str
    prometheus_url: str
    alertmanager_url: str
    # Files of the local testbed that tests may rewrite; None for an external cluster.
    alertmanager_config: Path | None
    prometheus_rules_dir: Path | None
    kubectl: str


def _read_env_file(path: Path) -> dict[str, str]:
    """Parse the `export KEY="VALUE"` lines that testbed/up.sh writes."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        key, _, raw = line[len("export ") :].partition("=")
        parts = shlex.split(raw) or [""]
        values[key.strip()] = os.path.expandvars(parts[0])
    return values


def _resolve() -> dict[str, str]:
    file_values = _read_env_file(TESTBED_ENV) if TESTBED_ENV.is_file() else {}
    keys = ("KUBECONFIG", "PROMETHEUS_URL", "ALERTMANAGER_URL", "ALERTMANAGER_CONFIG", "PROMETHEUS_RULES_DIR")
    resolved = {k: os.environ.get(k) or file_values.get(k, "") for k in keys}
    if os.environ.get("KUBECONFIG") and not os.environ.get("ALERTMANAGER_CONFIG"):
        # An external cluster: the local testbed's files are not its files.
        if os.environ["KUBECONFIG"] != file_values.get("KUBECONFIG"):
            resolved["ALERTMANAGER_CONFIG"] = resolved["PROMETHEUS_RULES_DIR"] = ""
    return resolved


def _http_ok(url: str) -> str | None:
    """None when GET url answers 2xx within 5 s, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback test endpoints)
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        return str(exc)


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    values = _resolve()
    missing = [k for k in ("KUBECONFIG", "PROMETHEUS_URL", "ALERTMANAGER_URL") if not values[k]]
    if missing:
        pytest.fail(
            f"e2e: testbed not configured: {', '.join(missing)} unset and {TESTBED_ENV} "
            f"{'has no such entries' if TESTBED_ENV.is_file() else 'does not exist'}; {HOW_TO_START}",
            pytrace=False,
        )
    if not Path(values["KUBECONFIG"]).is_file():
        pytest.fail(f"e2e: KUBECONFIG={values['KUBECONFIG']} does not exist; {HOW_TO_START}", pytrace=False)

    from kubernetes import client, config

    try:
        api = config.new_client_from_config(config_file=values["KUBECONFIG"])
        version = client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        pytest.fail(f"e2e: API server of {values['KUBECONFIG']} unreachable: {exc}; {HOW_TO_START}", pytrace=False)
    for name, url in (("Prometheus", values["PROMETHEUS_URL"]), ("Alertmanager", values["ALERTMANAGER_URL"])):
        why = _http_ok(url.rstrip("/") + "/-/ready")
        if why:
            pytest.fail(f"e2e: {name} at {url} not ready: {why}; {HOW_TO_START}", pytrace=False)

    # Children (kubectl, operator subprocesses) see the same testbed.
    os.environ["KUBECONFIG"] = values["KUBECONFIG"]
    os.environ["PROMETHEUS_URL"] = values["PROMETHEUS_URL"]
    os.environ["ALERTMANAGER_URL"] = values["ALERTMANAGER_URL"]
    if TESTBED_BIN.is_dir() and str(TESTBED_BIN) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = f"{TESTBED_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    kubectl = str(TESTBED_BIN / "kubectl") if (TESTBED_BIN / "kubectl").exists() else "kubectl"

    print(f"e2e: testbed API server {version.git_version} via {values['KUBECONFIG']}")
    return Testbed(
        kubeconfig=values["KUBECONFIG"],
        prometheus_url=values["PROMETHEUS_URL"].rstrip("/"),
        alertmanager_url=values["ALERTMANAGER_URL"].rstrip("/"),
        alertmanager_config=Path(values["ALERTMANAGER_CONFIG"]) if values["ALERTMANAGER_CONFIG"] else None,
        prometheus_rules_dir=Path(values["PROMETHEUS_RULES_DIR"]) if values["PROMETHEUS_RULES_DIR"] else None,
        kubectl=kubectl,
    )


@pytest.fixture(scope="session")
def k8s_api(testbed: Testbed):
    """A kubernetes.client.ApiClient for the testbed's admin kubeconfig."""
    from kubernetes import config

    return config.new_client_from_config(config_file=testbed.kubeconfig)


@pytest.fixture(scope="session")
def crd_installed(k8s_api):
    from support import ensure_crd

    ensure_crd(k8s_api)


@pytest.fixture
def grinder_env(request, k8s_api, crd_installed, tmp_path_factory):
    """A fresh namespace with the operator running for it (started, not yet given a rollout).

    The test applies the grinder Deployment and its FillProbRollout through the returned Env.
    """
    from support import OperatorProcess, delete_env, make_env

    env = make_env(k8s_api, request.node.name.replace("_", "-").lower()[:40].strip("-"))
    log_dir = tmp_path_factory.mktemp("operator-logs")
    env.operator = OperatorProcess(env.namespace, log_dir).start()
    yield env
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(env.operator.tail(200))
    delete_env(env)


def serial_reason(item: pytest.Item) -> str | None:
    for fixture, why in SERIAL_FIXTURES.items():
        if fixture in getattr(item, "fixturenames", ()):
            return why
    return SERIAL_FILES.get(item.path.name)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    e2e = [item for item in items if E2E_DIR in item.path.parents]
    for item in e2e:
        why = serial_reason(item)
        if why and item.get_closest_marker("serial") is None:
            item.add_marker(pytest.mark.serial(reason=why))
    items.sort(key=lambda item: not (item in e2e and any(f in item.fixturenames for f in LONG_FIXTURES)))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
