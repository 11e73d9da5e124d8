"""krew/fillprob.yaml: valid per krew's own checks (sigs.k8s.io/krew pkg/index/validation:
ValidatePlugin/validatePlatform/validateSelector) and in step with the package (name, version,
bin = the console script, the wheel's file name); and the shim it installs (krew/kubectl-fillprob)
runs the plugin, or says what it needs."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from fillprob_operator import cli

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "krew" / "fillprob.yaml"
SHIM = REPO / "krew" / "kubectl-fillprob"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# krew's semver.Parse: a "v" prefix is required, then semver 2.0.
SEMVER = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
WINDOWS_FORBIDDEN = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_manifest_passes_krews_validation():
    plugin = manifest()
    assert plugin["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert plugin["kind"] == "Plugin"
    name = plugin["metadata"]["name"]
    assert re.fullmatch(r"[\w-]+", name) and name.lower() not in WINDOWS_FORBIDDEN
    assert MANIFEST.stem == name  # krew: the manifest file is named after the plugin
    spec = plugin["spec"]
    assert spec["shortDescription"].strip()
    assert SEMVER.match(spec["version"]), spec["version"]
    assert spec["platforms"]
    assert set(spec) <= {"version", "homepage", "shortDescription", "description", "caveats", "platforms"}
    for platform in spec["platforms"]:
        assert set(platform) <= {"selector", "uri", "sha256", "bin", "files"}
        assert platform["uri"].startswith("https://")
        assert re.fullmatch(r"[a-f0-9]{64}", platform["sha256"])
        assert platform["bin"]
        assert platform["files"] and all(set(f) == {"from", "to"} for f in platform["files"])
        selector = platform["selector"]
        assert selector and set(selector) <= {"matchLabels", "matchExpressions"}
        keys = list(selector.get("matchLabels") or {}) + [e["key"] for e in selector.get("matchExpressions") or []]
        assert keys and set(keys) <= {"os", "arch"}


def test_manifest_matches_the_package():
    spec = manifest()["spec"]
    assert manifest()["metadata"]["name"] == "fillprob"  # `kubectl fillprob`
    assert spec["version"] == f"v{PROJECT['version']}"
    console_script = next(iter(PROJECT["scripts"]))
    wheel = f"fillprob_operator-{PROJECT['version']}-py3-none-any.whl"
    archive = f"kubectl-fillprob-v{PROJECT['version']}.tar.gz"
    oses = set()
    for platform in spec["platforms"]:
        assert platform["bin"] == console_script == "kubectl-fillprob"
        assert platform["uri"].endswith(f"/v{PROJECT['version']}/{archive}")
        assert {f["from"] for f in platform["files"]} == {"kubectl-fillprob", wheel}
        oses.add(platform["selector"]["matchLabels"]["os"])
    assert oses == {"linux", "darwin"}  # the shim is POSIX sh: no Windows entry
    assert f"store/fillprob/v{PROJECT['version']}/{wheel}" in spec["caveats"]
    assert "3.11" in spec["caveats"] and PROJECT["requires-python"] == ">=3.11"
    assert len({p["sha256"] for p in spec["platforms"]}) == 1  # one archive for every platform


def test_shim_runs_the_plugin_with_the_python_it_is_given(tmp_path):
    assert SHIM.stat().st_mode & stat.S_IXUSR
    env = {"PATH": "/usr/bin:/bin", "FILLPROB_PYTHON": sys.executable, "KUBECONFIG": "/nonexistent"}
    proc = subprocess.run([str(SHIM), "version"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"kubectl-fillprob {PROJECT['version']}\n")
    proc = subprocess.run([str(SHIM), "status"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == cli.EXIT_UNREACHABLE  # exit codes pass through


def test_shim_without_the_package_says_how_to_install_it(tmp_path):
    no_site = tmp_path / "python-no-site"  # python >= 3.11 that cannot import fillprob_operator
    no_site.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    no_site.chmod(0o755)
    link_dir = tmp_path / "bin"
    link_dir.mkdir()
    (link_dir / "kubectl-fillprob").symlink_to(SHIM)  # as krew links it
    env = {"PATH": "/usr/bin:/bin", "FILLPROB_PYTHON": str(no_site)}
    proc = subprocess.run([str(link_dir / "kubectl-fillprob"), "version"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert "fillprob-operator package is not installed" in proc.stderr and "pip install" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([str(SHIM), "version"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "FILLPROB_PYTHON": str(tmp_path / "nope")})
    assert proc.returncode == 1 and "needs python3 >= 3.11" in proc.stderr


def test_archive_script_names_what_the_manifest_installs():
    script = (REPO / "scripts" / "krew-archive.sh").read_text()
    assert "kubectl-fillprob-v$version.tar.gz" in script
    assert '"$repo/krew/kubectl-fillprob"' in script and "fillprob_operator-\"$version\"-*.whl" in script
    assert os.access(REPO / "scripts" / "krew-archive.sh", os.X_OK)
