"""procnode: a container's env and command, built the way the kubelet builds them."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode.envbuild import (  # noqa: E402
    ContainerConfigError,
    PodFacts,
    container_env,
    decode_secret_data,
    expand_command,
    kubernetes_service_env,
    parse_quantity,
    process_env,
)

SERVICE = kubernetes_service_env("127.0.0.1", 6443)
CONFIGMAPS = {("ns1", "settings"): {"MODE": "auto_apply", "LEVEL": "3", "bad=key": "x"}}
SECRETS = {("ns1", "creds"): decode_secret_data({"TOKEN": base64.b64encode(b"s3cret").decode()})}


def pod(containers: list[dict] | None = None) -> dict:
    return {
        "metadata": {"name": "web-0", "namespace": "ns1", "uid": "u-1", "labels": {"app": "web"}, "annotations": {"a/b": "c"}},
        "spec": {"nodeName": "procnode", "serviceAccountName": "runner", "containers": containers or [{"name": "main"}]},
    }


def build(container: dict, the_pod: dict | None = None) -> dict[str, str]:
    facts = PodFacts(the_pod or pod([container]), pod_ip="127.1.0.7", node_allocatable={"cpu": "8", "memory": "32Gi"})
    return container_env(
        facts, container, service_env=SERVICE,
        configmap=lambda ns, name: CONFIGMAPS.get((ns, name)), secret=lambda ns, name: SECRETS.get((ns, name)),
    )  # fmt: skip


def test_service_env_matches_kubelet_names() -> None:
    assert SERVICE["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert SERVICE["KUBERNETES_SERVICE_PORT"] == "6443"
    assert SERVICE["KUBERNETES_PORT"] == "tcp://127.0.0.1:6443"
    assert SERVICE["KUBERNETES_PORT_6443_TCP_ADDR"] == "127.0.0.1"


def test_values_expand_against_earlier_vars_and_service_env_only() -> None:
    env = build({"name": "main", "env": [
        {"name": "A", "value": "a"},
        {"name": "B", "value": "$(A)-$(LATER)-$(KUBERNETES_SERVICE_PORT)-$$(A)"},
        {"name": "LATER", "value": "late"},
        {"name": "EMPTY", "value": ""},
    ]})  # fmt: skip
    assert env["B"] == "a-$(LATER)-6443-$(A)"
    assert env["EMPTY"] == ""


def test_field_refs() -> None:
    refs = {
        "NAME": "metadata.name", "NS": "metadata.namespace", "UID": "metadata.uid", "IP": "status.podIP",
        "IPS": "status.podIPs", "HOST": "status.hostIP", "NODE": "spec.nodeName", "SA": "spec.serviceAccountName",
        "APP": "metadata.labels['app']", "ANN": "metadata.annotations['a/b']",
    }  # fmt: skip
    env = build({"name": "main", "env": [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in refs.items()]})
    assert {k: env[k] for k in refs} == {
        "NAME": "web-0", "NS": "ns1", "UID": "u-1", "IP": "127.1.0.7", "IPS": "127.1.0.7", "HOST": "127.0.0.1",
        "NODE": "procnode", "SA": "runner", "APP": "web", "ANN": "c",
    }  # fmt: skip


def test_field_ref_values_are_not_expanded() -> None:
    the_pod = pod([{"name": "main"}])
    the_pod["metadata"]["annotations"]["x"] = "$(A)"
    env = build({"name": "main", "env": [{"name": "A", "value": "a"},
                                         {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['x']"}}}]}, the_pod)  # fmt: skip
    assert env["X"] == "$(A)"


def test_configmap_and_secret_key_refs() -> None:
    env = build({"name": "main", "env": [
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODE"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "X", "optional": True}}},
        {"name": "OPTKEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "NOPE", "optional": True}}},
    ]})  # fmt: skip
    assert env["MODE"] == "auto_apply"
    assert env["TOKEN"] == "s3cret"
    assert "OPT" not in env and "OPTKEY" not in env


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "K"}}}, 'configmap "missing" not found'),
        ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "NOPE"}}}, "couldn't find key NOPE in secret ns1/creds"),
        ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}, "unsupported fieldRef"),
    ],
)
def test_missing_required_sources_are_config_errors(var: dict, message: str) -> None:
    with pytest.raises(ContainerConfigError, match=message):
        build({"name": "main", "env": [var]})


def test_env_from_prefix_order_and_override() -> None:
    env = build({
        "name": "main",
        "envFrom": [
            {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
            {"configMapRef": {"name": "missing", "optional": True}},
        ],
        "env": [{"name": "CFG_LEVEL", "value": "override-$(CFG_MODE)"}],
    })  # fmt: skip
    assert env["CFG_MODE"] == "auto_apply"
    assert env["CFG_LEVEL"] == "override-auto_apply"
    assert env["TOKEN"] == "s3cret"
    assert "CFG_bad=key" not in env


def test_env_from_missing_required_source() -> None:
    with pytest.raises(ContainerConfigError, match='secret "nope" not found'):
        build({"name": "main", "envFrom": [{"secretRef": {"name": "nope"}}]})


def test_container_env_overrides_service_env() -> None:
    env = build({"name": "main", "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "10.0.0.1"}]})
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"


def test_resource_field_refs_use_limits_or_node_allocatable() -> None:
    container = {
        "name": "main",
        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m"}},
        "env": [
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        ],
    }
    env = build(container)
    assert (env["MEM"], env["CPU"], env["REQ"]) == ("512", "8", "250")


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("250m", 0.25), ("1Ki", 1024), ("2Gi", 2 * 2**30), ("1e3", 1000), ("1k", 1000)])
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == value


def test_command_and_args_expand_against_the_container_env() -> None:
    container = {
        "name": "main",
        "command": ["python3", "app.py", "--name=$(NAME)"],
        "args": ["--port", "$(KUBERNETES_SERVICE_PORT)", "$$(NAME)", "$(NOPE)"],
        "env": [{"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    }
    env = build(container)
    assert expand_command(container, env) == ["python3", "app.py", "--name=web-0", "--port", "6443", "$(NAME)", "$(NOPE)"]


def test_runtime_layer_is_overridable_but_not_expandable() -> None:
    runtime = {"PATH": "/repo/.venv/bin:/usr/bin", "HOSTNAME": "web-0", "POD_IP": "127.1.0.7"}
    container = {"name": "main", "command": ["echo", "$(POD_IP)"], "env": [{"name": "PATH", "value": "/custom"}]}
    env = build(container)
    assert expand_command(container, env) == ["echo", "$(POD_IP)"]  # as in Kubernetes: only declared vars
    final = process_env(runtime, env)
    assert final["PATH"] == "/custom"
    assert final["POD_IP"] == "127.1.0.7"
    assert final["HOSTNAME"] == "web-0"
