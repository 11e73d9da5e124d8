"""What `observe_deployment` derives from the caches' frozen bytes, and remembers per rollout
(kubernetes.py `_DeploymentView`, `_derived`): never anything but what a fresh derivation from
the same objects says (issue 10: a steady-state tick thawed and walked the same Deployment,
ReplicaSets and pods at every tick)."""

from __future__ import annotations

import asyncio
import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from fillprob_operator.adapters.kubernetes import RESTART_TOKEN_ANNOTATION, Caches, KubernetesAdapter
from fillprob_operator.adapters.logs import PodLog
from fillprob_operator.adapters.watches import (
    WatchCache, project_deployment, project_pod, project_replica_set,
)

NS = "trading"
OWNER = (NS, "grinder-rollout")
CONTAINERS = ("grinder", "sidecar", "gone", None)


class Logs:
    """`LogFollower.observe`: every pod logged the resolution line."""

    async def observe(self, owner, namespace, pods, container, *, timeout):
        return {uid: PodLog(f"FILL_PROB_THRESHOLD_RESOLUTION_OK pod={uid}", (), True) for _, uid in pods}

    def forget(self, owner):
        pass


class World:
    """One Deployment, its ReplicaSets and pods, each object with its own resourceVersion; the
    caches listed from it whenever it changed (or on `relist`, the same objects again)."""

    def __init__(self) -> None:
        self.rv = 1
        self.uid = "dep-1"
        self.deployment = {
            "metadata": {"name": "grinder", "namespace": NS, "uid": self.uid, "generation": 1,
                         "resourceVersion": "1", "labels": {"app": "grinder"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "grinder"}},
                     "template": {"metadata": {"labels": {"app": "grinder"}, "annotations": {}},
                                  "spec": {"containers": [
                                      {"name": "grinder", "env": [{"name": "GRINDER_FILL_MODEL_ENFORCE", "value": "0"}]},
                                      {"name": "sidecar"}]}}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        }
        self.replica_sets: list[dict] = []
        self.pods: list[dict] = []
        self.caches = Caches(
            deployments=WatchCache("Deployment", source=None, namespaces=(NS,), project=project_deployment),
            replica_sets=WatchCache("ReplicaSet", source=None, namespaces=(NS,), project=project_replica_set),
            pods=WatchCache("Pod", source=None, namespaces=(NS,), project=project_pod),
        )
        self.relist()

    def touch(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def relist(self) -> None:
        self.caches.deployments.apply_list(NS, [self.deployment] if self.deployment else [], str(self.rv))
        self.caches.replica_sets.apply_list(NS, self.replica_sets, str(self.rv))
        self.caches.pods.apply_list(NS, self.pods, str(self.rv))

    def change(self, what: str, n: int) -> None:
        dep = self.deployment
        template = dep["spec"]["template"]
        if what == "env":
            template["spec"]["containers"][n % 2].setdefault("env", []).append(
                {"name": f"KEY_{n}", "value": str(n)})
            dep["metadata"]["generation"] += 1
            self.touch(dep)
        elif what == "status":
            dep["status"]["availableReplicas"] = n % 2
            dep["status"]["observedGeneration"] = dep["metadata"]["generation"] - n % 2
            self.touch(dep)
        elif what == "token":
            template["metadata"]["annotations"][RESTART_TOKEN_ANNOTATION] = f"1-{n}"
            dep["metadata"]["managedFields"] = [{"manager": "fillprob-operator", "time": f"2024-05-01T12:{n % 60:02d}:00Z",
                                                 "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {
                                                     "f:annotations": {f"f:{RESTART_TOKEN_ANNOTATION}": {}}}}}}}]
            self.touch(dep)
        elif what == "recreate":
            self.uid = f"dep-{n}-{self.rv}"
            dep["metadata"]["uid"] = self.uid
            self.touch(dep)
        elif what == "new_rs":
            pod_hash = f"h{len(self.replica_sets)}"
            rs = {"metadata": {"name": f"grinder-{pod_hash}", "namespace": NS, "uid": f"rs-{pod_hash}",
                               "labels": {"app": "grinder", "pod-template-hash": pod_hash},
                               "annotations": {"deployment.kubernetes.io/revision": str(n % 4)},
                               "ownerReferences": [{"uid": self.uid}]},
                  "spec": {"template": {"metadata": {"annotations": {RESTART_TOKEN_ANNOTATION: f"rs-{n}"}}}}}
            self.replica_sets.append(rs)
            self.touch(rs)
        elif what == "rs_owner" and self.replica_sets:
            rs = self.replica_sets[n % len(self.replica_sets)]
            rs["metadata"]["ownerReferences"] = [{"uid": self.uid if n % 2 else "someone-else"}]
            self.touch(rs)
        elif what == "pod" and self.replica_sets:
            rs = self.replica_sets[n % len(self.replica_sets)]
            labels = rs["metadata"]["labels"]
            pod = {"metadata": {"name": f"grinder-{len(self.pods)}", "namespace": NS, "uid": f"pod-{len(self.pods)}",
                                "labels": dict(labels), "creationTimestamp": f"2024-05-01T12:00:{n % 60:02d}Z",
                                "ownerReferences": [{"uid": rs["metadata"]["uid"]}]},
                   "status": {"conditions": [{"type": "Ready", "status": "True" if n % 2 else "False"}]}}
            self.pods.append(pod)
            self.touch(pod)
        elif what == "ready" and self.pods:
            pod = self.pods[n % len(self.pods)]
            condition = pod["status"]["conditions"][0]
            condition["status"] = "False" if condition["status"] == "True" else "True"
            self.touch(pod)
        elif what == "terminating" and self.pods:
            pod = self.pods[n % len(self.pods)]
            pod["metadata"]["deletionTimestamp"] = "2024-05-01T13:00:00Z"
            self.touch(pod)
        elif what == "pod_gone" and self.pods:
            self.pods.pop(n % len(self.pods))
            self.rv += 1
        self.relist()


