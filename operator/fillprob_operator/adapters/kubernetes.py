"""The Kubernetes adapter: read the Deployment, patch its env, run the preflight Job.

Two halves. The module-level functions are pure: they take and return plain JSON-shaped
dicts (camelCase, as `kubectl get -o json` shows them) and are unit-tested on their own.
`KubernetesAdapter` does the I/O with the official client, every call in a thread with a
timeout, and turns `ApiException` into results: 404 -> None / absent, 409 on create -> fine,
anything else -> `KubernetesError` (the reconciler skips the tick and tries again).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import json
import logging
import os
import pickle
import socket
import ssl
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from kubernetes.client.exceptions import ApiException

from .clock import SystemClock
from .logs import IDLE_READ_SECONDS, KUBELET_LOG_FILE_ERROR, LogFollower
from .rest import RestApi
from .watches import (
    RESTART_TOKEN_ANNOTATION,
    WATCH_KEEPALIVE,
    CacheEntry,
    ClientSource,
    WatchCache,
    newer,
    project_deployment,
    project_job,
    project_pod,
    project_replica_set,
    project_rollout,
    restart_token,
    rv_int,
)
from ..domain.actions import EmitEvent, PatchEnv, RunPreflight
from ..domain.observations import (
    DeploymentObservation,
    JobState,
    PodStartup,
    PreflightObservation,
    RollbackRequest,
)

logger = logging.getLogger("fillprob_operator.kubernetes")

GROUP = "grinder.io"
VERSION = "v1alpha1"
PLURAL = "fillprobrollouts"
KIND = "FillProbRollout"
API_VERSION = f"{GROUP}/{VERSION}"

ROLLBACK_ANNOTATION = "grinder.io/rollback"
ROLLBACK_REASON_ANNOTATION = "grinder.io/rollback-reason"
# Alerts the Alertmanager receiver accepted, stored on the FillProbRollout until a tick has
# taken them (API.md, "Alert intake is durable"): one annotation per request key,
# `alert.grinder.io/<first 32 hex of sha256(key)>`, the request as compact JSON.
ALERT_ANNOTATION_PREFIX = "alert.grinder.io/"
ALERT_REASON = "AlertFired"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
POD_TEMPLATE_HASH = "pod-template-hash"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
PREFLIGHT_CONTAINER = "preflight"
MANAGED_BY = {"app.kubernetes.io/managed-by": "fillprob-operator"}

PREFLIGHT_LOG_BYTES = 64 * 1024
PREFLIGHT_TTL_SECONDS = 24 * 3600


class KubernetesError(Exception):
    """The API server did not answer usefully (unreachable, timeout, 5xx, forbidden).

    `status` is the HTTP status when the API server answered, None when it did not (unreachable,
    timed out): a caller with more to write may go on after an answer, not after silence.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------
# Pure helpers on JSON-shaped objects
# --------------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    return bool(uid) and any(ref.get("uid") == uid for ref in _meta(obj).get("ownerReferences") or ())


def pod_template_spec(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}


