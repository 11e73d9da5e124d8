"""Argo CD's own Lua runtime over the health check and resource actions (gitops/argocd/luatest).

Argo CD runs a resource customization from argocd-cm in gopher-lua with only the base, table and
package libraries; lupa (test_argocd_health.py) opens every library and cannot catch a script
that needs one. This runs `go test ./...` in the Go module that mirrors Argo CD's VM. It needs the
`go` toolchain (go.mod's version or newer; GOTOOLCHAIN=local: no toolchain download) and, on a
cold module cache, the Go module proxy; it fails, never skips, when go is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

LUATEST = Path(__file__).resolve().parents[2] / "gitops" / "argocd" / "luatest"


def test_go_test_in_argo_cd_lua_runtime() -> None:
    go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if os.access(p, os.X_OK)), None)
    if go is None:
        pytest.fail(
            "go not found on PATH: the Argo CD Lua checks in gitops/argocd/luatest need the Go toolchain "
            "(https://go.dev/dl/, the version in its go.mod or newer)"
        )
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=readonly",  # go.mod and go.sum are committed: never rewritten here
        "GOWORK": "off",
        "CGO_ENABLED": "0",
    }
    done = subprocess.run(
        [go, "test", "-count=1", "-p=1", "./..."],
        cwd=LUATEST,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"go test in {LUATEST} failed:\n{done.stdout}\n{done.stderr}"
    assert "ok" in done.stdout, done.stdout
