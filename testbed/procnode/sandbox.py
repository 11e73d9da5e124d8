"""A pod's "sandbox" on this node: its directory, volumes and ServiceAccount credentials.

Volumes: processes see the host filesystem, so a volume's `mountPath` is NOT remapped. An emptyDir
is a fresh directory under the pod dir (`<pod>/volumes/<name>`); a hostPath is checked/created per
its `type` at its own path (examples use mountPath == hostPath.path, so the path the process is
told is the path that exists). Other volume kinds are not materialized.

ServiceAccount: when the pod has the projected `kube-api-access-*` volume (the ServiceAccount
admission plugin adds it when automountServiceAccountToken is on) the node asks for a token bound to
the pod (TokenRequest, default audience) and writes `<pod>/serviceaccount/{token,ca.crt,namespace,
kubeconfig}`; the kubeconfig (server and CA of the node's own kubeconfig) carries the token, and the
containers get KUBECONFIG pointing at it. The token is renewed at 80% of its lifetime (24h at most).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from .kubeapi import Kube

log = logging.getLogger("procnode.sandbox")

TOKEN_SECONDS = 3607  # what the kube-api-access volume asks for


class MountError(Exception):
    """A volume cannot be set up yet (kubelet event FailedMount); the pod stays ContainerCreating."""


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def setup_volumes(pod: Mapping, pod_dir: Path) -> None:
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume.get("name", "")
        if "emptyDir" in volume:
            (pod_dir / "volumes" / name).mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            _host_path(name, volume["hostPath"])


def _host_path(name: str, spec: Mapping) -> None:
    path = Path(spec.get("path", ""))
    kind = spec.get("type") or ""
    checks = {
        "Directory": stat.S_ISDIR, "File": stat.S_ISREG, "Socket": stat.S_ISSOCK,
        "CharDevice": stat.S_ISCHR, "BlockDevice": stat.S_ISBLK,
    }  # fmt: skip
    if kind == "DirectoryOrCreate":
        if path.exists() and not path.is_dir():
            raise MountError(f'hostPath volume "{name}": {path} exists and is not a directory')
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        if path.exists() and not path.is_file():
            raise MountError(f'hostPath volume "{name}": {path} exists and is not a file')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o644, exist_ok=True)
    elif kind in checks:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as exc:
            raise MountError(f'hostPath type check failed: {path} is not a {kind} (volume "{name}")') from exc
        if not checks[kind](mode):
            raise MountError(f'hostPath type check failed: {path} is not a {kind} (volume "{name}")')
    elif kind:
        raise MountError(f'hostPath volume "{name}": unsupported type {kind!r}')


def token_volume(pod: Mapping) -> Mapping | None:
    """The serviceAccountToken source of the kube-api-access projected volume, if the pod has one."""
    for volume in pod.get("spec", {}).get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if token is not None and not token.get("audience"):
                return token
    return None


class ServiceAccountCredentials:
    def __init__(self, kube: Kube, pod: Mapping, pod_dir: Path) -> None:
        self.kube = kube
        meta = pod["metadata"]
        self.namespace, self.pod_name, self.pod_uid = meta["namespace"], meta["name"], meta["uid"]
        self.account = pod.get("spec", {}).get("serviceAccountName") or "default"
        source = token_volume(pod) or {}
        self.seconds = int(source.get("expirationSeconds") or TOKEN_SECONDS)
        self.dir = pod_dir / "serviceaccount"
        self.refresh_at = 0.0  # monotonic

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    def due(self) -> bool:
        return time.monotonic() >= self.refresh_at

    def refresh(self) -> None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": self.seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.pod_uid},
            },
        }
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{self.account}/token"
        answer = self.kube.request("POST", path, body=body, timeout=15) or {}
        token = answer.get("status", {}).get("token")
        if not token:
            raise RuntimeError(f"TokenRequest for {self.namespace}/{self.account} returned no token")
        self.dir.mkdir(parents=True, exist_ok=True)
        _write(self.dir / "token", token)
        _write(self.dir / "ca.crt", self.kube.ca_pem, 0o644)
        _write(self.dir / "namespace", self.namespace, 0o644)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": {"server": self.kube.server, "certificate-authority": str(self.dir / "ca.crt")}}],
            "users": [{"name": self.account, "user": {"token": token}}],
            "contexts": [{"name": "serviceaccount", "context": {"cluster": "testbed", "user": self.account, "namespace": self.namespace}}],
            "current-context": "serviceaccount",
        }
        _write(self.kubeconfig, yaml.safe_dump(config, sort_keys=False))
        self.refresh_at = time.monotonic() + min(0.8 * self.seconds, 24 * 3600)
        log.info("pod %s/%s: token for ServiceAccount %s written to %s", self.namespace, self.pod_name, self.account, self.dir)
