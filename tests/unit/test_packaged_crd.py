"""The CRD ships in the package (fillprob_operator/crds/, package data of the wheel) and is the
canonical crds/ file byte for byte; validation.py reads that packaged copy.

`make chart-crds` (scripts/sync-chart-crds.sh) writes the copy; this fails when it is stale.
tests/integration/test_wheel.py checks that the built wheel carries it and works without a checkout.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import yaml

import fillprob_operator
from fillprob_operator import cli, validation

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(fillprob_operator.__file__).resolve().parent


def test_packaged_crds_are_the_canonical_crds_byte_for_byte():
    canonical = sorted((REPO / "crds").glob("*.yaml"))
    assert canonical
    for path in canonical:
        copy = PACKAGE / "crds" / path.name
        assert copy.exists(), f"{copy} missing: run make chart-crds"
        assert copy.read_bytes() == path.read_bytes(), f"{copy} differs from {path}: run make chart-crds"
    assert sorted(p.name for p in (PACKAGE / "crds").glob("*.yaml")) == [p.name for p in canonical]
    proc = subprocess.run([str(REPO / "scripts" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_validation_reads_the_packaged_crd():
    assert validation.DEFAULT_CRD_PATH.resolve() == PACKAGE / "crds" / validation.CRD_FILE
    assert not validation.DEFAULT_CRD_PATH.resolve().is_relative_to(REPO / "crds")
    assert validation.load_crd() == yaml.safe_load((REPO / "crds" / validation.CRD_FILE).read_text())


def test_pyproject_ships_the_crds_as_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "crds/*.yaml" in config["tool"]["setuptools"]["package-data"]["fillprob_operator"]


def test_the_plugins_api_constants_are_the_crds():
    crd = validation.load_crd()
    storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    assert (cli.GROUP, cli.VERSION, cli.PLURAL, cli.KIND) == (
        crd["spec"]["group"], storage, crd["spec"]["names"]["plural"], crd["spec"]["names"]["kind"])