def managed_container(deployment: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
    """The named container, or the first one when no name is given (API.md `containerName`)."""
    containers = pod_template_spec(deployment).get("containers") or []
    if not name:
        return containers[0] if containers else None
    return next((c for c in containers if c.get("name") == name), None)


def env_literals(container: Mapping[str, Any]) -> dict[str, str | None]:
    """Literal env values; an entry with `valueFrom` maps to None (its value is not ours to read)."""
    env: dict[str, str | None] = {}
    for entry in container.get("env") or ():
        env[entry["name"]] = None if entry.get("valueFrom") else entry.get("value", "")
    return env


def _list_key(key: str) -> Mapping[str, Any] | None:
    """The identity of a list element in a managedFields path: `k:{"name":"X"}` -> {"name": "X"}.

    The API server writes the JSON with its own key order and spacing: parse it, never compare text.
    """
    if not key.startswith("k:"):
        return None
    try:
        value = json.loads(key[2:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _element(fields: Mapping[str, Any], list_field: str, name: str) -> Mapping[str, Any] | None:
    """The fieldsV1 subtree of the list element `name` (merge key `name`) under `f:<list_field>`."""
    for key, sub in ((fields.get(f"f:{list_field}") or {}).items()):
        identity = _list_key(key)
        if identity is not None and identity.get("name") == name:
            return sub if isinstance(sub, Mapping) else {}
    return None


def _managed_time(entry: Mapping[str, Any]) -> datetime:
    """A managedFields entry's `time`; an entry without one counts as the oldest."""
    try:
        when = datetime.fromisoformat(str(entry.get("time") or "").replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def env_managers(deployment: Mapping[str, Any], container_name: str) -> dict[str, str]:
    """Who last set each env entry of the container: env key -> the field manager of the newest
    `managedFields` entry (by `time`) owning that entry's value; "" when no entry owns it (API.md,
    "Env changed by someone else": the operator records who).

    The value, not the entry: an Update manager keeps owning the `.` and `f:name` of entries it
    sent unchanged (`kubectl set env A=1` owns B's name too), so the newest owner of the entry
    itself is often not who set its value. An entry whose value nobody owns (the API server
    drops `value: ""`) falls back to the newest owner of the entry.
    """
    container = managed_container(deployment, container_name)
    keys = [e["name"] for e in (container or {}).get("env") or ()]
    value_owner: dict[str, tuple[datetime, str]] = {}
    entry_owner: dict[str, tuple[datetime, str]] = {}
    for entry in _meta(deployment).get("managedFields") or ():
        fields = entry.get("fieldsV1") or {}
        pod_spec = (((fields.get("f:spec") or {}).get("f:template") or {}).get("f:spec")) or {}
        owned_container = _element(pod_spec, "containers", container_name)
        if not owned_container:
            continue
        seen = (_managed_time(entry), str(entry.get("manager") or ""))
        for key in keys:
            owned = _element(owned_container, "env", key)
            if owned is None:
                continue
            newest = value_owner if ("f:value" in owned or "f:valueFrom" in owned) else entry_owner
            if key not in newest or seen[0] >= newest[key][0]:
                newest[key] = seen
    return {key: (value_owner.get(key) or entry_owner.get(key) or (None, ""))[1] for key in keys}


def restart_token_at(deployment: Mapping[str, Any]) -> datetime | None:
    """When the restart token reached the Deployment: the time of the newest `managedFields`
    entry owning the annotation (progressDeadline counts from there, API.md Everyday change)."""
    newest: datetime | None = None
    for entry in _meta(deployment).get("managedFields") or ():
        fields = entry.get("fieldsV1") or {}
        template_meta = (((fields.get("f:spec") or {}).get("f:template") or {}).get("f:metadata")) or {}
        if f"f:{RESTART_TOKEN_ANNOTATION}" not in (template_meta.get("f:annotations") or {}):
            continue
        at = _managed_time(entry)
        if entry.get("time") and (newest is None or at > newest):
            newest = at
    return newest


def alert_annotation_name(key: str) -> str:
    """`alert.grinder.io/<first 32 hex chars of sha256(key)>`: a valid annotation name for any
    key, the same for every re-send of one alert (a re-send re-writes the same annotation)."""
    return ALERT_ANNOTATION_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def is_alert_annotation(name: str) -> bool:
    return name.startswith(ALERT_ANNOTATION_PREFIX)


def encode_rollback_request(request: RollbackRequest) -> str:
    """The annotation value: compact JSON, keys sorted, so a re-send writes the same bytes."""
    return json.dumps(
        {"playbook": request.playbook, "reason": request.reason, "source": request.source,
         "evidence": dict(request.evidence), "key": request.key},
        sort_keys=True, separators=(",", ":"),
    )


def decode_rollback_request(name: str, value: Any) -> RollbackRequest:
    """An alert annotation back into the request the receiver stored; ValueError when it is not
    one. Anyone who may patch the rollout may write these annotations: only the shape the
    receiver writes is let through (an alert, R1/R2/R3 or the table's, flat string evidence),
    so a hand-made value can never pose as a manual rollback nor break the status write."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    fields = {f: data.get(f) for f in ("playbook", "reason", "source", "key")}
    if not all(isinstance(v, str) for v in fields.values()):
        raise ValueError("playbook, reason, source and key must be strings")
    if fields["playbook"] not in ("", "R1", "R2", "R3"):
        raise ValueError(f"playbook {fields['playbook'][:20]!r}: want R1, R2, R3 or empty")
    if fields["reason"] != ALERT_REASON:
        raise ValueError(f"reason {fields['reason'][:40]!r}: want {ALERT_REASON}")
    if not fields["key"].startswith("alert:") or alert_annotation_name(fields["key"]) != name:
        raise ValueError("key is not an alert key, or not the one this annotation is named after")
    evidence = data.get("evidence", {})
    if not isinstance(evidence, dict) or not all(
        isinstance(v, str) or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values()))
        for v in evidence.values()
    ):
        raise ValueError("evidence must map to strings or to objects of strings")
    return RollbackRequest(
        playbook=fields["playbook"], reason=fields["reason"], source=fields["source"],
        evidence=evidence, key=fields["key"],
    )


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or () if c.get("type") == type_),
        None,
    )


def rollout_status(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """Finished exactly as `kubectl rollout status` means it (kubectl's DeploymentStatusViewer)."""
    name = _meta(deployment).get("name", "")
    generation = _meta(deployment).get("generation") or 0
    status = deployment.get("status") or {}
    if generation > (status.get("observedGeneration") or 0):
        return False, "Waiting for deployment spec update to be observed"
    progressing = _condition(deployment, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return False, f"deployment {name!r} exceeded its progress deadline"
    desired = (deployment.get("spec") or {}).get("replicas", 1)
    updated = status.get("updatedReplicas") or 0
    replicas = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if updated < desired:
        return False, f"{updated} out of {desired} new replicas have been updated"
    if replicas > updated:
        return False, f"{replicas - updated} old replicas are pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas are available"
    return True, f"deployment {name!r} successfully rolled out"


def _revision(obj: Mapping[str, Any]) -> int:
    try:
        return int((_meta(obj).get("annotations") or {}).get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def newest_replica_set(
    deployment: Mapping[str, Any], replica_sets: Iterable[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The Deployment's ReplicaSet with the highest `deployment.kubernetes.io/revision`."""
    owned = [rs for rs in replica_sets if _owned_by(rs, _meta(deployment).get("uid"))]
    return max(owned, key=_revision, default=None)


def _newest_of(uid: str, replica_sets: Iterable[Mapping[str, Any]]) -> tuple[str | None, str | None, str | None] | None:
    """The Deployment `uid`'s newest ReplicaSet as (its uid, its pod-template-hash label or None,
    its restart token), or None (`newest_replica_set`)."""
    newest = newest_replica_set({"metadata": {"uid": uid}}, replica_sets)
    if newest is None:
        return None
    return (_meta(newest).get("uid"), (_meta(newest).get("labels") or {}).get(POD_TEMPLATE_HASH),
            restart_token(newest))


def replica_set_pods(
    replica_set: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Live pods of that ReplicaSet (owned by it, same pod-template-hash), oldest first."""
    return _pods_of(_meta(replica_set).get("uid"), (_meta(replica_set).get("labels") or {}).get(POD_TEMPLATE_HASH), pods)


def _pods_of(uid: str | None, rs_hash: str | None, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    selected = [
        pod
        for pod in pods
        if _owned_by(pod, uid)
        and (_meta(pod).get("labels") or {}).get(POD_TEMPLATE_HASH) == rs_hash
        and not _meta(pod).get("deletionTimestamp")
    ]
    return sorted(selected, key=lambda p: (_meta(p).get("creationTimestamp") or "", _meta(p)["name"]))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    ready = _condition(pod, "Ready")
    return bool(ready) and ready.get("status") == "True"


def label_selector(match_labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def env_patch_body(container: Mapping[str, Any], action: PatchEnv) -> dict[str, Any]:
    """ONE strategic-merge patch: the managed keys of one container, plus the restart marker.

    Strategic merge merges `containers` by name and `env` by name, so every other container
    and every other env entry is left as it is. An entry that had `valueFrom` gets it removed
    (`valueFrom: null`) so that the literal value is valid.
    """
    current = {e["name"]: e for e in container.get("env") or ()}
    env: list[dict[str, Any]] = []
    for key, value in action.set_env.items():
        old = current.get(key)
        if old is not None and not old.get("valueFrom") and old.get("value", "") == value:
            continue
        entry: dict[str, Any] = {"name": key, "value": value}
        if old is not None and old.get("valueFrom"):
            entry["valueFrom"] = None
        env.append(entry)
    for key in action.remove_env:
        if key in current and key not in action.set_env:
            env.append({"name": key, "$patch": "delete"})
    template: dict[str, Any] = {}
    if env:
        template["spec"] = {"containers": [{"name": container["name"], "env": env}]}
    if action.restart_token:
        template["metadata"] = {"annotations": {RESTART_TOKEN_ANNOTATION: action.restart_token}}
    return {"spec": {"template": template}}


def unmanaged_changes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    container_name: str,
    managed_keys: Iterable[str],
) -> list[str]:
    """What changed outside the managed env keys of the managed container (should be nothing)."""
    managed = set(managed_keys)
    problems: list[str] = []
    old = {c["name"]: c for c in pod_template_spec(before).get("containers") or ()}
    new = {c["name"]: c for c in pod_template_spec(after).get("containers") or ()}
    if set(old) != set(new):
        problems.append(f"containers changed: {sorted(old)} -> {sorted(new)}")
    for name in set(old) & set(new):
        if name != container_name:
            if old[name] != new[name]:
                problems.append(f"container {name!r} changed")
            continue
        old_env = {e["name"]: e for e in old[name].get("env") or () if e["name"] not in managed}
        new_env = {e["name"]: e for e in new[name].get("env") or () if e["name"] not in managed}
        if old_env != new_env:
            changed = sorted(k for k in set(old_env) | set(new_env) if old_env.get(k) != new_env.get(k))
            problems.append(f"unmanaged env changed in {name!r}: {changed}")
        rest_old = {k: v for k, v in old[name].items() if k != "env"}
        rest_new = {k: v for k, v in new[name].items() if k != "env"}
        if rest_old != rest_new:
            problems.append(f"container {name!r} changed outside env")
    return problems


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner.get("kind", KIND),
        "name": _meta(owner)["name"],
        "uid": _meta(owner)["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def label_value(name: str) -> str:
    """An object name as a label value: as it is up to 63 characters; a longer one (object names
    go to 253) is cut and made unique with a hash of the whole, `<first 52>-<10 hex>`. The API
    server refuses a label value over 63 characters (a 422: no preflight Job at all)."""
    if len(name) <= 63:
        return name
    return name[:52].rstrip("-.") + "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]


def preflight_job_body(
    owner: Mapping[str, Any], deployment: Mapping[str, Any], action: RunPreflight
) -> dict[str, Any]:
    """The Phase 0.2 Job: the managed container's image, env and volumes, the preflight command."""
    container = managed_container(deployment, action.container)
    if container is None:
        raise KubernetesError(
            f"container {action.container!r} not found in Deployment {_meta(deployment).get('name')!r}"
        )
    pod_spec = pod_template_spec(deployment)
    labels = {
        **MANAGED_BY,
        "app.kubernetes.io/component": "preflight",
        "grinder.io/fillprobrollout": label_value(_meta(owner)["name"]),
    }
    job_container: dict[str, Any] = {
        "name": PREFLIGHT_CONTAINER,
        "image": container["image"],
        "command": list(action.command),
    }
    # `args` is deliberately not copied: it would be appended to the preflight command.
    for key in ("imagePullPolicy", "env", "envFrom", "volumeMounts", "workingDir",
                "securityContext", "resources"):
        if container.get(key):
            job_container[key] = container[key]
    template_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [job_container]}
    for key in ("volumes", "serviceAccountName", "nodeSelector", "tolerations",
                "imagePullSecrets", "securityContext", "automountServiceAccountToken"):
        if pod_spec.get(key) is not None and pod_spec.get(key) != []:
            template_spec[key] = pod_spec[key]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": action.job_name,
            "namespace": _meta(owner).get("namespace"),
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(action.timeout_seconds),
            "ttlSecondsAfterFinished": PREFLIGHT_TTL_SECONDS,
            "template": {"metadata": {"labels": labels}, "spec": template_spec},
        },
    }


def job_state(job: Mapping[str, Any] | None) -> JobState:
    if job is None:
        return JobState.ABSENT
    for type_, state in (("Complete", JobState.SUCCEEDED), ("Failed", JobState.FAILED)):
        cond = _condition(job, type_)
        if cond and cond.get("status") == "True":
            return state
    return JobState.RUNNING


def terminated_exit_code(pod: Mapping[str, Any], container: str = PREFLIGHT_CONTAINER) -> int | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") == container:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated is not None and terminated.get("exitCode") is not None:
                return int(terminated["exitCode"])
    return None


def event_body(
    owner: Mapping[str, Any], event: EmitEvent, now: datetime, component: str, instance: str
) -> dict[str, Any]:
    meta = _meta(owner)
    stamp = now.isoformat().replace("+00:00", "Z")
    return {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": owner.get("apiVersion", API_VERSION),
            "kind": owner.get("kind", KIND),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def api_message(exc: ApiException, limit: int = 300) -> str:
    """": <message>" from the API server's Status body, clipped; "" when there is none."""
    try:
        message = json.loads(exc.body or "{}").get("message") or ""
    except (ValueError, AttributeError, TypeError):
        message = ""
    message = " ".join(str(message).split())
    return f": {message[:limit]}{'...' if len(message) > limit else ''}" if message else ""


_VERBS = {"read": "get", "get": "get", "list": "list", "patch": "patch", "create": "create",
          "delete": "delete", "replace": "update"}
_RESOURCES = {"custom_object": "fillprobrollouts", "custom_object_status": "fillprobrollouts/status",
              "pod_log": "pods/log", "api_resources": "discovery"}


def request_labels(method: str) -> tuple[str, str]:
    """(verb, resource) of a client method: `list_namespaced_replica_set` -> (list, replicasets)."""
    verb, _, rest = method.partition("_")
    rest = rest.removeprefix("namespaced_")
    return _VERBS.get(verb, verb or "call"), _RESOURCES.get(rest, rest.replace("_", "") + "s" if rest else "unknown")


# --------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caches:
    """The watch-backed caches (adapters/watches.py); a kind without one is read directly."""

    deployments: Any = None
    replica_sets: Any = None
    pods: Any = None
    jobs: Any = None
    rollouts: Any = None

    def all(self) -> list[Any]:
        return [c for c in (self.deployments, self.replica_sets, self.pods, self.jobs, self.rollouts)
                if c is not None]


def _floor(*rvs: int | None) -> int | None:
    """The newest of resourceVersions the tick already holds; None when any is not comparable."""
    if any(rv is None for rv in rvs):
        return None
    return max(rvs)  # type: ignore[type-var]


class _Stale(Exception):
    """The Deployment changed since the tick observed it (409 on a conditional patch)."""


def _as_of_floor(as_of: Mapping[str, int], kind: str, floor: int | None) -> int | None:
    """The floor a rollout's observation of `kind` must reach: the resourceVersion as of which
    its last one was made, or on the first (no last one) `floor`, the rollout's.

    Not the rollout's every time: its own status writes move it past a cache whose kind is
    quiet, and that cache would then never answer (a bookmark carries the API server's watch
    cache's resourceVersion, which moves only with that kind). What the rule promises: an
    observation is never older than this process's last one of that kind for the rollout,
    nor than our own writes (`_written`), nor, on the daemon's first tick, than the rollout.
    The status is written only by this process while its daemon runs here, from
    observations and writes older than each later observation: so it never describes a
    Deployment newer than the one the next tick sees. A daemon that starts (a restart, a
    takeover from another replica, a peering pause) has no last observation: it begins
    from the rollout's resourceVersion, which covers what the other process wrote."""
    if floor is None:
        return None
    return as_of.get(kind, floor)


def plain_answer(api_client: Any, answer: Any) -> Any:
    """An answer as plain JSON values: the JSON the API server sent (RestApi's, and the custom
    objects') as it is; a generated model (discovery through CustomObjectsApi) serialized by the
    client. `sanitize_for_serialization` copied every plain answer deeply for nothing."""
    if answer is None or isinstance(answer, (dict, list, str, int, float)):
        return answer
    return api_client.sanitize_for_serialization(answer)


@dataclass(frozen=True)
class _DeploymentView:
    """What a tick derives from one version of the Deployment, for one `containerName`: the
    next tick that finds the very same bytes in the cache takes it as it is (issue 10: the
    thaw and the walks were a third of a steady-state tick)."""

    frozen: bytes  # that version, pickled: `patch_env` starts from it
    container_name: str | None
    uid: str
    resource_version: int | None
    generation: int
    observed_generation: int
    container_names: tuple[str, ...]
    container: str | None  # the managed container's name; None: not found
    env: Mapping[str, str | None]
    env_managers: Mapping[str, str]
    restart_token: str | None
    restart_token_at: datetime | None
    rollout_complete: bool
    rollout_message: str
    match_labels: tuple[tuple[str, str], ...]


class KubernetesAdapter:
    """CoreV1 / AppsV1 / BatchV1 / CustomObjects, each call in `executor` with a timeout."""

    def __init__(
        self,
        *,
        core: Any,
        apps: Any,
        batch: Any,
        custom: Any,
        to_dict: Callable[[Any], Any],
        executor: Executor | None = None,
        timeout: float = 30.0,
        clock: Any = None,
        component: str = "fillprob-operator",
        instance: str | None = None,
        close: Callable[[], None] | None = None,
        logs: Any = None,
        metrics: Any = None,
        caches: Caches | None = None,
    ) -> None:
        self.core, self.apps, self.batch, self.custom = core, apps, batch, custom
        self.caches = caches or Caches()
        # (kind, namespace, name) -> the newest version this process wrote (the object a patch
        # or create returned) or, for FillProbRollouts, also read: a cache that has not
        # delivered it yet is never read as if it had not happened (`_cached_or_read`).
        self._written: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (namespace, rollout) -> kind -> the resourceVersion as of which the rollout's last
        # observation of that kind was made (`observe_deployment`): its next one is never older.
        self._as_of: dict[tuple[str, str], dict[str, int]] = {}
        # (namespace, Deployment) -> the Deployment the last tick observed: `patch_env` patches
        # from it, on condition that it is still current, instead of reading it again. Pickled:
        # kept between ticks, one per rollout, it is a tenth of its size as dicts and lists.
        self._observed: dict[tuple[str, str], bytes] = {}
        # (namespace, rollout) -> what its last observation derived, and from which bytes: the
        # Deployment (`_DeploymentView`: its env managers and restart-token time walk its
        # managedFields, 0.3 ms a tick for a kubectl-applied grinder's, issue 10), and by
        # `_derived` its newest ReplicaSet and that one's pods. Each holds the cache's own frozen
        # bytes (no copy), until the next observation.
        self._views: dict[tuple[str, str], _DeploymentView] = {}
        self._derivations: dict[tuple[str, str], dict[str, tuple[Any, Any]]] = {}
        self._to_dict = to_dict
        self._executor = executor
        self._timeout = timeout
        self._clock = clock if clock is not None else SystemClock()
        self._component = component
        self._instance = instance or socket.gethostname()
        self._close = close
        self._metrics = metrics
        # The pods' logs, followed (adapters/logs.py): by default through `core`'s own client.
        self.logs = logs if logs is not None else LogFollower(
            functools.partial(open_log_stream, getattr(core, "api_client", None), timeout=timeout),
            metrics=metrics,
        )

    @classmethod
    def from_api_client(cls, api_client: Any, **kwargs: Any) -> "KubernetesAdapter":
        from kubernetes import client

        rest = RestApi(api_client)  # CoreV1, AppsV1, BatchV1: parsed JSON (rest.py)
        return cls(
            core=rest,
            apps=rest,
            batch=rest,
            custom=client.CustomObjectsApi(api_client),
            to_dict=functools.partial(plain_answer, api_client),
            **{"close": api_client.close, **kwargs},
        )

    def start_watches(self) -> None:
        """Start the caches' list+watch threads (the operator's startup; tests feed them)."""
        for cache in self.caches.all():
            cache.start()

    def close(self) -> None:
        for cache in self.caches.all():
            cache.close()
        self.logs.close()
        if self._close is not None:
            self._close()

    def count_request(self, verb: str, resource: str) -> None:
        """fillprob_operator_kubernetes_requests_total (for `make bench`: requests per rollout)."""
        if self._metrics is not None:
            self._metrics.kubernetes_requests.labels(verb, resource).inc()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.count_request(*request_labels(getattr(fn, "__name__", "")))
        kwargs.setdefault("_request_timeout", self._timeout)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        what = getattr(fn, "__name__", "call")
        try:
            return await asyncio.wait_for(future, self._timeout + 5)
        except ApiException:
            raise
        except asyncio.TimeoutError as exc:
            raise KubernetesError(f"{what}: timed out after {self._timeout}s") from exc
        except Exception as exc:  # urllib3/socket errors: the API server is unreachable
            raise KubernetesError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def _read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """A GET that maps 404 to None and other API errors to KubernetesError."""
        try:
            return self._to_dict(await self._call(fn, *args, **kwargs))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubernetesError(f"{getattr(fn, '__name__', 'read')}: {exc.status} {exc.reason}") from exc

    async def _list(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        result = await self._read(fn, *args, **kwargs)
        return list((result or {}).get("items") or [])

    # -- the FillProbRollout itself ------------------------------------------------------

    async def ping(self) -> None:
        """GET /api/v1 (discovery, allowed to every authenticated client): raises
        KubernetesError when the API server does not answer or refuses this client."""
        try:
            await self._call(self.core.get_api_resources)
        except ApiException as exc:
            raise KubernetesError(f"GET /api/v1: {exc.status} {exc.reason}") from exc

    async def serves_rollouts(self) -> bool:
        """Whether discovery lists FillProbRollouts (GET /apis/grinder.io/v1alpha1): False when
        the API server answers without them; KubernetesError when it does not answer."""
        try:
            found = self._to_dict(await self._call(self.custom.get_api_resources, GROUP, VERSION))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise KubernetesError(f"GET /apis/{API_VERSION}: {exc.status} {exc.reason}", status=exc.status) from exc
        return any(r.get("name") == PLURAL for r in (found or {}).get("resources") or ())

    def _known(self, kind: str, namespace: str, name: str, obj: Any) -> Any:
        """Remember the newest version of an object this process read or wrote (by rv)."""
        if isinstance(obj, dict) and rv_int(obj) is not None:
            key = (kind, namespace, name)
            old = self._written.get(key)
            if old is None or (rv_int(old) or 0) <= (rv_int(obj) or 0):
                self._written[key] = obj
        return obj

    async def read_rollout(
        self, namespace: str, name: str, *, cached: bool = False, floor: int = 0
    ) -> dict[str, Any] | None:
        """The FillProbRollout: a GET, or with `cached` from the watch-backed cache when that is
        at least as new as `floor` and as every version this process read or wrote
        (`_cached_or_read`). A cache never says a rollout is gone: that takes a GET."""
        async def read() -> Any:
            return self._known(KIND, namespace, name, await self._read(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            ))

        cache = self.caches.rollouts
        body = None
        if cached and cache is not None:
            # An answer from the cache is not remembered: the cache holds it, or a newer one, for
            # as long as it is fresh (a whole rollout kept per rollout between ticks was about 40
            # KiB each, for nothing; issue 10). A direct read is: the cache may not have it yet.
            body = await self._cached_or_read(KIND, cache, namespace, name, floor, read)
        if body is None:
            body = await read()
        return body

    async def patch_rollout_status(
        self, namespace: str, name: str, status_patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        try:
            return self._known(KIND, namespace, name, self._to_dict(
                await self._call(
                    self.custom.patch_namespaced_custom_object_status,
                    GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status_patch)},
                    _content_type="application/merge-patch+json",
                )
            ))
        except ApiException as exc:
            if exc.status == 404:
                return None
            # The status (so the executor can tell a refusal from silence) and the API server's
            # own words, e.g. which field is too long or invalid.
            raise KubernetesError(
                f"patch status {namespace}/{name}: {exc.status} {exc.reason}{api_message(exc)}", status=exc.status
            ) from exc

    async def clear_rollback_annotation(
        self, namespace: str, name: str, expected: str, *, with_reason: bool = False
    ) -> bool:
        """Remove `grinder.io/rollback` only if it still holds `expected` (a JSON-patch test):
        a new request written meanwhile is not lost."""
        path = "/metadata/annotations/" + ROLLBACK_ANNOTATION.replace("~", "~0").replace("/", "~1")
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": path, "value": expected},
            {"op": "remove", "path": path},
        ]
        if with_reason:
            reason_path = "/metadata/annotations/" + ROLLBACK_REASON_ANNOTATION.replace("/", "~1")
            ops.append({"op": "remove", "path": reason_path})
        try:
            self._known(KIND, namespace, name, self._to_dict(await self._call(
                self.custom.patch_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL, name, ops,
                _content_type="application/json-patch+json",
            )))
            return True
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # gone, or the annotation changed meanwhile
                return False
            raise KubernetesError(f"clear annotation {namespace}/{name}: {exc.status} {exc.reason}") from exc

    async def _merge_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None], what: str
    ) -> bool:
        """ONE merge patch on metadata.annotations (None removes); False when the rollout is gone."""
        try:
            self._known(KIND, namespace, name, self._to_dict(await self._call(
                self.custom.patch_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": dict(annotations)}},
                field_manager=self._component,
                _content_type="application/merge-patch+json",
            )))
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise KubernetesError(
                f"{what} {namespace}/{name}: {exc.status} {exc.reason}", status=exc.status
            ) from exc

    async def store_rollback_request(self, namespace: str, name: str, request: RollbackRequest) -> bool:
        """Store an accepted alert on the rollout (API.md, "Alert intake is durable"); False
        when there is no such rollout. Any other failure, a 422 too (annotations over the size
        limit), raises KubernetesError: the receiver answers 503 and Alertmanager retries."""
        value = encode_rollback_request(request)
        return await self._merge_annotations(
            namespace, name, {alert_annotation_name(request.key): value}, "store alert"
        )

    async def remove_alert_annotations(self, namespace: str, name: str, names: Iterable[str]) -> bool:
        """Remove stored alerts a tick has taken; a name already gone is fine (merge patch)."""
        return await self._merge_annotations(
            namespace, name, {n: None for n in names if is_alert_annotation(n)}, "remove alerts"
        )

    async def emit_event(self, owner: Mapping[str, Any], event: EmitEvent) -> None:
        body = event_body(owner, event, self._clock.now(), self._component, self._instance)
        try:
            await self._call(self.core.create_namespaced_event, _meta(owner)["namespace"], body)
        except ApiException as exc:
            raise KubernetesError(f"create event: {exc.status} {exc.reason}") from exc

    # -- the Deployment ------------------------------------------------------------------

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(self.apps.read_namespaced_deployment, name, namespace)

    async def _cached_or_read(
        self, kind: str, cache: Any, namespace: str, name: str, floor: int | None,
        read: Callable[[], Any], as_of: dict[str, int] | None = None, *, frozen: bool = False,
    ) -> dict[str, Any] | CacheEntry | None:
        """The object from its cache when that cannot be older than what the tick holds (`floor`,
        the FillProbRollout's resourceVersion) nor than our own last write to it; else `read()`.

        Proof sketch (docs/performance.md, "Watch-backed caches"): a fresh cache has seen every write up to its
        high-water mark H >= floor. If it also has seen our write (H >= W), it alone is the
        object as of H. Else, when it holds the object, the newer of (cached, written) is the
        object as of max(H, W): a write after W and before H would be in the cache.

        `as_of`, if given, gets `kind` -> the resourceVersion as of which the answer is the
        object (H, max(H, W), or for a direct read the newer of `floor` and the object's).
        `frozen`: an answer from the cache alone comes as its `CacheEntry`, not thawed."""

        async def direct() -> dict[str, Any] | None:
            found = await read()
            if as_of is not None and floor is not None:
                as_of[kind] = max(floor, rv_int(found) or 0) if found is not None else floor
            return found

        def cached_as_of(*more: int | None) -> None:
            if as_of is not None:
                as_of[kind] = max([cache.state(namespace)[1] or 0, *(m or 0 for m in more)])

        if cache is None or floor is None:
            return await direct()
        written = self._written.get((kind, namespace, name))
        written_rv = rv_int(written) if written is not None else None
        if written is not None and written_rv is None:
            return await direct()
        if cache.fresh(namespace, _floor(floor, written_rv) if written is not None else floor):
            self._written.pop((kind, namespace, name), None)  # the cache has it now
            found = cache.entry(namespace, name) if frozen else cache.get(namespace, name)
            cached_as_of()
            return found
        if cache.fresh(namespace, floor) and written is not None:
            cached = cache.get(namespace, name)
            best = newer(cached, written) if cached is not None else None
            if best is not None:
                cached_as_of(written_rv)
                return copy.deepcopy(dict(best))
        return await direct()

    async def _selected_or_listed(
        self, cache: Any, namespace: str, match_labels: Mapping[str, str], floor: int | None,
        listing: Callable[[], Any], as_of: tuple[dict[str, int], str] | None = None, *, frozen: bool = False,
    ) -> list[dict[str, Any]] | list[CacheEntry]:
        """As `_cached_or_read`, for the objects a label selector selects (no writes of ours)."""
        if cache is not None and cache.fresh(namespace, floor):
            found = cache.entries(namespace, match_labels) if frozen else cache.select(namespace, match_labels)
            if as_of is not None:
                as_of[0][as_of[1]] = cache.state(namespace)[1] or 0
            return found
        found = await listing()
        if as_of is not None and floor is not None:
            as_of[0][as_of[1]] = max([floor, *(rv_int(o) or 0 for o in found)])
        return found

    async def observe_deployment(
        self, namespace: str, name: str, container_name: str | None, *, rollout: str | None = None,
        floor: int | None = None,
    ) -> DeploymentObservation:
        """The Deployment and its newest ReplicaSet's pods; their logs are followed for
        `rollout` (whose daemon a resolution or circuit-breaker line wakes). `floor`: the
        resourceVersion of the FillProbRollout the tick decides on; caches that have not seen
        that far are not read (watches.py `fresh`), except after this rollout's first
        observation: then each kind's next observation is never older than its last one (see
        `_as_of_floor`)."""
        owner = (namespace, rollout or name)
        as_of = self._as_of.setdefault(owner, {})
        found = await self._cached_or_read(
            "Deployment", self.caches.deployments, namespace, name, _as_of_floor(as_of, "Deployment", floor),
            lambda: self.read_deployment(namespace, name), as_of, frozen=True,
        )
        if found is None:
            self._observed.pop((namespace, name), None)
            self._forget_views(owner)
            await self._follow(owner, namespace, (), "")
            return DeploymentObservation(exists=False, rollout_message=f"Deployment {name!r} not found")
        view = self._deployment_view(owner, found, container_name)
        self._observed[(namespace, name)] = view.frozen
        message = view.rollout_message
        new_pods: tuple[PodStartup, ...] = ()
        pods_token: str | None = None
        if view.container is not None:
            pods_token, new_pods = await self._new_pods(owner, namespace, view, floor, as_of)
        else:
            await self._follow(owner, namespace, (), "")
            message = f"container {container_name!r} not found; {message}"
        return DeploymentObservation(
            exists=True,
            uid=view.uid,
            generation=view.generation,
            observed_generation=view.observed_generation,
            container_names=view.container_names,
            env=dict(view.env),
            env_managers=dict(view.env_managers),
            restart_token=view.restart_token,
            restart_token_at=view.restart_token_at,
            rollout_complete=view.rollout_complete,
            rollout_message=message,
            new_pods=new_pods,
            pods_restart_token=pods_token,
        )

    def _deployment_view(
        self, owner: tuple[str, str], found: dict[str, Any] | CacheEntry, container_name: str | None
    ) -> _DeploymentView:
        """The last view when `found` is the same bytes (and the same `containerName`), else a
        new one. A direct read is pickled to compare: equal bytes, equal content."""
        if isinstance(found, CacheEntry):
            frozen, deployment = found.frozen, None
        else:
            frozen, deployment = pickle.dumps(found, pickle.HIGHEST_PROTOCOL), found
        kept = self._views.get(owner)
        if kept is not None and kept.container_name == container_name and kept.frozen == frozen:
            return kept
        if deployment is None:
            deployment = pickle.loads(frozen)
        container = managed_container(deployment, container_name)
        complete, message = rollout_status(deployment)
        status = deployment.get("status") or {}
        match_labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        view = _DeploymentView(
            frozen=frozen,
            container_name=container_name,
            uid=_meta(deployment).get("uid") or "",
            resource_version=rv_int(deployment),
            generation=_meta(deployment).get("generation") or 0,
            observed_generation=status.get("observedGeneration") or 0,
            container_names=tuple(c["name"] for c in pod_template_spec(deployment).get("containers") or ()),
            container=container["name"] if container is not None else None,
            env=env_literals(container) if container is not None else {},
            env_managers=env_managers(deployment, container["name"]) if container is not None else {},
            restart_token=restart_token(deployment),
            restart_token_at=restart_token_at(deployment),
            rollout_complete=complete,
            rollout_message=message,
            match_labels=tuple((str(k), str(v)) for k, v in match_labels.items()),
        )
        self._views[owner] = view
        return view

    def _derived(
        self, owner: tuple[str, str], what: str, key: Any, found: list[dict[str, Any]] | list[CacheEntry],
        derive: Callable[[list[dict[str, Any]]], Any],
    ) -> Any:
        """`derive(objects)`, remembered for the rollout while `key` and the cache's frozen bytes
        of `found` stay the same; objects read directly are derived every time. `derive` must
        return what no one changes (tuples of str, int, bool)."""
        if not found or not isinstance(found[0], CacheEntry):
            return derive(found)  # type: ignore[arg-type]
        frozen = (key, tuple(e.frozen for e in found))  # type: ignore[union-attr]
        kept = self._derivations.setdefault(owner, {}).get(what)
        if kept is not None and kept[0] == frozen:
            return kept[1]
        value = derive([e.thaw() for e in found])  # type: ignore[union-attr]
        self._derivations[owner][what] = (frozen, value)
        return value

    def _forget_views(self, owner: tuple[str, str]) -> None:
        self._views.pop(owner, None)
        self._derivations.pop(owner, None)

    def forget_rollout(self, namespace: str, name: str) -> None:
        """The rollout's daemon stopped here: its pods' log streams stop, and a daemon that
        starts for it again (here, after a pause) begins from the rollout's resourceVersion."""
        self.logs.forget((namespace, name))
        self._as_of.pop((namespace, name), None)
        self._forget_views((namespace, name))

    async def _follow(
        self, owner: tuple[str, str], namespace: str, pods: Iterable[tuple[str, str]], container: str
    ) -> dict[str, Any]:
        """Follow these pods' logs, (name, uid) each, for `owner`."""
        return await self.logs.observe(owner, namespace, list(pods), container, timeout=self._timeout)

    async def _new_pods(
        self, owner: tuple[str, str], namespace: str, view: _DeploymentView,
        floor: int | None = None, as_of: dict[str, int] | None = None,
    ) -> tuple[str | None, tuple[PodStartup, ...]]:
        """The newest ReplicaSet's restart token and pods. `floor`: the rollout's
        resourceVersion (`_as_of_floor`); the ReplicaSets and pods are also never older than the
        Deployment they are judged against (as with direct reads, made after the Deployment's)."""
        as_of = {} if as_of is None else as_of
        match_labels = dict(view.match_labels)
        selector = label_selector(match_labels)
        replica_sets = await self._selected_or_listed(
            self.caches.replica_sets, namespace, match_labels,
            _floor(_as_of_floor(as_of, "ReplicaSet", floor), view.resource_version),
            lambda: self._list(self.apps.list_namespaced_replica_set, namespace, label_selector=selector),
            (as_of, "ReplicaSet"), frozen=True,
        )
        # (its uid, its pod-template-hash, its restart token), or None
        newest = self._derived(owner, "ReplicaSet", view.uid, replica_sets, lambda sets: _newest_of(view.uid, sets))
        pods: tuple[tuple[str, str, bool], ...] = ()  # (name, uid, ready), oldest first
        if newest is not None:
            rs_uid, rs_hash, _ = newest
            hash_label = rs_hash if rs_hash is not None else ""
            pod_selector = ",".join(filter(None, [selector, f"{POD_TEMPLATE_HASH}={hash_label}"]))
            found = await self._selected_or_listed(
                self.caches.pods, namespace, {**match_labels, POD_TEMPLATE_HASH: hash_label},
                _floor(_as_of_floor(as_of, "Pod", floor), view.resource_version),
                lambda: self._list(self.core.list_namespaced_pod, namespace, label_selector=pod_selector),
                (as_of, "Pod"), frozen=True,
            )
            pods = self._derived(owner, "Pod", newest, found, lambda objs: tuple(
                (_meta(p)["name"], _meta(p).get("uid") or _meta(p)["name"], pod_ready(p))
                for p in _pods_of(rs_uid, rs_hash, objs)
            ))
        logs = await self._follow(owner, namespace, ((name, uid) for name, uid, _ in pods), view.container or "")
        startups = []
        for name, uid, ready in pods:
            log = logs[uid]
            startups.append(PodStartup(
                pod=name, ready=ready, resolution_line=log.resolution_line,
                circuit_breaker_lines=log.circuit_breaker_lines, log_readable=log.readable,
            ))
        return (newest[2] if newest is not None else None), tuple(startups)

    async def _pod_log(
        self, namespace: str, pod: str, container: str, *, strict: bool = False, **kwargs: Any
    ) -> str | None:
        """The log text, read once (the preflight Job's pod; the Deployment's pods are followed);
        "" when there is none yet (container waiting, pod gone: 400/404).

        Other failures raise when `strict`; otherwise they return None: a pod log that cannot
        be read is missing data, never "the line is not there" (API.md, Everyday change). That
        includes a kubelet that cannot read the container's log file (rotated or removed under
        it): the API answers 200 with the kubelet's error as the whole text.
        """
        try:
            text = await self._call(
                self.core.read_namespaced_pod_log, pod, namespace, container=container, **kwargs
            )
        except (ApiException, KubernetesError) as exc:
            status = getattr(exc, "status", None)
            if status in (400, 404):
                return ""
            if strict:
                raise KubernetesError(f"read log {namespace}/{pod}: {exc}") from exc
            logger.warning("event=pod_log_unreadable namespace=%s pod=%s error=%r", namespace, pod, str(exc))
            return None
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text or "")
        if KUBELET_LOG_FILE_ERROR.match(text) and "\n" not in text.strip():
            if strict:
                raise KubernetesError(f"read log {namespace}/{pod}: the kubelet answered {text.strip()!r}")
            logger.warning("event=pod_log_unreadable namespace=%s pod=%s error=%r", namespace, pod, text.strip())
            return None
        return text

    async def patch_env(self, namespace: str, name: str, action: PatchEnv) -> bool:
        """Apply the env change and restart marker; False when already applied (or gone).

        Starts from the Deployment as it is now: if it already carries `action.restart_token`,
        a previous run of this step got as far as the patch (crash safety), so nothing is done
        twice. "As it is now" is the Deployment this tick observed, on condition that it still is
        (its `resourceVersion` in the patch: the API server refuses it with 409 Conflict if the
        Deployment changed since, then it is read again); without one, it is read first. One
        request less on the way to a rollback.
        """
        frozen = self._observed.pop((namespace, name), None)
        observed = pickle.loads(frozen) if frozen is not None else None
        # The token already there is "done" only when read now: an observation may be older.
        if observed is not None and rv_int(observed) is not None and not (
            action.restart_token and restart_token(observed) == action.restart_token
        ):
            try:
                return await self._patch_env_from(namespace, name, action, observed, precondition=True)
            except _Stale:
                pass
        deployment = await self.read_deployment(namespace, name)
        if deployment is None:
            return False
        return await self._patch_env_from(namespace, name, action, deployment, precondition=False)

    async def _patch_env_from(
        self, namespace: str, name: str, action: PatchEnv, deployment: Mapping[str, Any], *, precondition: bool
    ) -> bool:
        if action.restart_token and restart_token(deployment) == action.restart_token:
            return False
        container = managed_container(deployment, action.container)
        if container is None:
            raise KubernetesError(f"container {action.container!r} not found in Deployment {name!r}")
        body = env_patch_body(container, action)
        if not body["spec"]["template"]:
            # Nothing to set and no token (a status whose restart has an empty token): an
            # empty patch is a write per tick that changes nothing.
            return False
        if precondition:
            body["metadata"] = {"resourceVersion": _meta(deployment)["resourceVersion"]}
        try:
            after = self._to_dict(
                await self._call(
                    self.apps.patch_namespaced_deployment, name, namespace, body,
                    # our name in managedFields, so "who changed the env" reads right
                    field_manager=self._component,
                    _content_type="application/strategic-merge-patch+json",
                )
            )
        except ApiException as exc:
            if exc.status == 409 and precondition:
                raise _Stale() from exc
            if exc.status == 404:
                return False
            raise KubernetesError(f"patch Deployment {namespace}/{name}: {exc.status} {exc.reason}") from exc
        self._written[("Deployment", namespace, name)] = after
        problems = unmanaged_changes(
            deployment, after, container["name"], [*action.set_env, *action.remove_env]
        )
        if problems:
            logger.error(
                "event=unexpected_patch_effect namespace=%s deployment=%s problems=%r",
                namespace, name, problems,
            )
        return True

    # -- the preflight Job ---------------------------------------------------------------

    async def run_preflight(
        self, namespace: str, owner: Mapping[str, Any], deployment_name: str, action: RunPreflight
    ) -> bool:
        """Create the Job unless it exists (409 is fine). False when the Deployment is gone."""
        deployment = await self.read_deployment(namespace, deployment_name)
        if deployment is None:
            return False
        body = preflight_job_body(owner, deployment, action)
        try:
            created = self._to_dict(await self._call(self.batch.create_namespaced_job, namespace, body))
        except ApiException as exc:
            if exc.status == 409:
                return True
            raise KubernetesError(f"create Job {namespace}/{action.job_name}: {exc.status} {exc.reason}") from exc
        if isinstance(created, dict) and rv_int(created) is not None:
            self._written[("Job", namespace, action.job_name)] = created
        return True

    async def observe_preflight(
        self, namespace: str, job_name: str, *, floor: int | None = None
    ) -> PreflightObservation:
        job = await self._cached_or_read(
            "Job", self.caches.jobs, namespace, job_name, floor,
            lambda: self._read(self.batch.read_namespaced_job, job_name, namespace),
        )
        state = job_state(job)
        if state not in (JobState.SUCCEEDED, JobState.FAILED):
            return PreflightObservation(job_name=job_name, state=state)
        pods = [
            pod
            for pod in await self._selected_or_listed(
                self.caches.pods, namespace, {JOB_NAME_LABEL: job_name}, _floor(floor, rv_int(job)),
                lambda: self._list(
                    self.core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}"
                ),
            )
            if _owned_by(pod, _meta(job).get("uid"))
        ]
        if not pods:
            return PreflightObservation(job_name=job_name, state=state)
        pod = max(pods, key=lambda p: _meta(p).get("creationTimestamp") or "")
        output = await self._pod_log(
            namespace, _meta(pod)["name"], PREFLIGHT_CONTAINER, strict=True, limit_bytes=PREFLIGHT_LOG_BYTES
        )
        return PreflightObservation(
            job_name=job_name, state=state, output=output or "", exit_code=terminated_exit_code(pod)
        )


def open_log_stream(
    api_client: Any, namespace: str, pod: str, container: str, since_time: str | None, *, timeout: float
) -> Any:
    """`GET /api/v1/namespaces/<ns>/pods/<pod>/log?follow=true&timestamps=true[&sinceTime=...]`,
    blocking: the streaming urllib3 response, or ApiException. Built by hand because the
    generated client has no `since_time` (the OpenAPI spec lists `sinceSeconds` only, which
    would depend on the node's clock agreeing with ours)."""
    request = log_request(api_client, namespace, pod, container, since_time)
    response = api_client.call_api(*request, _request_timeout=(timeout, IDLE_READ_SECONDS))
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


def log_request(api_client: Any, namespace: str, pod: str, container: str, since_time: str | None) -> tuple:
    """(method, url, headers, body, post_params) of the follow request, its credentials fresh."""
    if api_client is None:
        raise KubernetesError("no API client to follow pod logs with")
    query: list[tuple[str, Any]] = [("container", container), ("follow", True), ("timestamps", True)]
    if since_time:
        query.append(("sinceTime", since_time))
    return api_client.param_serialize(
        method="GET", resource_path="/api/v1/namespaces/{namespace}/pods/{name}/log",
        path_params={"namespace": namespace, "name": pod}, query_params=query,
        # The API server refuses `Accept: text/plain` here (406); it answers text whatever we accept.
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
    )


class LogStreamRefused(KubernetesError):
    """The API server answered the follow request with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"({status}) {body[:500]}")
        self.status = status


class Http2LogStreams:
    """Pod log streams as tasks over HTTP/2 (issue 10: the RSS per followed pod): up to
    `per_connection` streams share one connection (`http2.Http2Client`: a stream closed early is
    reset, every wait bounded), with no thread per stream. A thread, its connection and its TLS
    state were about 330 KiB per followed pod. Credentials, CA and client certificate come from
    `api_client`'s configuration (`log_request`, `tls_context`), the token fresh for each request.

    `open` is `LogFollower`'s `open_async`."""

    def __init__(self, api_client: Any, *, timeout: float, per_connection: int = 100,
                 socket_options: Iterable[tuple[int, int, int]] = ()) -> None:
        from .http2 import Http2Client

        self._api = api_client
        server = urlsplit(api_client.configuration.host)
        self._client = Http2Client(
            server.hostname or "", server.port or 443, tls=tls_context(api_client.configuration),
            timeout=timeout, idle_read=IDLE_READ_SECONDS, per_connection=per_connection,
            socket_options=socket_options,
        )

    async def open(self, namespace: str, pod: str, container: str, since_time: str | None) -> Any:
        """The follow response (an `http2.Http2Response`), or `LogStreamRefused` with the status."""
        _, url, headers, _, _ = log_request(self._api, namespace, pod, container, since_time)
        target = urlsplit(url)
        response = await self._client.get(f"{target.path}?{target.query}", headers.items())
        if not 200 <= response.status <= 299:
            try:
                body = (await response.read()).decode(errors="replace")
            except (ConnectionError, TimeoutError) as exc:
                body = str(exc)
            finally:
                await response.aclose()
            raise LogStreamRefused(response.status, body)
        return response

    @property
    def connections(self) -> int:
        """HTTP/2 connections open now."""
        return self._client.connections

    async def aclose(self) -> None:
        await self._client.aclose()


def build_caches(
    api_client: Any, namespaces: Iterable[str], *, timeout: float, count: Callable[[str, str], None]
) -> Caches:
    """One WatchCache per kind over the watched namespaces (empty: all), each kind's requests
    counted as `fillprob_operator_kubernetes_requests_total{verb=list|watch}`."""
    from kubernetes import client

    core = apps = batch = RestApi(api_client)
    custom = client.CustomObjectsApi(api_client)
    kinds = {
        "deployments": ("Deployment", "deployments", apps.list_namespaced_deployment,
                        apps.list_deployment_for_all_namespaces, project_deployment),
        "replica_sets": ("ReplicaSet", "replicasets", apps.list_namespaced_replica_set,
                         apps.list_replica_set_for_all_namespaces, project_replica_set),
        "pods": ("Pod", "pods", core.list_namespaced_pod, core.list_pod_for_all_namespaces, project_pod),
        "jobs": ("Job", "jobs", batch.list_namespaced_job, batch.list_job_for_all_namespaces, project_job),
        "rollouts": (
            KIND, PLURAL,
            lambda ns, **kw: custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, **kw),
            lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw),
            project_rollout,
        ),
    }
    return Caches(**{
        attr: WatchCache(
            kind, ClientSource(namespaced, everywhere, timeout=timeout), tuple(namespaces), project=project,
            count=functools.partial(lambda resource, verb: count(verb, resource), resource),
        )
        for attr, (kind, resource, namespaced, everywhere, project) in kinds.items()
    })


TLS_FILE_KEYS = ("ca_certs", "ca_cert_data", "cert_file", "key_file")


def share_tls_context(api_client: Any) -> bool:
    """Give every connection of `api_client` one TLS context, built now from its configuration's
    CA and client certificate, instead of one built per connection (urllib3 builds a context and
    loads the CA and the client certificate at every connect unless the pool has one): about
    30 KiB and the files' parse saved per connection, and the operator holds one per followed
    pod. A proxied client is left as it is. Files are read once: a client certificate rewritten
    on disk later is not picked up (a token is: it travels in a header). Returns whether it did."""
    import urllib3
    from urllib3.util.ssl_ import create_urllib3_context, resolve_cert_reqs

    manager = api_client.rest_client.pool_manager
    if type(manager) is not urllib3.PoolManager:
        return False
    kw = manager.connection_pool_kw
    context = create_urllib3_context(cert_reqs=resolve_cert_reqs(kw.get("cert_reqs")))
    if kw.get("ca_certs") or kw.get("ca_cert_data"):
        context.load_verify_locations(cafile=kw.get("ca_certs"), cadata=kw.get("ca_cert_data"))
    elif context.verify_mode != ssl.CERT_NONE:
        context.load_default_certs()
    if kw.get("cert_file"):
        context.load_cert_chain(kw["cert_file"], kw.get("key_file"))
    for key in TLS_FILE_KEYS:
        kw.pop(key, None)
    kw["ssl_context"] = context
    manager.clear()  # no pool was built with the old arguments; none is kept if one was
    return True


def tls_context(configuration: Any) -> ssl.SSLContext:
    """A TLS context from a client configuration (CA, client certificate, verify_ssl), checking
    the server's name itself (urllib3's contexts leave that to urllib3)."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def http2_log_streams_usable(configuration: Any) -> bool:
    """Whether `Http2LogStreams` can reach the API server as the client would: not through a
    proxy, with no TLS server name other than the host's, over TLS (HTTP/2 needs it here)."""
    return (str(configuration.host or "").startswith("https://") and not configuration.proxy
            and not getattr(configuration, "tls_server_name", None)
            and not getattr(configuration, "assert_hostname", None))


def build_adapter(
    *, timeout: float, executor: Executor | None, clock: Any, pool_size: int = 16,
    metrics: Any = None, log_streams: int = 200, watch_namespaces: Iterable[str] | None = None,
    log_transport: str = "http2",
) -> KubernetesAdapter:
    """In-cluster config when running in a pod, else the current KUBECONFIG.

    Log streams get a client of their own, never the pool the ticks' requests use, with TCP
    keepalive so a dead peer is noticed: `Http2LogStreams` (log_transport "http2", when
    `http2_log_streams_usable`), else a thread and a connection each (a pool as large as the
    streams allowed).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # KUBECONFIG is read now, not when the client library was imported.
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,
            client_configuration=configuration,
            persist_config=False,
        )
    streams_configuration = copy.deepcopy(configuration)
    streams_configuration.connection_pool_maxsize = log_streams
    streams_configuration.keep_alive = True
    # Watches too hold a connection each while they run (5 kinds per watched namespace); a dead
    # peer is found by keepalive within about a minute (watches.py, WATCH_KEEPALIVE).
    watch_configuration = copy.deepcopy(streams_configuration)
    from kubernetes.utils.keepalive import tcp_keepalive_socket_options

    idle, interval, count_ = WATCH_KEEPALIVE
    watch_configuration.socket_options = tcp_keepalive_socket_options(idle=idle, interval=interval, count=count_)
    configuration.connection_pool_maxsize = pool_size
    api_client = client.ApiClient(configuration)
    streams_client = client.ApiClient(streams_configuration)
    watch_client = client.ApiClient(watch_configuration) if watch_namespaces is not None else None
    for each in (api_client, streams_client, watch_client):
        if each is not None:
            share_tls_context(each)

    def close() -> None:
        api_client.close()
        streams_client.close()
        if watch_client is not None:
            watch_client.close()

    def count(verb: str, resource: str) -> None:
        if metrics is not None:
            metrics.kubernetes_requests.labels(verb, resource).inc()

    caches = None
    if watch_client is not None:
        caches = build_caches(watch_client, watch_namespaces or (), timeout=timeout, count=count)
    if log_transport == "http2" and http2_log_streams_usable(streams_configuration):
        streams = Http2LogStreams(streams_client, timeout=timeout,
                                  socket_options=tcp_keepalive_socket_options(idle=idle, interval=interval, count=count_))
        logs = LogFollower(open_async=streams.open, aclose=streams.aclose, max_streams=log_streams,
                           metrics=metrics)
    else:
        logs = LogFollower(functools.partial(open_log_stream, streams_client, timeout=timeout),
                           max_streams=log_streams, metrics=metrics)
    logger.info("event=log_transport transport=%s", "http2" if logs.asynchronous else "threads")
    return KubernetesAdapter.from_api_client(
        api_client, executor=executor, timeout=timeout, clock=clock, metrics=metrics, close=close,
        caches=caches, logs=logs,
    )
