#!/usr/bin/env python3
"""Render argocd-cm-patch.yaml from health.lua (the Lua is the source of truth).

    python3 gitops/argocd/render.py          # rewrite argocd-cm-patch.yaml
    python3 gitops/argocd/render.py --check  # exit 1 when it is out of date (CI)

Stdlib only: the Lua goes into a YAML literal block scalar (`|`), which keeps it byte for byte
as long as it ends with exactly one newline and has no tabs in its indentation.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = HERE / "health.lua"
PATCH = HERE / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.grinder.io_FillProbRollout"

HEADER = """\
# GENERATED from gitops/argocd/health.lua by gitops/argocd/render.py: edit the .lua, then run
#   python3 gitops/argocd/render.py
# Argo CD custom health check for grinder.io/FillProbRollout. Apply it to Argo CD's argocd-cm:
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file gitops/argocd/argocd-cm-patch.yaml
# or list this file as a patch in the kustomization that installs Argo CD.
"""


def render(lua: str) -> str:
    if not lua.endswith("\n") or lua.endswith("\n\n"):
        raise ValueError("health.lua must end with exactly one newline")
    for number, line in enumerate(lua.splitlines(), 1):
        if line.startswith("\t"):
            raise ValueError(f"health.lua:{number}: indent with spaces, not tabs (YAML block scalar)")
    body = "".join(f"    {line}\n" if line else "\n" for line in lua.splitlines())
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
        + body
    )


def main(argv: list[str]) -> int:
    wanted = render(LUA.read_text(encoding="utf-8"))
    if "--check" in argv:
        current = PATCH.read_text(encoding="utf-8") if PATCH.exists() else ""
        if current != wanted:
            print(f"{PATCH.name} is out of date with {LUA.name}: run python3 gitops/argocd/render.py", file=sys.stderr)
            return 1
        print(f"{PATCH.name} is up to date")
        return 0
    PATCH.write_text(wanted, encoding="utf-8")
    print(f"wrote {PATCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
