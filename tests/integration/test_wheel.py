"""The plugin from a wheel, outside the checkout: what `pip install` gives a GitOps check.

Builds the wheel from the working tree (only pyproject.toml and operator/ are copied to a tmp
dir, with no crds/ beside them: the wheel must carry its own CRD), installs it into a clean
venv in a tmp dir outside the checkout (its pinned dependencies come from the package index;
the downloads are kept in a wheelhouse under ~/.cache for the next session), then runs the installed `kubectl-fillprob` from a cwd outside the
checkout with an environment built from scratch (no PYTHONPATH, no project venv on PATH):

- `version`: the package version and the CRD's API version;
- `plan -f` on a valid manifest (exit 0 and the plan) and on invalid ones (the API server's
  message, exit 2);
- `status` / `rollback` with no cluster (exit 4 and one `error:` line, no traceback).

Against a real cluster `status`/`rollback` are covered by tests/e2e/test_cli.py (the same
console script, installed editable). One venv per test session: under pytest-xdist the
workers share it (a file lock; the first builds it). About two minutes the first time (the
downloads), then ~30 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fillprob_operator import cli
from fillprob_operator.validation import invalid_message, validate_manifest

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "fillprobrollouts.grinder.io.yaml"
EXAMPLE = REPO / "examples" / "fillprobrollout.yaml"


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@dataclass
class Installed:
    wheel: Path
    venv: Path
    work: Path  # cwd for the plugin: outside the checkout, holds the manifests
    timings: dict[str, float]

    @property
    def plugin(self) -> Path:
        return self.venv / "bin" / "kubectl-fillprob"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.work),
            "LANG": "C.UTF-8",
            "KUBECONFIG": str(self.work / "no-such-kubeconfig"),
        }
        env.update(extra)
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.plugin), *args], capture_output=True, text=True, cwd=self.work,
                              env=self.env(**env), timeout=120)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _wheelhouse() -> Path:
    """A local copy of what the index served last time (the build backend and the package's
    dependencies as wheels), outside the checkout, keyed by the pins, the Python and the machine.
    pip's own cache does not help here (the index's responses are not cacheable), so without this
    every session would download them again (~1.5 min). A change of pins gives a new key."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    key = hashlib.sha256(json.dumps([config["build-system"]["requires"], config["project"]["dependencies"],
                                     list(sys.version_info[:2]), platform.machine()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "fillprob-operator-wheel-test" / key


def _build_and_install(root: Path) -> Installed:
    timings: dict[str, float] = {}
    src, dist, venv, work = root / "src", root / "dist", root / "venv", root / "work"
    for path in (src, dist, venv, work):
        shutil.rmtree(path, ignore_errors=True)
    # A clean clone's build inputs, from the working tree (uncommitted changes included).
    src.mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(REPO / "operator", src / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build"))
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip_env.pop("PYTHONPATH", None)
    build_requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    house = _wheelhouse()
    house.mkdir(parents=True, exist_ok=True)
    assert not house.resolve().is_relative_to(REPO)
    offline = ["--no-index", "--find-links", str(house)]

    with open(house / ".lock", "w") as lock:  # other sessions may share the wheelhouse
        fcntl.flock(lock, fcntl.LOCK_EX)
        complete = house / ".complete"
        started = time.monotonic()
        if not complete.exists():  # from the package index, once
            _run([sys.executable, "-m", "pip", "download", "-q", "-d", str(house), *build_requires],
                 env=pip_env, timeout=600)
        # Build isolation as for any user, its backend from the wheelhouse.
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *offline, "-w", str(dist), str(src)],
             env=pip_env, timeout=600)
        timings["wheel"] = time.monotonic() - started
        wheels = sorted(dist.glob("*.whl"))
        assert len(wheels) == 1, wheels

        started = time.monotonic()
        # The base interpreter, not the project venv's site-packages: a clean venv.
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        _run([base_python, "-m", "venv", "--without-pip", str(venv)], env=pip_env, timeout=300)
        # This pip, acting on the venv's interpreter (`pip --python`): no pip inside the venv.
        venv_pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
        if not complete.exists():
            _run([*venv_pip, "download", "-q", "-d", str(house), str(wheels[0])], env=pip_env, cwd=root, timeout=900)
            for own in house.glob("fillprob_operator-*.whl"):
                own.unlink()  # only the dependencies are kept
            complete.write_text("downloaded from the package index for tests/integration/test_wheel.py\n")
        _run([*venv_pip, "install", "-q", "--no-compile", *offline, str(wheels[0])], env=pip_env, cwd=root, timeout=900)
        timings["venv+install"] = time.monotonic() - started
    work.mkdir()
    return Installed(wheels[0], venv, work, timings)


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker has its own basetemp; their parent is this session's, shared.
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "wheel-venv"
    root.mkdir(parents=True, exist_ok=True)
    assert not root.resolve().is_relative_to(REPO), f"{root} must be outside the checkout"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "installed.json"
        if done.exists():
            info = json.loads(done.read_text())
            return Installed(Path(info["wheel"]), Path(info["venv"]), Path(info["work"]), info["timings"])
        result = _build_and_install(root)
        done.write_text(json.dumps({"wheel": str(result.wheel), "venv": str(result.venv),
                                    "work": str(result.work), "timings": result.timings}))
        return result


# --------------------------------------------------------------------------- the wheel


