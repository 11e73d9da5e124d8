"""A container's environment, built the way the kubelet builds it (pure: lookups are injected).

Order (kubelet `makeEnvironmentVariables`): the service variables (here only the `kubernetes`
Service: KUBERNETES_SERVICE_HOST/PORT...) are known to `$(VAR)` expansion; `envFrom` sources are
added in order (not expanded, keys with `=` skipped, optional prefix); `env` entries follow in order,
each `value` expanded against what is defined so far; service variables not overridden come last.

The process also gets a small runtime layer (PATH, HOSTNAME, HOME, POD_IP, KUBECONFIG) that the
container's own `env` may override and that, like an image's ENV, `$(VAR)` expansion does not see.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from .expansion import expand, mapping_for

# (namespace, name) -> data, or None when the object does not exist.
Lookup = Callable[[str, str], "Mapping[str, str] | None"]


class ContainerConfigError(Exception):
    """The container cannot be configured yet (kubelet reason CreateContainerConfigError)."""


@dataclass(frozen=True)
class PodFacts:
    """What the env needs to know about a pod beyond its spec."""

    pod: Mapping  # the Pod as the API returns it (camelCase dict)
    pod_ip: str
    host_ip: str = "127.0.0.1"
    node_allocatable: Mapping[str, str] = field(default_factory=dict)


def kubernetes_service_env(host: str, port: int) -> dict[str, str]:
    """The variables the kubelet derives from the default `kubernetes` Service."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in (data or {}).items()}


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref_value(facts: PodFacts, path: str) -> str:
    pod = facts.pod
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
    }
    if path in simple:
        return simple[path]
    m = _SUBSCRIPT.match(path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")


_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$")


def parse_quantity(text: str | int | float) -> Fraction:
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ValueError(f"invalid quantity {text!r}")
    number = Fraction(m.group(1))
    if m.group(2) is not None:
        return number * Fraction(10) ** int(m.group(2))
    return number * _SUFFIX[m.group(3) or ""]


def resource_field_value(facts: PodFacts, container: Mapping, ref: Mapping) -> str:
    name = ref.get("containerName") or container.get("name")
    target = next((c for c in facts.pod.get("spec", {}).get("containers", []) if c.get("name") == name), container)
    kind, _, resource = ref.get("resource", "").partition(".")
    if kind not in ("limits", "requests") or not resource:
        raise ContainerConfigError(f"unsupported resourceFieldRef resource {ref.get('resource')!r}")
    resources = target.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "limits":
        value = facts.node_allocatable.get(resource)  # no limit: the node's allocatable (kubelet rule)
    quantity = parse_quantity(value) if value is not None else Fraction(0)
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        raise ContainerConfigError("resourceFieldRef divisor must not be 0")
    if resource == "cpu":  # kubelet: ceil(milli / divisor milli)
        return str(math.ceil(quantity * 1000 / (divisor * 1000)))
    return str(math.ceil(quantity / divisor))


def _key_ref(kind: str, ref: Mapping, namespace: str, lookup: Lookup) -> str | None:
    data = lookup(namespace, ref.get("name", ""))
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{ref.get("name", "")}" not found')
    if ref.get("key") not in data:
        if optional:
            return None
        raise ContainerConfigError(f'couldn\'t find key {ref.get("key")} in {kind} {namespace}/{ref.get("name", "")}')
    return data[ref["key"]]


def container_env(
    facts: PodFacts,
    container: Mapping,
    *,
    service_env: Mapping[str, str],
    configmap: Lookup,
    secret: Lookup,
) -> dict[str, str]:
    """The Kubernetes-defined env of one container (what `$(VAR)` in command/args may use)."""
    namespace = facts.pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = {}
    mapping = mapping_for(env, service_env)

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if "configMapRef" in source:
            ref, kind, lookup = source["configMapRef"], "configmap", configmap
        elif "secretRef" in source:
            ref, kind, lookup = source["secretRef"], "secret", secret
        else:
            continue
        data = lookup(namespace, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{ref.get("name", "")}" not found')
        for key, value in data.items():
            name = prefix + key
            if not name or "=" in name:
                continue  # invalid env var name: the kubelet skips it (with an event)
            env[name] = value

    for var in container.get("env") or []:
        name = var["name"]
        if var.get("value"):
            env[name] = expand(var["value"], mapping)
            continue
        source = var.get("valueFrom")
        if not source:
            env[name] = ""
            continue
        if "fieldRef" in source:
            env[name] = field_ref_value(facts, source["fieldRef"].get("fieldPath", ""))
        elif "resourceFieldRef" in source:
            env[name] = resource_field_value(facts, container, source["resourceFieldRef"])
        elif "configMapKeyRef" in source:
            value = _key_ref("configmap", source["configMapKeyRef"], namespace, configmap)
            if value is not None:
                env[name] = value
        elif "secretKeyRef" in source:
            value = _key_ref("secret", source["secretKeyRef"], namespace, secret)
            if value is not None:
                env[name] = value
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")

    for name, value in service_env.items():
        env.setdefault(name, value)
    return env


def process_env(runtime_env: Mapping[str, str], k8s_env: Mapping[str, str]) -> dict[str, str]:
    """What the process gets: the runtime layer, overridden by the container's own env."""
    return {**runtime_env, **k8s_env}


def expand_command(container: Mapping, k8s_env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded against the container's Kubernetes env."""
    mapping = mapping_for(k8s_env)
    return [expand(part, mapping) for part in (container.get("command") or []) + (container.get("args") or [])]