def adapter(caches: Caches) -> KubernetesAdapter:
    return KubernetesAdapter(core=None, apps=None, batch=None, custom=None, to_dict=copy.deepcopy,
                             timeout=1.0, logs=Logs(), caches=caches)


def observe(kube: KubernetesAdapter, world: World, container: str | None):
    return asyncio.run(kube.observe_deployment(NS, "grinder", container, rollout=OWNER[1], floor=world.rv))


STEPS = st.lists(st.tuples(
    st.sampled_from(["same", "relist", "container", "env", "status", "token", "recreate", "new_rs", "rs_owner",
                     "pod", "ready", "terminating", "pod_gone"]),
    st.integers(0, 1000),
), min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_a_remembered_observation_is_what_a_fresh_one_of_the_same_objects_says(steps):
    """Invariant, over random histories of the Deployment, its ReplicaSets and pods (changed,
    re-listed unchanged, recreated, pods ready or not, going or gone) and of the container the
    spec names: the observation of an adapter that remembers is equal to that of a new adapter
    reading the same caches, and so is the Deployment a rollback's patch would start from. When
    nothing changed, nothing is derived again."""
    world = World()
    kube = adapter(world.caches)
    container: str | None = "grinder"
    observe(kube, world, container)
    for what, n in steps:
        before = (kube._views.get(OWNER), dict(kube._derivations.get(OWNER, {})))
        if what == "container":
            container = CONTAINERS[n % len(CONTAINERS)]
        elif what != "same":
            world.change(what, n)
        seen = observe(kube, world, container)
        fresh = adapter(world.caches)
        assert seen == observe(fresh, world, container)
        assert kube._observed == fresh._observed
        if what in ("same", "relist"):
            assert (kube._views.get(OWNER), kube._derivations.get(OWNER, {})) == before
            if what == "same":
                assert kube._views.get(OWNER) is before[0]
    kube.forget_rollout(*OWNER)
    assert not kube._views and not kube._derivations


def test_the_rollbacks_patch_starts_from_the_caches_bytes_not_a_copy():
    """The Deployment a rollback's patch starts from is the cache's own frozen bytes: kept
    between ticks at no cost (it was pickled again at every tick)."""
    world = World()
    kube = adapter(world.caches)
    observe(kube, world, "grinder")
    assert kube._observed[(NS, "grinder")] is world.caches.deployments.entry(NS, "grinder").frozen
