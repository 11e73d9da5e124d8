"""The images' Dockerfiles say what TESTBED.md ("Images") and the chart rely on.

The images themselves run on the testbed's node (tests/e2e/test_testbed_node.py runs the
simulator's ENTRYPOINT restricted; tests/e2e/test_chart.py runs the operator's under the chart's
securityContext); these checks keep the files and the versions in step without a build.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def last(path: Path, word: str) -> str:
    return [rest for w, rest in instructions(path) if w == word][-1]


def arg_default(path: Path, name: str) -> str:
    for w, rest in instructions(path):
        if w == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1].strip('"')
    raise AssertionError(f"{path.name}: no ARG {name}=...")


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_operator_image_runs_the_operator_as_a_non_root_uid():
    dockerfile = REPO / "Dockerfile"
    assert json.loads(last(dockerfile, "ENTRYPOINT")) == ["python3", "-m", "fillprob_operator"]
    user = last(dockerfile, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user}: numeric and non-root (runAsNonRoot checks the number)"
    # The chart's runAsUser is the same uid: the passwd entry kopf needs is the image's.
    chart = (REPO / "charts/fillprob-operator/templates/deployment.yaml").read_text()
    assert f"runAsUser: {user.split(':')[0]}" in chart
    assert arg_default(dockerfile, "BASE") == "python:3.11-slim"


def test_operator_image_version_is_the_project_and_chart_version():
    chart = yaml.safe_load((REPO / "charts/fillprob-operator/Chart.yaml").read_text())
    assert arg_default(REPO / "Dockerfile", "VERSION") == project_version() == chart["appVersion"]
    labels = " ".join(rest for w, rest in instructions(REPO / "Dockerfile") if w == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_simulator_image_starts_the_simulator_without_a_command():
    dockerfile = REPO / "sim/grinder/Dockerfile"
    entrypoint = json.loads(last(dockerfile, "ENTRYPOINT"))
    assert entrypoint[0] == "python3" and entrypoint[-1].endswith("grinder_sim.py"), entrypoint
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", last(dockerfile, "USER"))
    assert arg_default(dockerfile, "BASE") == "python:3.11-slim"
    copied = " ".join(rest for w, rest in instructions(dockerfile) if w == "COPY")
    assert "preflight_fill_prob.py" in copied  # the preflight Job runs from this image


def test_lock_pins_every_runtime_dependency_at_pyprojects_version():
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.lock: {line} is not pinned with =="
            pins[req.name.lower().replace("_", "-")] = spec.version
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} (pyproject.toml) is missing from requirements.lock"
        assert pins[name] in req.specifier, f"requirements.lock pins {name}=={pins[name]}, pyproject wants {req.specifier}"
