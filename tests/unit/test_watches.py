"""Watch-backed caches (adapters/watches.py) and how the adapter trusts them (issue 10, point 1):
a store is read only while synced and at least as new as what the tick holds; a lagging, dropped
or never-synced watch means a direct read, as before; our own last write always wins over a
cache that has not delivered it yet."""

from __future__ import annotations

import asyncio
import copy
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from fillprob_operator.adapters import watches
from fillprob_operator.adapters.kubernetes import KubernetesAdapter
from fillprob_operator.adapters.watches import (
    ALL_NAMESPACES,
    Gone,
    WatchCache,
    newer,
    project_deployment,
    project_pod,
    project_replica_set,
    project_rollout,
    rv_int,
)

NS = "trading"


def obj(name: str, rv: int, ns: str = NS, **extra) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv), **extra.pop("meta", {})}, **extra}


def event(type_: str, o: dict) -> dict:
    return {"type": type_, "object": o}


def bookmark(rv: int) -> dict:
    return {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(rv)}}}


# -- resourceVersions -----------------------------------------------------------------------


def test_resource_versions_compare_as_integers_or_not_at_all():
    assert rv_int(obj("a", 99)) == 99 and rv_int("1000") == 1000
    assert rv_int("") is None and rv_int("abc") is None and rv_int({"metadata": {}}) is None
    assert newer(obj("a", 99), obj("a", 100))["metadata"]["resourceVersion"] == "100"  # not "99" > "100"
    assert newer(obj("a", 100), obj("a", 99))["metadata"]["resourceVersion"] == "100"
    assert newer(obj("a", 5), {"metadata": {"resourceVersion": "x1"}}) is None
    assert newer(None, obj("a", 5)) is None


# -- the store ------------------------------------------------------------------------------


def test_a_list_syncs_the_store_and_replaces_what_was_there():
    cache = WatchCache("Deployment", source=None, namespaces=(NS,))
    assert not cache.fresh(NS, 1)
    cache.apply_list(NS, [obj("a", 10), obj("b", 11)], "20")
    assert cache.state(NS) == (True, 20)
    assert cache.fresh(NS, 20) and not cache.fresh(NS, 21) and not cache.fresh(NS, None)
    assert cache.get(NS, "a")["metadata"]["resourceVersion"] == "10"
    cache.apply_list(NS, [obj("b", 11)], "30")  # "a" was deleted while the watch was down
    assert cache.get(NS, "a") is None and cache.get(NS, "b") is not None


def test_events_apply_in_order_and_an_older_version_never_replaces_a_newer():
    cache = WatchCache("Deployment", source=None, namespaces=(NS,))
    cache.apply_list(NS, [], "5")
    cache.apply_event(NS, event("ADDED", obj("a", 6)))
    cache.apply_event(NS, event("MODIFIED", obj("a", 8, spec={"replicas": 2})))
    cache.apply_event(NS, event("MODIFIED", obj("a", 7, spec={"replicas": 1})))
    assert cache.get(NS, "a")["spec"] == {"replicas": 2}
    cache.apply_event(NS, bookmark(12))
    assert cache.state(NS) == (True, 12)
    cache.apply_event(NS, event("DELETED", obj("a", 13)))
    assert cache.get(NS, "a") is None and cache.state(NS) == (True, 13)


def test_a_namespace_that_is_not_watched_is_never_fresh():
    cache = WatchCache("Pod", source=None, namespaces=("other",))
    cache.apply_list("other", [], "50")
    assert not cache.fresh(NS, 1) and cache.select(NS, {}) == []
    everywhere = WatchCache("Pod", source=None)  # no namespaces: all of them, one store
    everywhere.apply_list("", [obj("p", 3, ns="x"), obj("q", 3, ns="y")], "9")
    assert everywhere.fresh("x", 9) and [p["metadata"]["name"] for p in everywhere.select("y", {})] == ["q"]


def test_a_dropped_watch_is_not_synced_until_listed_again():
    cache = WatchCache("Pod", source=None, namespaces=(NS,))
    cache.apply_list(NS, [], "5")
    cache.mark_down(NS)
    assert not cache.fresh(NS, 1)
    cache.apply_event(NS, bookmark(9))  # a late event does not make it trusted again
    assert not cache.fresh(NS, 1)
    cache.apply_list(NS, [], "10")
    assert cache.fresh(NS, 10)


