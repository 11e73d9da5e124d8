"""The Kubernetes adapter: its pure helpers (env patch body, rollout status, logs, the Job,
env managers) and what `observe_deployment` reports through a fake client."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from fillprob_operator.adapters.kubernetes import (
    RESTART_TOKEN_ANNOTATION,
    KubernetesAdapter,
    KubernetesError,
    env_literals,
    env_managers,
    env_patch_body,
    event_body,
    job_state,
    managed_container,
    newest_replica_set,
    preflight_job_body,
    restart_token_at,
    replica_set_pods,
    rollout_status,
    terminated_exit_code,
    unmanaged_changes,
)
from fillprob_operator.domain.actions import EmitEvent, PatchEnv, RunPreflight
from fillprob_operator.adapters.logs import PodLog
from fillprob_operator.domain.observations import JobState


def deployment(**status) -> dict:
    return {
        "metadata": {"name": "grinder", "namespace": "trading", "uid": "dep-uid", "generation": 4},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "grinder"}},
            "template": {
                "metadata": {"labels": {"app": "grinder"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "serviceAccountName": "grinder",
                    "nodeSelector": {"disk": "ssd"},
                    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                    "volumes": [{"name": "model", "hostPath": {"path": "/data/model"}}],
                    "containers": [
                        {
                            "name": "grinder",
                            "image": "grinder-sim:local",
                            "args": ["--serve"],
                            "envFrom": [{"configMapRef": {"name": "grinder-common"}}],
                            "volumeMounts": [{"name": "model", "mountPath": "/model"}],
                            "env": [
                                {"name": "GRINDER_FILL_MODEL_DIR", "value": "/model"},
                                {"name": "GRINDER_FILL_MODEL_ENFORCE", "value": "0"},
                                {"name": "GRINDER_FILL_PROB_ENFORCE_SYMBOLS", "value": "SYM1"},
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "GRINDER_FILL_PROB_AUTO_THRESHOLD",
                                 "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                            ],
                        },
                        {"name": "sidecar", "image": "proxy:1", "env": [{"name": "GRINDER_FILL_MODEL_ENFORCE", "value": "9"}]},
                    ],
                },
            },
        },
        "status": {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, **status},
    }


def strategic_merge(obj: dict, patch: dict) -> dict:
    """Just enough of the API server's strategic merge for the body we send:
    containers and env merged by name, `$patch: delete`, `null` deletes a field."""
    out = copy.deepcopy(obj)

    def merge(dst: dict, src: dict, path: tuple[str, ...]) -> None:
        for key, value in src.items():
            if value is None:
                dst.pop(key, None)
            elif key in ("containers", "env") and isinstance(value, list):
                items = dst.setdefault(key, [])
                for item in value:
                    index = next((i for i, x in enumerate(items) if x["name"] == item["name"]), None)
                    if item.get("$patch") == "delete":
                        if index is not None:
                            items.pop(index)
                    elif index is None:
                        items.append({k: v for k, v in item.items() if v is not None})
                    else:
                        merge(items[index], item, path + (key,))
            elif isinstance(value, dict):
                merge(dst.setdefault(key, {}), value, path + (key,))
            else:
                dst[key] = value

    merge(out, patch, ())
    return out


ACTION = PatchEnv(
    container="grinder",
    set_env={
        "GRINDER_FILL_MODEL_ENFORCE": "1",
        "GRINDER_FILL_PROB_AUTO_THRESHOLD": "0",
        "GRINDER_FILL_PROB_MIN_BPS": "2500",
        "GRINDER_FILL_MODEL_DIR": "/model",
    },
    remove_env=("GRINDER_FILL_PROB_ENFORCE_SYMBOLS", "NEVER_SET"),
    restart_token="4-2",
)


def test_env_patch_body_is_one_strategic_merge_of_the_managed_keys_only():
    dep = deployment()
    body = env_patch_body(managed_container(dep, "grinder"), ACTION)
    assert body == {
        "spec": {
            "template": {
                "metadata": {"annotations": {RESTART_TOKEN_ANNOTATION: "4-2"}},
                "spec": {
                    "containers": [
                        {
                            "name": "grinder",
                            "env": [
                                {"name": "GRINDER_FILL_MODEL_ENFORCE", "value": "1"},
                                # had valueFrom: dropped so that the literal is valid
                                {"name": "GRINDER_FILL_PROB_AUTO_THRESHOLD", "value": "0", "valueFrom": None},
                                {"name": "GRINDER_FILL_PROB_MIN_BPS", "value": "2500"},
                                {"name": "GRINDER_FILL_PROB_ENFORCE_SYMBOLS", "$patch": "delete"},
                            ],
                        }
                    ]
                },
            }
        }
    }


def test_applied_patch_leaves_other_env_and_other_containers_untouched():
    before = deployment()
    after = strategic_merge(before, env_patch_body(managed_container(before, "grinder"), ACTION))
    assert unmanaged_changes(before, after, "grinder", [*ACTION.set_env, *ACTION.remove_env]) == []
    env = env_literals(managed_container(after, "grinder"))
    assert env["GRINDER_FILL_MODEL_ENFORCE"] == "1"
    assert env["GRINDER_FILL_PROB_AUTO_THRESHOLD"] == "0"
    assert env["GRINDER_FILL_PROB_MIN_BPS"] == "2500"
    assert "GRINDER_FILL_PROB_ENFORCE_SYMBOLS" not in env
    assert env["POD_NAME"] is None  # valueFrom kept
    assert managed_container(after, "sidecar") == managed_container(before, "sidecar")
    template_annotations = after["spec"]["template"]["metadata"]["annotations"]
    assert template_annotations == {"prometheus.io/scrape": "true", RESTART_TOKEN_ANNOTATION: "4-2"}


def test_unmanaged_changes_are_reported():
    before = deployment()
    after = copy.deepcopy(before)
    after["spec"]["template"]["spec"]["containers"][1]["env"][0]["value"] = "1"
    after["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "OTHER", "value": "x"})
    problems = unmanaged_changes(before, after, "grinder", ACTION.set_env)
    assert "container 'sidecar' changed" in problems
    assert any("OTHER" in p for p in problems)


def test_env_patch_with_nothing_to_change_still_restarts():
    dep = deployment()
    action = PatchEnv(container="grinder", set_env={"GRINDER_FILL_MODEL_ENFORCE": "0"}, restart_token="4-3")
    assert env_patch_body(managed_container(dep, "grinder"), action) == {
        "spec": {"template": {"metadata": {"annotations": {RESTART_TOKEN_ANNOTATION: "4-3"}}}}
    }


def test_managed_container_is_named_or_first():
    dep = deployment()
    assert managed_container(dep, None)["name"] == "grinder"
    assert managed_container(dep, "sidecar")["name"] == "sidecar"
    assert managed_container(dep, "missing") is None


@pytest.mark.parametrize(
    "changes, complete, message",
    [
        ({}, True, "successfully rolled out"),
        ({"observedGeneration": 3}, False, "spec update to be observed"),
        ({"updatedReplicas": 1}, False, "1 out of 2 new replicas"),
        ({"replicas": 3}, False, "1 old replicas are pending termination"),
        ({"availableReplicas": 1}, False, "1 of 2 updated replicas are available"),
        ({"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]},
         False, "exceeded its progress deadline"),
    ],
)
def test_rollout_status_is_kubectl_rollout_status(changes, complete, message):
    ok, text = rollout_status(deployment(**changes))
    assert ok is complete
    assert message in text


def test_newest_replica_set_and_its_pods():
    dep = deployment()

    def rs(name, revision, owner="dep-uid"):
        return {"metadata": {"name": name, "uid": f"{name}-uid", "labels": {"pod-template-hash": name[-3:]},
                             "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                             "ownerReferences": [{"uid": owner}]}}

    sets = [rs("grinder-aaa", 1), rs("grinder-bbb", 3), rs("grinder-ccc", 9, owner="other"), rs("grinder-ddd", 2)]
    newest = newest_replica_set(dep, sets)
    assert newest["metadata"]["name"] == "grinder-bbb"

    def pod(name, rs_name, hash_, deleting=False, created="2024-01-01T00:00:00Z"):
        meta = {"name": name, "uid": name, "labels": {"pod-template-hash": hash_}, "creationTimestamp": created,
                "ownerReferences": [{"uid": f"{rs_name}-uid"}]}
        if deleting:
            meta["deletionTimestamp"] = "2024-01-01T00:01:00Z"
        return {"metadata": meta}

    pods = [
        pod("grinder-bbb-2", "grinder-bbb", "bbb", created="2024-01-01T00:00:05Z"),
        pod("grinder-bbb-1", "grinder-bbb", "bbb"),
        pod("grinder-aaa-1", "grinder-aaa", "aaa"),
        pod("grinder-bbb-3", "grinder-bbb", "bbb", deleting=True),
    ]
    assert [p["metadata"]["name"] for p in replica_set_pods(newest, pods)] == ["grinder-bbb-1", "grinder-bbb-2"]


def test_preflight_job_runs_the_managed_container_image_env_and_volumes():
    owner = {"apiVersion": "grinder.io/v1alpha1", "kind": "FillProbRollout",
             "metadata": {"name": "grinder-rollout", "namespace": "trading", "uid": "fpr-uid"}}
    action = RunPreflight(job_name="grinder-rollout-preflight-1", container="grinder",
                          command=("python3", "-m", "scripts.preflight_fill_prob"), timeout_seconds=600)
    dep = deployment()
    job = preflight_job_body(owner, dep, action)
    assert job["metadata"]["name"] == "grinder-rollout-preflight-1"
    assert job["metadata"]["namespace"] == "trading"
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "grinder.io/v1alpha1", "kind": "FillProbRollout", "name": "grinder-rollout",
        "uid": "fpr-uid", "controller": True, "blockOwnerDeletion": True}]
    assert job["metadata"]["labels"]["grinder.io/fillprobrollout"] == "grinder-rollout"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "grinder"
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["volumes"] == dep["spec"]["template"]["spec"]["volumes"]
    (container,) = pod["containers"]
    source = managed_container(dep, "grinder")
    assert container["image"] == "grinder-sim:local"
    assert container["command"] == ["python3", "-m", "scripts.preflight_fill_prob"]
    assert container["env"] == source["env"]
    assert container["envFrom"] == source["envFrom"]
    assert container["volumeMounts"] == source["volumeMounts"]
    assert "args" not in container  # would be appended to the preflight command
    # not the Deployment's labels: its ReplicaSet and its Prometheus selector must not see the Job
    assert spec["template"]["metadata"]["labels"].get("app") is None


def test_job_state_and_exit_code():
    assert job_state(None) is JobState.ABSENT
    assert job_state({"status": {}}) is JobState.RUNNING
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) is JobState.SUCCEEDED
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) is JobState.FAILED
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}) is JobState.RUNNING
    pod = {"status": {"containerStatuses": [{"name": "preflight", "state": {"terminated": {"exitCode": 1}}}]}}
    assert terminated_exit_code(pod) == 1
    assert terminated_exit_code({"status": {"containerStatuses": [{"name": "preflight", "state": {"running": {}}}]}}) is None


def test_event_body_points_at_the_rollout():
    owner = {"apiVersion": "grinder.io/v1alpha1", "kind": "FillProbRollout",
             "metadata": {"name": "r", "namespace": "ns", "uid": "u"}}
    body = event_body(owner, EmitEvent("Warning", "CircuitBreakerTripped", "R1 applied"),
                      datetime(2024, 1, 1, tzinfo=timezone.utc), "fillprob-operator", "host")
    assert body["involvedObject"] == {"apiVersion": "grinder.io/v1alpha1", "kind": "FillProbRollout",
                                      "name": "r", "namespace": "ns", "uid": "u"}
    assert (body["type"], body["reason"], body["message"]) == ("Warning", "CircuitBreakerTripped", "R1 applied")
    assert body["firstTimestamp"] == "2024-01-01T00:00:00Z"
    assert body["metadata"] == {"generateName": "r.", "namespace": "ns"}


# --- who set the env: managedFields --------------------------------------------------------


def env_fields(container: str, *keys: str, container_key: str | None = None) -> dict:
    """fieldsV1 owning env entries `keys` of `container`, as the API server writes them."""
    return {"f:spec": {"f:template": {"f:spec": {"f:containers": {
        container_key or "k:" + json.dumps({"name": container}, separators=(",", ":")): {
            ".": {}, "f:name": {},
            "f:env": {"k:" + json.dumps({"name": k}, separators=(",", ":")): {".": {}, "f:name": {}, "f:value": {}}
                      for k in keys},
        }}}}}}


def with_managed_fields(*entries: dict) -> dict:
    dep = deployment()
    dep["metadata"]["managedFields"] = list(entries)
    return dep


def test_env_managers_name_the_newest_owner_of_each_env_entry():
    dep = with_managed_fields(
        {"manager": "argocd-controller", "operation": "Apply", "time": "2024-05-01T10:00:00Z",
         "fieldsV1": env_fields("grinder", "GRINDER_FILL_MODEL_DIR", "GRINDER_FILL_MODEL_ENFORCE",
                                "GRINDER_FILL_PROB_ENFORCE_SYMBOLS")},
        # newer, listed first: order in the list does not matter, `time` does
        {"manager": "kubectl-set", "operation": "Update", "time": "2024-05-01T12:30:00Z",
         "fieldsV1": env_fields("grinder", "GRINDER_FILL_MODEL_ENFORCE")},
        {"manager": "fillprob-operator", "operation": "Update", "time": "2024-05-01T11:00:00Z",
         "fieldsV1": env_fields("grinder", "GRINDER_FILL_MODEL_ENFORCE", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS")},
        # the sidecar's env entry of the same name is not the managed container's
        {"manager": "mesh-injector", "operation": "Update", "time": "2024-05-01T13:00:00Z",
         "fieldsV1": env_fields("sidecar", "GRINDER_FILL_MODEL_ENFORCE")},
        # status writes own no env
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
         "time": "2024-05-01T14:00:00Z", "fieldsV1": {"f:status": {"f:replicas": {}}}},
    )
    assert env_managers(dep, "grinder") == {
        "GRINDER_FILL_MODEL_DIR": "argocd-controller",
        "GRINDER_FILL_MODEL_ENFORCE": "kubectl-set",
        "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "fillprob-operator",
        "POD_NAME": "",  # nobody in managedFields owns it: unknown
        "GRINDER_FILL_PROB_AUTO_THRESHOLD": "",
    }
    assert env_managers(dep, "sidecar") == {"GRINDER_FILL_MODEL_ENFORCE": "mesh-injector"}
    assert env_managers(dep, "missing") == {}
    assert env_managers(deployment(), "grinder")["GRINDER_FILL_MODEL_ENFORCE"] == ""  # no managedFields


def test_env_managers_follow_the_value_not_the_entry():
    """Recorded from the testbed's API server (v1.36): `kubectl create deployment`, `kubectl set
    env ENFORCE=0 LOG_LEVEL=info`, the operator's strategic-merge patch ENFORCE=0 (field manager
    fillprob-operator), then `kubectl set env LOG_LEVEL=debug`. kubectl-set is the newest entry
    and still owns ENFORCE's `.` and `f:name`, but the operator set its value."""
    grinder = 'k:{"name":"grinder"}'
    dep = with_managed_fields(
        {"manager": "kubectl-create", "operation": "Update", "time": "2026-12-01T17:41:15Z",
         "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {grinder: {
             ".": {}, "f:image": {}, "f:name": {}}}}}}}},
        {"manager": "fillprob-operator", "operation": "Update", "time": "2026-12-01T17:41:21Z",
         "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {grinder: {"f:env": {
             'k:{"name":"GRINDER_FILL_MODEL_ENFORCE"}': {"f:value": {}}}}}}}}}},
        {"manager": "kubectl-set", "operation": "Update", "time": "2026-12-01T17:41:23Z",
         "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {grinder: {"f:env": {
             ".": {},
             'k:{"name":"GRINDER_FILL_MODEL_ENFORCE"}': {".": {}, "f:name": {}},
             'k:{"name":"GRINDER_FILL_MODEL_DIR"}': {".": {}, "f:name": {}, "f:value": {}}}}}}}}}},
    )
    managers = env_managers(dep, "grinder")
    assert managers["GRINDER_FILL_MODEL_ENFORCE"] == "fillprob-operator"
    assert managers["GRINDER_FILL_MODEL_DIR"] == "kubectl-set"
    # an entry whose value nobody owns (`value: ""` is dropped): the newest owner of the entry
    del dep["metadata"]["managedFields"][1]
    assert env_managers(dep, "grinder")["GRINDER_FILL_MODEL_ENFORCE"] == "kubectl-set"


def test_env_managers_parse_the_element_keys_not_their_text():
    # the same element identity with other spacing / extra identity keys still matches
    fields = env_fields("grinder", container_key='k:{ "name" : "grinder" }')
    fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{ "name" : "grinder" }']["f:env"] = {
        'k:{"value":"x","name":"GRINDER_FILL_MODEL_ENFORCE"}': {"f:value": {}},  # owns the value only
        "k:not json": {},
        'k:["GRINDER_FILL_MODEL_DIR"]': {},
    }
    dep = with_managed_fields(
        {"manager": "kubectl-set", "time": "2024-05-01T12:00:00+00:00", "fieldsV1": fields},
        {"manager": "no-time", "fieldsV1": env_fields("grinder", "GRINDER_FILL_MODEL_ENFORCE", "GRINDER_FILL_MODEL_DIR")},
    )
    managers = env_managers(dep, "grinder")
    assert managers["GRINDER_FILL_MODEL_ENFORCE"] == "kubectl-set"  # an entry without time is the oldest
    assert managers["GRINDER_FILL_MODEL_DIR"] == "no-time"


# --- the adapter's reads: uid, managers, unreadable logs -----------------------------------


class FakeApi:
    """Just the client calls `observe_deployment` makes (the pods' logs are `StubLogs`')."""

    def __init__(self, dep: dict, pods: list[dict]):
        self.dep, self.pods = dep, pods
        rs_meta = {"name": "grinder-abc", "uid": "rs-uid", "labels": {"pod-template-hash": "abc"},
                   "annotations": {"deployment.kubernetes.io/revision": "2"},
                   "ownerReferences": [{"uid": dep["metadata"]["uid"]}]}
        self.replica_sets = [{"metadata": rs_meta}]

    def read_namespaced_deployment(self, name, namespace, **_):
        return copy.deepcopy(self.dep)

    def list_namespaced_replica_set(self, namespace, label_selector=None, **_):
        return {"items": copy.deepcopy(self.replica_sets)}

    def list_namespaced_pod(self, namespace, label_selector=None, **_):
        return {"items": copy.deepcopy(self.pods)}


class StubLogs:
    """`LogFollower.observe` answering from `logs` (pod uid -> PodLog); records what it was asked."""

    def __init__(self, logs: dict):
        self.logs = logs
        self.asked: list[tuple] = []

    async def observe(self, owner, namespace, pods, container, *, timeout):
        self.asked.append((owner, namespace, tuple(pods), container))
        return {uid: self.logs.get(uid, PodLog()) for _, uid in pods}

    def forget(self, owner):
        self.asked.append(("forget", owner))


def grinder_pod(name: str) -> dict:
    return {"metadata": {"name": name, "uid": f"{name}-uid", "labels": {"pod-template-hash": "abc"},
                         "creationTimestamp": f"2024-05-01T12:00:0{name[-1]}Z",
                         "ownerReferences": [{"uid": "rs-uid"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


OK_LINE = "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only effective_bps=2500"


def observe(api: FakeApi, logs: StubLogs | None = None, **kwargs):
    adapter = KubernetesAdapter(core=api, apps=api, batch=None, custom=None, to_dict=copy.deepcopy,
                                timeout=1.0, logs=logs or StubLogs({}))
    return adapter, asyncio.run(adapter.observe_deployment("trading", "grinder", "grinder", **kwargs))


def test_observation_carries_uid_and_env_managers():
    dep = with_managed_fields({"manager": "kubectl-set", "time": "2024-05-01T12:30:00Z",
                               "fieldsV1": env_fields("grinder", "GRINDER_FILL_MODEL_ENFORCE")})
    _, seen = observe(FakeApi(dep, []))
    assert seen.uid == "dep-uid"
    assert seen.env_managers["GRINDER_FILL_MODEL_ENFORCE"] == "kubectl-set"
    assert seen.env_managers["GRINDER_FILL_MODEL_DIR"] == ""


MANAGERS = ("kubectl-set", "argocd-controller", "fillprob-operator")
ENV_KEYS = ("GRINDER_FILL_MODEL_ENFORCE", "GRINDER_FILL_MODEL_DIR", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS")


@st.composite
def deployment_versions(draw):
    """A Deployment's history as a tick sees it: each step a new version (new managedFields, a
    new restart-token owner, a new resourceVersion), the same version again, or a version the
    answer gives no resourceVersion (a client that strips it)."""
    steps = []
    for rv in range(1, draw(st.integers(1, 8)) + 1):
        kind = draw(st.sampled_from(["new", "same", "no-rv"]))
        entries = [
            {"manager": draw(st.sampled_from(MANAGERS)), "time": f"2024-05-01T12:{draw(st.integers(0, 59)):02d}:00Z",
             "fieldsV1": env_fields("grinder", *draw(st.lists(st.sampled_from(ENV_KEYS), max_size=3, unique=True)))}
            for _ in range(draw(st.integers(0, 3)))
        ]
        if draw(st.booleans()):
            entries.append({"manager": "fillprob-operator", "time": f"2024-05-01T13:{rv:02d}:00Z", "fieldsV1": {
                "f:spec": {"f:template": {"f:metadata": {"f:annotations": {f"f:{RESTART_TOKEN_ANNOTATION}": {}}}}}}})
        steps.append((kind, entries))
    return steps


@settings(max_examples=150, deadline=None)
@given(deployment_versions())
def test_what_managedfields_say_is_never_remembered_past_the_version_it_was_read_from(steps):
    """Invariant: each observation's `env_managers` and `restart_token_at` are those of the
    Deployment version it observed, however the versions follow each other; and a version
    already observed is not walked again (the walk was 0.3 ms a tick, issue 10)."""
    import fillprob_operator.adapters.kubernetes as kubernetes

    api = FakeApi(deployment(), [])
    adapter = KubernetesAdapter(core=api, apps=api, batch=None, custom=None, to_dict=copy.deepcopy,
                                timeout=1.0, logs=StubLogs({}))
    walks = []
    real = kubernetes.env_managers
    kubernetes.env_managers = lambda dep, name: walks.append(rv_of(dep)) or real(dep, name)
    try:
        rv = 0
        for kind, entries in steps:
            if kind != "same" or rv == 0:
                rv += 1
                api.dep = with_managed_fields(*entries)
                if kind != "no-rv":
                    api.dep["metadata"]["resourceVersion"] = str(rv)
            before = len(walks)
            seen = asyncio.run(adapter.observe_deployment("trading", "grinder", "grinder", rollout="r"))
            assert seen.env_managers == real(api.dep, "grinder")
            assert seen.restart_token_at == restart_token_at(api.dep)
            if kind == "same" and rv_of(api.dep) is not None and before:
                assert len(walks) == before  # the same version: remembered, not walked
        adapter.forget_rollout("trading", "r")
        assert not adapter._views
    finally:
        kubernetes.env_managers = real


def rv_of(dep: dict) -> str | None:
    return dep["metadata"].get("resourceVersion")


def test_new_pods_say_what_their_followed_logs_said_and_a_stream_down_is_missing_data():
    cb = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=3"
    logs = StubLogs({"grinder-abc-1-uid": PodLog(OK_LINE, (cb,), readable=True),
                     "grinder-abc-2-uid": PodLog(None, (), readable=False)})
    _, seen = observe(FakeApi(deployment(), [grinder_pod("grinder-abc-1"), grinder_pod("grinder-abc-2")]), logs,
                      rollout="grinder-rollout")
    first, second = seen.new_pods
    assert (first.pod, first.resolution_line, first.circuit_breaker_lines, first.log_readable) == (
        "grinder-abc-1", OK_LINE, (cb,), True)
    assert (second.pod, second.resolution_line, second.log_readable) == ("grinder-abc-2", None, False)
    # followed for the rollout (its daemon is woken), the managed container only
    assert logs.asked == [(("trading", "grinder-rollout"), "trading",
                           (("grinder-abc-1", "grinder-abc-1-uid"), ("grinder-abc-2", "grinder-abc-2-uid")), "grinder")]


def test_the_new_pods_carry_the_newest_replica_sets_restart_token_not_the_deployments():
    """Right after a patch the Deployment has the new token while its newest ReplicaSet is still
    the previous step's: the pods observed then are that step's, and say so (CI, chaos run:
    an R2 escalated to R1 on the CB lines of the pods R2 was replacing)."""
    dep = deployment()
    dep["spec"]["template"]["metadata"]["annotations"][RESTART_TOKEN_ANNOTATION] = "4-2"
    api = FakeApi(dep, [grinder_pod("grinder-abc-1")])
    api.replica_sets[0]["spec"] = {"template": {"metadata": {"annotations": {RESTART_TOKEN_ANNOTATION: "4-1"}}}}
    _, seen = observe(api)
    assert (seen.restart_token, seen.pods_restart_token) == ("4-2", "4-1")
    assert [p.pod for p in seen.new_pods] == ["grinder-abc-1"]
    api.replica_sets = []  # no ReplicaSet yet: no pods, nobody's token
    _, seen = observe(api)
    assert (seen.restart_token, seen.pods_restart_token, seen.new_pods) == ("4-2", None, ())


def test_a_deployment_gone_stops_following_its_pods():
    api = FakeApi(deployment(), [grinder_pod("grinder-abc-1")])
    logs = StubLogs({})
    adapter, _ = observe(api, logs)
    api.read_namespaced_deployment = lambda *a, **k: (_ for _ in ()).throw(ApiException(status=404))
    seen = asyncio.run(adapter.observe_deployment("trading", "grinder", "grinder"))
    assert seen.exists is False
    assert logs.asked[-1] == (("trading", "grinder"), "trading", (), "")


def test_restart_token_at_is_when_the_annotation_was_last_written() -> None:
    """progressDeadline counts from when our patch reached the Deployment (API.md, Everyday change)."""
    token = {"f:spec": {"f:template": {"f:metadata": {"f:annotations": {f"f:{RESTART_TOKEN_ANNOTATION}": {}}}}}}
    other = {"f:spec": {"f:template": {"f:spec": {"f:containers": {}}}}}
    deployment = {"metadata": {"managedFields": [
        {"manager": "kubectl-client-side-apply", "time": "2026-12-01T10:00:00Z", "fieldsV1": other},
        {"manager": "fillprob-operator", "time": "2026-12-01T10:05:00Z", "fieldsV1": token},
        {"manager": "kubectl-set", "time": "2026-12-01T10:09:00Z", "fieldsV1": other},
    ]}}
    assert restart_token_at(deployment).isoformat() == "2026-12-01T10:05:00+00:00"
    assert restart_token_at({"metadata": {"managedFields": [deployment["metadata"]["managedFields"][0]]}}) is None


class _Discovery:
    """CustomObjectsApi.get_api_resources, answering from a script: a dict or an exception."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, str]] = []

    def get_api_resources(self, group, version, **_):
        self.asked.append((group, version))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_serves_rollouts_reads_discovery_of_its_group_version():
    listed = {"resources": [{"name": "fillprobrollouts"}, {"name": "fillprobrollouts/status"}]}
    other = {"resources": [{"name": "somethingelse"}]}
    custom = _Discovery(listed, other, {}, ApiException(status=404, reason="Not Found"),
                        ApiException(status=503, reason="Service Unavailable"), OSError("connection refused"))
    adapter = KubernetesAdapter(core=None, apps=None, batch=None, custom=custom, to_dict=copy.deepcopy)
    answers = []
    for _ in range(4):
        answers.append(asyncio.run(adapter.serves_rollouts()))
    assert answers == [True, False, False, False]  # 404: the group-version is not served (yet)
    for _ in range(2):  # no answer, or not a useful one: the caller waits and asks again
        with pytest.raises(KubernetesError):
            asyncio.run(adapter.serves_rollouts())
    assert set(custom.asked) == {("grinder.io", "v1alpha1")}


def test_request_labels_name_verb_and_resource():
    from fillprob_operator.adapters.kubernetes import request_labels

    assert request_labels("list_namespaced_replica_set") == ("list", "replicasets")
    assert request_labels("read_namespaced_deployment") == ("get", "deployments")
    assert request_labels("patch_namespaced_custom_object_status") == ("patch", "fillprobrollouts/status")
    assert request_labels("get_namespaced_custom_object") == ("get", "fillprobrollouts")
    assert request_labels("read_namespaced_pod_log") == ("get", "pods/log")
    assert request_labels("get_api_resources") == ("get", "discovery")


def test_open_log_stream_follows_with_timestamps_and_resumes_with_since_time():
    from kubernetes import client

    from fillprob_operator.adapters.kubernetes import open_log_stream

    api = client.ApiClient(client.Configuration(host="https://kube.test:6443"))
    sent = []

    class Answer:
        status, response = 200, "the stream"

    def call_api(method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        sent.append((method, url, _request_timeout))
        assert header_params["Accept"] == "application/json"  # text/plain is refused (406)
        return Answer()

    api.call_api = call_api
    assert open_log_stream(api, "trading", "grinder-abc-1", "grinder", "2024-05-01T12:00:00Z", timeout=7) == "the stream"
    open_log_stream(api, "trading", "grinder-abc-1", "grinder", None, timeout=7)
    method, url, timeout = sent[0]
    assert method == "GET" and timeout[0] == 7
    assert url == ("https://kube.test:6443/api/v1/namespaces/trading/pods/grinder-abc-1/log"
                   "?container=grinder&follow=true&timestamps=true&sinceTime=2024-05-01T12%3A00%3A00Z")
    assert "sinceTime" not in sent[1][1]
