"""`kubectl fillprob version` / `--version`: the package version (importlib.metadata) and the API
version of the CRD shipped in the package; documented in --help and docs/plugin.md."""

from __future__ import annotations

import json
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from fillprob_operator import cli, validation

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_prints_the_package_version_and_the_crds_api(capsys):
    code, out, err = run(capsys, "version")
    assert code == cli.EXIT_OK, err
    lines = out.splitlines()
    assert lines[0] == f"kubectl-fillprob {PROJECT['version']}" == f"kubectl-fillprob {version(cli.DISTRIBUTION)}"
    assert lines[1].startswith("API:    grinder.io/v1alpha1 FillProbRollout (CRD fillprobrollouts.grinder.io")
    assert lines[2].startswith(f"CRD:    {validation.DEFAULT_CRD_PATH} (sha256 ")


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_version_as_json_or_yaml(capsys, output):
    code, out, _ = run(capsys, "version", "-o", output)
    assert code == 0
    info = json.loads(out) if output == "json" else yaml.safe_load(out)
    assert info["version"] == PROJECT["version"]
    assert info["crd"]["apiVersion"] == f"{cli.GROUP}/{cli.VERSION}"
    assert info["crd"]["servedVersions"] == ["v1alpha1"]
    assert info["crd"]["file"] == str(validation.DEFAULT_CRD_PATH)


def test_dash_dash_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"kubectl-fillprob {PROJECT['version']}"


def test_distribution_name_is_the_projects():
    assert cli.DISTRIBUTION == PROJECT["name"]
    assert PROJECT["scripts"]["kubectl-fillprob"] == "fillprob_operator.cli:main"


def test_version_is_in_help_and_docs(capsys):
    _, out, _ = run(capsys, "--help")
    assert "version" in out and "--version" in out
    code, out, _ = run(capsys, "version", "--help")
    assert code == 0 and "API of the CRD" in " ".join(out.split())
    doc = (REPO / "docs" / "plugin.md").read_text()
    assert "### `version [-o json|yaml]`" in doc and "kubectl fillprob version" in doc


def test_a_missing_packaged_crd_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(validation, "DEFAULT_CRD_PATH", tmp_path / "gone.yaml")
    code, _, err = run(capsys, "version")
    assert code == cli.EXIT_ERROR and err.startswith("error: CRD file not found") and "reinstall" in err
    manifest = tmp_path / "r.yaml"
    manifest.write_text((REPO / "examples" / "fillprobrollout.yaml").read_text())
    code, _, err = run(capsys, "plan", "-f", str(manifest))
    assert code == cli.EXIT_ERROR and err.startswith("error: CRD file not found")