def test_projections_keep_what_the_observations_read_and_little_else():
    pod = {"metadata": {"name": "p", "namespace": NS, "uid": "u", "resourceVersion": "3", "labels": {"a": "b"},
                        "ownerReferences": [{"uid": "rs"}], "creationTimestamp": "t", "managedFields": [{"x": 1}],
                        "annotations": {"big": "x" * 1000}},
           "spec": {"containers": [{"name": "c", "image": "i"}]},
           "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                      "containerStatuses": [{"name": "preflight", "image": "i",
                                             "state": {"terminated": {"exitCode": 3}}}]}}
    kept = project_pod(pod)
    assert "spec" not in kept and "managedFields" not in kept["metadata"] and "annotations" not in kept["metadata"]
    assert kept["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert kept["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    deployment = project_deployment({"metadata": {"name": "d", "managedFields": [{"m": 1}]}, "spec": {"x": 1}})
    assert deployment["metadata"]["managedFields"] == [{"m": 1}] and deployment["spec"] == {"x": 1}
    # a ReplicaSet: its revision and whose restart its pods are (the template's restart token), no more
    rs = {"metadata": {"name": "r", "annotations": {"deployment.kubernetes.io/revision": "7", "big": "x" * 1000}},
          "spec": {"replicas": 2, "template": {"metadata": {"annotations": {"grinder.io/restart-token": "3-2",
                                                                           "prometheus.io/scrape": "true"}},
                                               "spec": {"containers": [{"name": "c", "env": [{"name": "E"}]}]}}}}
    assert project_replica_set(rs) == {
        "metadata": {"name": "r", "annotations": {"deployment.kubernetes.io/revision": "7"}},
        "spec": {"template": {"metadata": {"annotations": {"grinder.io/restart-token": "3-2"}}}}}
    assert project_replica_set({"metadata": {"name": "r"}, "spec": {"template": {}}}) == {"metadata": {"name": "r"}}


ANNOTATIONS = ("grinder.io/rollback", "grinder.io/rollback-reason", "kopf.zalando.org/last-handled-configuration")


@st.composite
def managed_fields(draw):
    """managedFields as a FillProbRollout gathers them: kubectl's spec and annotations, kopf's
    annotation, the operator's status writes (the API server checks their shape)."""
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        fields = {}
        owned = draw(st.lists(st.sampled_from(ANNOTATIONS), max_size=3, unique=True))
        if owned:
            fields["f:metadata"] = {"f:annotations": {".": {}, **{f"f:{a}": {} for a in owned}}}
        if draw(st.booleans()):
            fields["f:spec"] = {"f:targetPhase": {}}
        if draw(st.booleans()):
            fields["f:status"] = {"f:history": {}, "f:conditions": {}}
        entry = {"manager": draw(st.sampled_from(["kubectl-annotate", "kopf", "fillprob-operator", "argocd"])),
                 "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": fields,
                 "apiVersion": "grinder.io/v1alpha1"}
        if draw(st.booleans()):
            entry["time"] = f"2026-12-01T12:{draw(st.integers(0, 59)):02d}:00Z"
        if "f:status" in fields and not owned:
            entry["subresource"] = "status"
        entries.append(entry)
    return entries


@settings(max_examples=200, deadline=None)
@given(managed_fields(), st.sampled_from(["R1", "R2", None]))
def test_a_cached_rollout_keeps_who_set_each_annotation_and_no_other_managed_field(entries, rollback):
    """Invariant: the rollout as the cache keeps it (`project_rollout`) names the same owner of
    every annotation as the rollout itself, so a manual rollback reads the same; everything
    else but managedFields is kept as it is (the status subresource's entry was a quarter of a
    rollout, unpickled at every tick: issue 10)."""
    from fillprob_operator.reconciler import _annotation_owner, rollback_request_from_annotation

    body = {"apiVersion": "grinder.io/v1alpha1", "kind": "FillProbRollout",
            "metadata": {"name": "r", "namespace": NS, "uid": "u", "resourceVersion": "9",
                         "annotations": {"grinder.io/rollback": rollback} if rollback else {},
                         "managedFields": entries},
            "spec": {"targetPhase": "Canary"}, "status": {"state": "Observing", "history": [{"action": "x"}]}}
    original = copy.deepcopy(body)
    kept = project_rollout(body)
    assert body == original  # the watch's object is not changed
    for annotation in ANNOTATIONS:
        assert _annotation_owner(kept, annotation) == _annotation_owner(body, annotation)
    assert rollback_request_from_annotation(kept) == rollback_request_from_annotation(body)
    assert {k: v for k, v in kept.items() if k != "metadata"} == {k: v for k, v in body.items() if k != "metadata"}
    assert {k: v for k, v in kept["metadata"].items() if k != "managedFields"} == {
        k: v for k, v in body["metadata"].items() if k != "managedFields"}
    for entry in kept["metadata"]["managedFields"]:
        assert set(entry["fieldsV1"]) == {"f:metadata"} and set(entry["fieldsV1"]["f:metadata"]) == {"f:annotations"}


# -- the thread: list, watch, 410, drops ----------------------------------------------------


class ScriptedSource:
    """Lists answer from `items`/`rv`; each watch plays the next script: a list of events, then
    "end" (server timeout), "gone" (410) or "drop" (connection broken), or "block" until closed."""

    def __init__(self, scripts):
        self.items, self.rv = [], "10"
        self.scripts = list(scripts)
        self.lists, self.watches = 0, []
        self.released = threading.Event()

    def list(self, namespace):
        self.lists += 1
        return copy.deepcopy(self.items), self.rv

    def watch(self, namespace, resource_version, timeout_seconds):
        self.watches.append(resource_version)
        events, how = self.scripts.pop(0) if self.scripts else ([], "block")
        yield from events
        if how == "gone":
            yield {"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}
        elif how == "drop":
            raise ConnectionError("Connection broken")
        elif how == "block":
            self.released.wait(10)


def wait_for(predicate, what, deadline=5.0):
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_the_thread_resumes_after_a_server_timeout_and_relists_after_410_and_drops(monkeypatch):
    monkeypatch.setattr(watches, "RETRY_SECONDS", (0.01,))
    source = ScriptedSource([
        ([event("ADDED", obj("a", 11))], "end"),  # resumed from 11: nothing lost, no re-list
        ([bookmark(15)], "gone"),                 # 410: re-list
        ([], "drop"),                             # broken: not synced, re-list after a pause
    ])
    counted = []
    cache = WatchCache("Deployment", source, namespaces=(NS,), count=counted.append)
    cache.start()
    try:
        wait_for(lambda: source.lists == 3 and source.watches[-1:] == ["10"] and len(source.watches) == 4,
                 "three lists and the fourth watch")
        assert source.watches == ["10", "11", "10", "10"]
        assert counted.count("list") == 3 and counted.count("watch") == 4
        assert cache.fresh(NS, 10)
    finally:
        cache.close()
        source.released.set()
    assert not cache.fresh(NS, 10)


class Tracked(dict):
    """A dict a weak reference can follow: whether anything still holds the object."""


def test_neither_the_listed_objects_nor_the_last_event_are_kept_while_the_watch_waits():
    """The store keeps projections; the whole objects a LIST or an event delivered (a Deployment
    with its managedFields, every pod of the namespace) must die once applied, not stay alive in
    the thread's frames for as long as the watch runs (they did: tens of MiB at N=100)."""
    import gc
    import weakref

    listed = [Tracked(obj(f"p{i}", 5, spec={"big": "x" * 1000})) for i in range(3)]
    watched = Tracked(event("MODIFIED", obj("p0", 11, spec={"big": "y" * 1000})))
    refs = [weakref.ref(o) for o in (*listed, watched)]

    class Once(ScriptedSource):
        def list(self, namespace):
            self.lists += 1
            items, listed[:] = list(listed), []
            return items, "10"

        def watch(self, namespace, resource_version, timeout_seconds):
            self.watches.append(resource_version)
            nonlocal watched
            one, watched = watched, None
            yield one
            del one
            self.released.wait(10)

    source = Once([])
    cache = WatchCache("Pod", source, namespaces=(NS,))
    cache.start()
    try:
        wait_for(lambda: cache.fresh(NS, 11), "the list and the event applied")
        assert [o["metadata"]["name"] for o in cache.select(NS, {})] == ["p0", "p1", "p2"]
        gc.collect()
        assert [r() is None for r in refs] == [True] * 4
    finally:
        cache.close()
        source.released.set()


def test_client_source_keeps_no_event_while_it_waits_for_the_next_line():
    from fillprob_operator.adapters.watches import ClientSource

    held = []

    class Waiting(FakeHTTPResponse):
        def stream(self, amt=None, decode_content=False):
            yield b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"7"}}}\n'
            # The next read blocks here, in a real watch for minutes: what does `watch` hold?
            held.append(sorted(k for k, v in events.gi_frame.f_locals.items() if isinstance(v, (str, dict)) and v))

        def close(self):
            pass

    source = ClientSource(lambda namespace, **kw: Waiting(b""), lambda **kw: None, timeout=3.0)
    events = source.watch(NS, "5", 240)
    assert next(events)["type"] == "ADDED"
    assert list(events) == []
    assert held == [["namespace", "resource_version"]]


