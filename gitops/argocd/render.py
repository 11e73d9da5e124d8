#!/usr/bin/env python3
"""Render argocd-cm-patch.yaml from health.lua and actions/ (the Lua is the source of truth).

    python3 gitops/argocd/render.py          # rewrite argocd-cm-patch.yaml
    python3 gitops/argocd/render.py --check  # exit 1 when it is out of date (CI)

Stdlib only: the Lua goes into a YAML literal block scalar (`|`), which keeps it byte for byte
as long as it ends with exactly one newline and has no tabs in its indentation. The actions key
holds YAML itself (Argo CD's `discovery.lua` + `definitions`), with the scripts as nested block
scalars.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = HERE / "health.lua"
ACTIONS = HERE / "actions"
PATCH = HERE / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.grinder.io_FillProbRollout"
ACTIONS_KEY = "resource.customizations.actions.grinder.io_FillProbRollout"
# The order the actions are defined in argocd-cm (each is actions/<name>/action.lua).
ACTION_NAMES = ("suspend", "resume", "rollback-r1", "rollback-r2", "rollback-r3")

HEADER = """\
# GENERATED from gitops/argocd/health.lua and gitops/argocd/actions/ by gitops/argocd/render.py:
# edit the .lua files, then run
#   python3 gitops/argocd/render.py
# Argo CD custom health check and resource actions for grinder.io/FillProbRollout. Apply them
# to Argo CD's argocd-cm:
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file gitops/argocd/argocd-cm-patch.yaml
# or list this file as a patch in the kustomization that installs Argo CD.
"""


def _check(name: str, lua: str) -> None:
    if not lua.endswith("\n") or lua.endswith("\n\n"):
        raise ValueError(f"{name} must end with exactly one newline")
    for number, line in enumerate(lua.splitlines(), 1):
        if line.startswith("\t"):
            raise ValueError(f"{name}:{number}: indent with spaces, not tabs (YAML block scalar)")


def _block(text: str, indent: int) -> str:
    pad = " " * indent
    return "".join(f"{pad}{line}\n" if line else "\n" for line in text.splitlines())


def actions_yaml(discovery: str, actions: dict[str, str]) -> str:
    """The value of the actions key: Argo CD's ResourceActions (discovery.lua, definitions)."""
    _check("actions/discovery.lua", discovery)
    out = "discovery.lua: |\n" + _block(discovery, 2) + "definitions:\n"
    for name, lua in actions.items():
        _check(f"actions/{name}/action.lua", lua)
        out += f"- name: {name}\n  action.lua: |\n" + _block(lua, 4)
    return out


def read_actions() -> tuple[str, dict[str, str]]:
    discovery = (ACTIONS / "discovery.lua").read_text(encoding="utf-8")
    return discovery, {n: (ACTIONS / n / "action.lua").read_text(encoding="utf-8") for n in ACTION_NAMES}


def render(lua: str, discovery: str | None = None, actions: dict[str, str] | None = None) -> str:
    _check("health.lua", lua)
    if discovery is None or actions is None:
        discovery, actions = read_actions()
    return (
        HEADER
        + "apiVersion: v1\n"
        + "kind: ConfigMap\n"
        + "metadata:\n"
        + "  name: argocd-cm\n"
        + "  namespace: argocd\n"
        + "  labels:\n"
        + "    app.kubernetes.io/name: argocd-cm\n"
        + "    app.kubernetes.io/part-of: argocd\n"
        + "data:\n"
        + f"  {KEY}: |\n"
        + _block(lua, 4)
        + f"  {ACTIONS_KEY}: |\n"
        + _block(actions_yaml(discovery, actions), 4)
    )


def main(argv: list[str]) -> int:
    wanted = render(LUA.read_text(encoding="utf-8"))
    if "--check" in argv:
        current = PATCH.read_text(encoding="utf-8") if PATCH.exists() else ""
        if current != wanted:
            print(f"{PATCH.name} is out of date with {LUA.name} or actions/: run python3 gitops/argocd/render.py",
                  file=sys.stderr)
            return 1
        print(f"{PATCH.name} is up to date")
        return 0
    PATCH.write_text(wanted, encoding="utf-8")
    print(f"wrote {PATCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