def test_wheel_carries_the_crd_byte_for_byte_and_the_console_script(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        assert whl.read("fillprob_operator/crds/fillprobrollouts.grinder.io.yaml") == CRD.read_bytes()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "kubectl-fillprob = fillprob_operator.cli:main" in whl.read(entry_points).decode()
    assert installed.wheel.name.startswith(f"fillprob_operator-{_project()['version']}-")


def test_installed_package_is_the_venvs_not_the_checkout(installed):
    code = ("import json, fillprob_operator, fillprob_operator.validation as v; "
            "print(json.dumps([fillprob_operator.__file__, str(v.DEFAULT_CRD_PATH)]))")
    proc = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          cwd=installed.work, env=installed.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    module, crd = (Path(p) for p in json.loads(proc.stdout))
    assert module.is_relative_to(installed.venv) and not module.is_relative_to(REPO)
    assert crd.is_relative_to(installed.venv) and crd.read_bytes() == CRD.read_bytes()


# --------------------------------------------------------------------------- the plugin


def test_version_prints_the_package_and_crd_api_versions(installed):
    proc = installed.run("version")
    assert proc.returncode == cli.EXIT_OK, proc.stderr
    assert proc.stdout.splitlines()[0] == f"kubectl-fillprob {_project()['version']}"
    crd = yaml.safe_load(CRD.read_text())
    storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    assert f"API:    {crd['spec']['group']}/{storage} FillProbRollout" in proc.stdout
    as_json = json.loads(installed.run("version", "-o", "json").stdout)
    assert as_json["version"] == _project()["version"]
    assert as_json["crd"]["apiVersion"] == f"grinder.io/{storage}"
    assert Path(as_json["crd"]["file"]).is_relative_to(installed.venv)
    assert installed.run("--version").stdout.strip() == f"kubectl-fillprob {_project()['version']}"


def test_plan_on_a_valid_manifest_prints_the_plan(installed):
    manifest = installed.work / "rollout.yaml"
    shutil.copy(EXAMPLE, manifest)
    proc = installed.run("plan", "-f", manifest.name)  # relative to the cwd outside the checkout
    assert proc.returncode == cli.EXIT_OK, proc.stderr
    assert "FillProbRollout grinder: valid" in proc.stdout
    assert "GRINDER_FILL_PROB_AUTO_THRESHOLD=1" in proc.stdout
    assert "R3: GRINDER_FILL_PROB_AUTO_THRESHOLD=0" in proc.stdout
    assert "Traceback" not in proc.stderr
    # stdin, as a pipeline in a CI job would use it
    piped = subprocess.run([str(installed.plugin), "plan", "-f", "-"], input=EXAMPLE.read_text(),
                           capture_output=True, text=True, cwd=installed.work, env=installed.env(), timeout=120)
    assert piped.returncode == cli.EXIT_OK and "FillProbRollout grinder: valid" in piped.stdout, piped.stderr


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.pop("canarySymbols"),  # a CEL rule
        lambda s: s.update(targetPhase="Everything"),  # the schema's enum
        lambda s: s.update(canaryymbols=["SYM1"]),  # strict decoding
    ],
    ids=["cel-rule", "enum", "unknown-field"],
)
def test_plan_on_an_invalid_manifest_gives_the_api_servers_message_and_exit_2(installed, mutate, request):
    doc = yaml.safe_load(EXAMPLE.read_text())
    mutate(doc["spec"])
    # A file of its own: the cases run side by side (xdist) in the one shared work directory.
    manifest = installed.work / f"invalid-{request.node.callspec.id}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    proc = installed.run("plan", "-f", manifest.name)
    assert proc.returncode == cli.EXIT_INVALID, proc.stderr
    expected = invalid_message("FillProbRollout.grinder.io", "grinder", validate_manifest(doc))
    assert proc.stderr.strip() == f"{manifest.name}: {expected}"
    assert "Traceback" not in proc.stderr


def test_status_and_rollback_without_a_cluster_exit_4_with_one_error_line(installed):
    for args in (("status",), ("status", "grinder", "-n", "demo"), ("rollback", "grinder", "R3", "--reason", "ci")):
        proc = installed.run(*args)
        assert proc.returncode == cli.EXIT_UNREACHABLE, (args, proc.stderr)
        assert proc.stderr.startswith("error: no cluster configured") and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_status_and_rollback_against_an_unreachable_server_exit_4(installed):
    kubeconfig = installed.work / "unreachable.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u", "namespace": "demo"}}],
    }))
    for args in (("status", "grinder"), ("rollback", "grinder", "R1", "--reason", "ci")):
        proc = installed.run(*args, "--request-timeout", "5", KUBECONFIG=str(kubeconfig))
        assert proc.returncode == cli.EXIT_UNREACHABLE, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr


def test_krew_shim_runs_the_installed_wheel(installed):
    """The krew archive's shim (krew/kubectl-fillprob) with FILLPROB_PYTHON = the wheel's venv."""
    shim = installed.work / "krew-shim" / "kubectl-fillprob"
    shim.parent.mkdir(exist_ok=True)
    shutil.copy2(REPO / "krew" / "kubectl-fillprob", shim)
    manifest = installed.work / "rollout-krew.yaml"  # not the plan test's file: they run side by side
    shutil.copy(EXAMPLE, manifest)
    env = installed.env(FILLPROB_PYTHON=str(installed.venv / "bin" / "python"), PATH="/usr/bin:/bin")
    for args, code, text in ((("version",), 0, f"kubectl-fillprob {_project()['version']}"),
                             (("plan", "-f", manifest.name), 0, "FillProbRollout grinder: valid"),
                             (("status",), cli.EXIT_UNREACHABLE, "")):
        proc = subprocess.run([str(shim), *args], capture_output=True, text=True, cwd=installed.work, env=env,
                              timeout=120)
        assert proc.returncode == code, (args, proc.stderr)
        assert text in proc.stdout and "Traceback" not in proc.stderr