def test_a_list_that_fails_leaves_the_store_unsynced_and_is_retried(monkeypatch):
    monkeypatch.setattr(watches, "RETRY_SECONDS", (0.01,))
    source = ScriptedSource([])
    failures = iter([ConnectionError("refused"), ConnectionError("refused")])
    real_list = source.list

    def flaky(namespace):
        error = next(failures, None)
        if error:
            raise error
        return real_list(namespace)

    source.list = flaky
    cache = WatchCache("Pod", source, namespaces=(NS,))
    assert not cache.fresh(NS, 1)
    cache.start()
    try:
        wait_for(lambda: cache.fresh(NS, 10), "the third list")
    finally:
        cache.close()
        source.released.set()


def test_gone_from_the_source_itself_relists():
    class GoneOnce(ScriptedSource):
        def watch(self, namespace, resource_version, timeout_seconds):
            if len(self.watches) == 0:
                self.watches.append(resource_version)
                raise Gone()
            yield from super().watch(namespace, resource_version, timeout_seconds)

    source = GoneOnce([])
    cache = WatchCache("Pod", source, namespaces=(NS,))
    cache.start()
    try:
        wait_for(lambda: source.lists == 2 and cache.fresh(NS, 10), "a re-list after Gone")
    finally:
        cache.close()
        source.released.set()


