"""The handbook keeps up with the code: every reason code has a troubleshooting row, every
spec field of the CRD is in the CRD reference. A new reason or field without docs fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from fillprob_operator.reconciler import INVALID_SPEC

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
REASONS_PY = REPO / "operator" / "fillprob_operator" / "domain" / "reasons.py"
CRD = REPO / "crds" / "fillprobrollouts.grinder.io.yaml"


def reason_constants() -> dict[str, str]:
    """Every string constant defined in a class of domain/reasons.py (Reason, Progress, and any
    class added later), read from the source so a new enum is covered without a test change."""
    tree = ast.parse(REASONS_PY.read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if (isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant)
                    and isinstance(item.value.value, str)):
                for target in item.targets:
                    if isinstance(target, ast.Name):
                        found[f"{node.name}.{target.id}"] = item.value.value
    return found


def table_keys(markdown: str) -> set[str]:
    """The first cell of every table row, when it is a single `code` span."""
    keys = set()
    for line in markdown.splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if match:
            keys.add(match.group(1))
    return keys


def spec_field_paths(schema: dict, prefix: str = "") -> list[str]:
    paths = []
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        paths.append(path)
        if sub.get("type") == "object":
            paths += spec_field_paths(sub, path)
        elif sub.get("type") == "array" and (sub.get("items") or {}).get("type") == "object":
            paths += spec_field_paths(sub["items"], path)
    return paths


def crd_spec_fields() -> list[str]:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    fields = []
    for version in crd["spec"]["versions"]:
        fields += spec_field_paths(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    return sorted(set(fields))


def test_reasons_are_found() -> None:
    reasons = reason_constants()
    # Sanity: the parser sees API.md's 18 reasons and the progress reasons.
    assert "Reason.CIRCUIT_BREAKER_TRIPPED" in reasons and "Progress.STATUS_BEHIND" in reasons
    assert sum(1 for k in reasons if k.startswith("Reason.")) == 18


def test_troubleshooting_has_a_row_for_every_reason() -> None:
    rows = table_keys((DOCS / "troubleshooting.md").read_text(encoding="utf-8"))
    wanted = {**reason_constants(), "reconciler.INVALID_SPEC": INVALID_SPEC}
    missing = sorted(f"{value} ({name})" for name, value in wanted.items() if value not in rows)
    assert not missing, (
        "docs/troubleshooting.md has no table row for these reason codes "
        f"(add `| `<Reason>` | what it means | what the operator did | what you do next |`): {missing}"
    )


def test_crd_fields_are_found() -> None:
    fields = crd_spec_fields()
    assert "deploymentName" in fields and "gates.thresholdRange.minBps" in fields


@pytest.mark.parametrize("field", crd_spec_fields())
def test_crd_reference_names_every_spec_field(field: str) -> None:
    text = (DOCS / "crd-reference.md").read_text(encoding="utf-8")
    assert f"`spec.{field}`" in text, (
        f"docs/crd-reference.md does not document spec.{field} (add a row `spec.{field}` to the spec table)"
    )