# -- the adapter's trust rule ----------------------------------------------------------------


def adapter_with(cache) -> KubernetesAdapter:
    from fillprob_operator.adapters.kubernetes import Caches

    return KubernetesAdapter(core=object(), apps=object(), batch=object(), custom=object(), to_dict=dict,
                             caches=Caches(deployments=cache))


def observe(adapter, cache, floor, server, as_of=None):
    reads = []

    async def read():
        reads.append(1)
        return copy.deepcopy(server.get("a"))

    seen = asyncio.run(adapter._cached_or_read("Deployment", cache, NS, "a", floor, read, as_of))
    return seen, bool(reads)


def test_a_lagging_cache_is_not_read_and_our_own_write_wins():
    cache = WatchCache("Deployment", source=None, namespaces=(NS,))
    cache.apply_list(NS, [obj("a", 10)], "10")
    adapter = adapter_with(cache)
    server = {"a": obj("a", 10)}
    assert observe(adapter, cache, 10, server) == (obj("a", 10), False)  # fresh: no request
    assert observe(adapter, cache, 12, server)[1]  # the rollout is newer than the cache: read
    adapter._written[("Deployment", NS, "a")] = obj("a", 14, spec={"patched": True})
    server["a"] = obj("a", 14, spec={"patched": True})
    seen, read = observe(adapter, cache, 10, server)
    assert seen["spec"] == {"patched": True} and not read  # newer of (cache 10, written 14)
    cache.apply_event(NS, event("MODIFIED", obj("a", 16, spec={"by": "someone"})))
    seen, read = observe(adapter, cache, 10, server)
    assert seen["spec"] == {"by": "someone"} and not read
    assert ("Deployment", NS, "a") not in adapter._written  # the cache has it now: forgotten


# -- the promise, for any interleaving --------------------------------------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("other_write")), st.tuples(st.just("our_write")), st.tuples(st.just("status_write")),
        st.tuples(st.just("delete")), st.tuples(st.just("deliver"), st.integers(1, 4)),
        st.tuples(st.just("drop")), st.tuples(st.just("relist")), st.tuples(st.just("observe")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(STEPS, st.booleans())
def test_an_observation_is_never_older_than_the_tick_nor_our_write_and_equals_a_read_once_delivered(steps, remember):
    """One Deployment "a" and the rollout, one resourceVersion counter. Writes by others and by
    us, status writes (the tick's floor), deletions; the watch delivers late, drops, re-lists.
    Each observation is a version that was current at or after both its floor and our last
    write; with every event delivered and the watch up, it equals a direct read.

    `remember`: as `observe_deployment` does, the floor after the first observation is the
    resourceVersion as of which the last one was made (`as_of`), not the rollout's: then each
    observation is also never older than the one before, and is the object as of what `as_of`
    says (the version current at that resourceVersion)."""
    rv = 10
    server = {"a": obj("a", rv, spec={"n": 0})}
    history = [(rv, copy.deepcopy(server["a"]))]  # (rv, the object from then on; None = gone)
    log: list[tuple[int, dict]] = []
    delivered = 0
    floor = rv
    cache = WatchCache("Deployment", source=None, namespaces=(NS,))
    cache.apply_list(NS, [copy.deepcopy(server["a"])], str(rv))
    adapter = adapter_with(cache)
    our_last: int | None = None
    as_of: dict[str, int] = {}

    def current_at(at):
        return [version for moment, version in history if moment <= at][-1]

    def write(spec, ours):
        nonlocal rv, our_last
        rv += 1
        server["a"] = obj("a", rv, spec=spec)
        history.append((rv, copy.deepcopy(server["a"])))
        log.append((rv, event("MODIFIED" if len(history) > 1 and history[-2][1] else "ADDED",
                              copy.deepcopy(server["a"]))))
        if ours:
            adapter._written[("Deployment", NS, "a")] = copy.deepcopy(server["a"])
            our_last = rv

    for step in [*steps, ("deliver", 10_000), ("observe",)]:
        kind = step[0]
        if kind == "other_write":
            write({"n": rv, "by": "other"}, ours=False)
        elif kind == "our_write":
            write({"n": rv, "by": "us"}, ours=True)
        elif kind == "status_write":
            rv += 1
            floor = rv  # the tick reads the rollout after its last status write
            log.append((rv, bookmark(rv)))
        elif kind == "delete" and server.get("a") is not None:
            rv += 1
            gone = obj("a", rv)
            server.pop("a")
            history.append((rv, None))
            log.append((rv, event("DELETED", gone)))
        elif kind == "deliver":
            for _, e in log[delivered:delivered + step[1]]:
                cache.apply_event(NS, copy.deepcopy(e))
            delivered = min(len(log), delivered + step[1])
        elif kind == "drop":
            cache.mark_down(NS)
        elif kind == "relist":
            cache.apply_list(NS, [copy.deepcopy(server["a"])] if "a" in server else [], str(rv))
            delivered = len(log)
        elif kind == "observe":
            tick_floor = as_of.get("Deployment", floor) if remember else floor
            seen, _ = observe(adapter, cache, tick_floor, server, as_of if remember else None)
            lower = max(tick_floor, our_last or 0)
            if remember and seen is not None:
                assert current_at(as_of["Deployment"]) == seen, (seen, as_of, history)
            # The version seen was the current one at some moment at or after `lower`: it is
            # the current one, or the write that replaced it came after `lower`.
            moments = [at for at, version in history if version == seen]
            assert moments, f"{seen} was never a version of the object"
            later = [at for at, _ in history if at > max(moments)]
            assert not later or min(later) > lower, (seen, lower, history)
            if delivered == len(log) and cache.state(NS)[0]:
                assert seen == server.get("a")
    # Finally, everything delivered: a synced cache is a direct read.
    if cache.state(NS)[0]:
        assert cache.get(NS, "a") == server.get("a")


# -- the official client, as the caches call it -----------------------------------------------


class FakeHTTPResponse:
    def __init__(self, body: bytes, chunks=()):
        self.data, self.chunks, self.closed = body, list(chunks), False

    def stream(self, amt=None, decode_content=False):
        yield from self.chunks

    def close(self):
        self.closed = True

    def release_conn(self):
        pass


def test_client_source_lists_and_watches_through_raw_responses():
    from kubernetes.client.exceptions import ApiException

    from fillprob_operator.adapters.watches import ClientSource

    calls = []
    watch_chunks = [b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"7"}}}\n{"type":"BOO',
                    b'KMARK","object":{"metadata":{"resourceVersion":"9"}}}\n']

    def namespaced(namespace, **kwargs):
        calls.append((namespace, kwargs))
        if kwargs.get("watch"):
            if kwargs["resource_version"] == "1":
                raise ApiException(status=410, reason="Gone")
            return FakeHTTPResponse(b"", watch_chunks)
        return FakeHTTPResponse(b'{"metadata":{"resourceVersion":"5"},"items":[{"metadata":{"name":"a"}}]}')

    source = ClientSource(namespaced, lambda **kw: None, timeout=3.0)
    assert source.list(NS) == ([{"metadata": {"name": "a"}}], "5")
    events = list(source.watch(NS, "5", 240))
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    _, kwargs = calls[-1]
    assert kwargs["allow_watch_bookmarks"] and kwargs["timeout_seconds"] == 240
    assert kwargs["_preload_content"] is False and kwargs["_request_timeout"] == (3.0, watches.READ_IDLE_SECONDS)
    try:
        list(source.watch(NS, "1", 240))
    except Gone:
        pass
    else:
        raise AssertionError("410 must raise Gone")


def test_build_caches_makes_one_cache_per_kind_and_counts_its_requests():
    from kubernetes import client

    from fillprob_operator.adapters.kubernetes import build_caches

    counted = []
    caches = build_caches(client.ApiClient(client.Configuration()), ("a", "b"), timeout=3.0,
                          count=lambda verb, resource: counted.append((verb, resource)))
    assert [c.kind for c in caches.all()] == ["Deployment", "ReplicaSet", "Pod", "Job", "FillProbRollout"]
    assert all(c.scopes == ("a", "b") for c in caches.all())
    # each kind kept as its projection: the rollouts with their managedFields cut to annotations
    assert [c.project for c in caches.all()] == [
        project_deployment, project_replica_set, project_pod, watches.project_job, project_rollout]
    caches.pods._count("watch")
    assert counted == [("watch", "pods")]


# -- the rollout itself: GET first, then the cache, never older than what we read, wrote or kopf saw


class FakeCustom:
    """GET and status patch of one FillProbRollout, each a new resourceVersion in `world`."""

    def __init__(self, world):
        self.world = world
        self.gets = 0

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        self.gets += 1
        return copy.deepcopy(self.world["obj"])

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **_):
        self.world["write"](body["status"], ours=True)
        return copy.deepcopy(self.world["obj"])


ROLLOUT_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("other_write")), st.tuples(st.just("our_write")),
        st.tuples(st.just("kopf_sees"), st.integers(0, 3)), st.tuples(st.just("deliver"), st.integers(1, 4)),
        st.tuples(st.just("drop")), st.tuples(st.just("relist")), st.tuples(st.just("tick")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ROLLOUT_STEPS)
def test_a_cached_rollout_is_never_older_than_what_this_process_read_or_wrote_or_kopf_saw(steps):
    from fillprob_operator.adapters.kubernetes import Caches

    rv = 10
    history: list[tuple[int, dict]] = []
    log: list[dict] = []
    world: dict = {}

    def write(status, ours=False):
        nonlocal rv
        rv += 1
        world["obj"] = obj("r", rv, status=dict(status))
        history.append((rv, copy.deepcopy(world["obj"])))
        log.append(event("MODIFIED", copy.deepcopy(world["obj"])))

    world["write"] = write
    write({"n": 0})
    cache = WatchCache("FillProbRollout", source=None, namespaces=(NS,))
    cache.apply_list(NS, [copy.deepcopy(world["obj"])], str(rv))
    delivered = len(log)
    custom = FakeCustom(world)
    adapter = KubernetesAdapter(core=object(), apps=object(), batch=object(), custom=custom, to_dict=dict,
                                caches=Caches(rollouts=cache))
    lower = 0  # the newest version this process read or wrote, or kopf saw
    kopf_seen = 0

    async def read(cached):
        return await adapter.read_rollout(NS, "r", cached=cached, floor=kopf_seen)

    first = asyncio.run(read(False))  # the daemon's first tick
    lower = rv_int(first)
    for step in [*steps, ("deliver", 10_000), ("tick",)]:
        kind = step[0]
        if kind == "other_write":
            write({"n": rv, "by": "other"})
        elif kind == "our_write":
            asyncio.run(adapter.patch_rollout_status(NS, "r", {"n": rv, "by": "us"}))
            lower = max(lower, rv)
        elif kind == "kopf_sees":  # kopf's watch, behind by up to 3 versions
            kopf_seen = max(kopf_seen, history[max(0, len(history) - 1 - step[1])][0])
            lower = max(lower, kopf_seen)
        elif kind == "deliver":
            for e in log[delivered:delivered + step[1]]:
                cache.apply_event(NS, copy.deepcopy(e))
            delivered = min(len(log), delivered + step[1])
        elif kind == "drop":
            cache.mark_down(NS)
        elif kind == "relist":
            cache.apply_list(NS, [copy.deepcopy(world["obj"])], str(rv))
            delivered = len(log)
        elif kind == "tick":
            gets = custom.gets
            seen = asyncio.run(read(True))
            assert seen is not None
            if custom.gets == gets:  # answered by the cache: nothing kept that the cache holds
                held = adapter._written.get(("FillProbRollout", NS, "r"))
                assert held is None or rv_int(held) > (cache.state(NS)[1] or 0), "a cached rollout kept"
            seen_rv = rv_int(seen)
            assert seen == next(v for at, v in history if at == seen_rv), "not a version that existed"
            assert seen_rv >= lower, (seen_rv, lower)  # one object: its versions' rvs only grow
            lower = seen_rv
            if delivered == len(log) and cache.state(NS)[0]:
                assert seen == world["obj"]


_LABELS = st.dictionaries(st.sampled_from(["app", "tier", "pod-template-hash"]), st.sampled_from(["a", "b", "c"]), max_size=3)
_OBJECT = st.tuples(st.sampled_from(["ns1", "ns2"]), st.sampled_from(["x", "y", "z", "w"]), _LABELS)
_STEP = st.one_of(
    st.tuples(st.just("list"), st.lists(_OBJECT, max_size=6)),
    st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]), _OBJECT),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_STEP, max_size=30), namespace=st.sampled_from(["ns1", "ns2", "ns3"]), wanted=_LABELS)
def test_select_by_the_label_index_equals_a_scan_of_every_object(steps, namespace, wanted):
    """The index `select` uses is kept through lists, updates that change labels and deletes:
    it finds exactly what a scan of the store with the selector finds, in key order."""
    cache = WatchCache("pods", source=None, project=dict)
    rv = 0
    for step in steps:
        rv += 1
        if step[0] == "list":
            items = {(ns, n): {"metadata": {"namespace": ns, "name": n, "labels": labels, "resourceVersion": str(rv)}}
                     for ns, n, labels in step[1]}
            cache.apply_list(ALL_NAMESPACES, list(items.values()), str(rv))
        else:
            ns, n, labels = step[1]
            cache.apply_event(ALL_NAMESPACES, {"type": step[0], "object": {
                "metadata": {"namespace": ns, "name": n, "labels": labels, "resourceVersion": str(rv)}}})
    store = cache._stores[ALL_NAMESPACES]
    scanned = sorted(
        (key for key, e in store.objects.items()
         if e.namespace == namespace and all(e.labels.get(k) == v for k, v in wanted.items())),
    )
    assert [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in cache.select(namespace, wanted)] == scanned
    # And nothing stale is left in the index: every indexed key is an object carrying the term.
    for (ns, label, value), keys in store.index.items():
        for key in keys:
            entry = store.objects[key]
            assert entry.namespace == ns and (label == "" or entry.labels.get(label) == value)
