"""Watch-backed caches of Deployments, ReplicaSets, Pods, Jobs and FillProbRollouts (issue 10,
point 1).

One `WatchCache` per kind keeps, per watched namespace (or cluster-wide when the operator
watches all namespaces), a projection of every object: list, then watch from the list's
resourceVersion with bookmarks, in a thread of its own (the official client blocks).

Why not `@kopf.index` (kopf 1.45 source, `_core/reactor/queueing.py`, `processing.py`):
kopf drops its "indexed" toggle once, after the first list, and never raises it again; a watch
that drops, or a 410 that makes kopf re-list, leaves the index serving old data with nothing
to tell, and an object deleted while the watch was down is never removed (a re-list yields only
the objects that exist). The rule here is "never act on a stale cache", so the cache must say
when it cannot be trusted: that is `fresh()`.

The trust rule, one place (`fresh`): a namespace's store is used only while its watch is up
(synced: listed, and no error since) and its high-water mark (the newest resourceVersion a list,
event or bookmark delivered) is at least the `floor` the caller gives: on a daemon's first tick
the resourceVersion of the newest object the tick already holds (the FillProbRollout it decides
on, the Deployment), after it the one as of which the rollout's last observation of that kind
was made (kubernetes.py, `_as_of_floor`). etcd
numbers every write with one counter, so such a store reflects every write that happened before
the tick's own reads, exactly like a direct read made after them. Anything else (resourceVersions
that are not integers, a store that lags) is `None`: the caller reads directly, as before.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Protocol

logger = logging.getLogger("fillprob_operator.watches")

ALL_NAMESPACES = ""
# The API server ends a watch after timeoutSeconds (client-go picks 5-10 min); it is resumed
# from the high-water mark, nothing lost. A quiet kind's watch may get no byte at all until then:
# the API server sends a bookmark only when its watch cache's resourceVersion moved (measured on
# the testbed: a namespace's Job watch, no Jobs, silent for 90 s and more). So the read timeout
# is longer than the longest watch, and a connection that dies without a word (no RST) is found
# by TCP keepalive (WATCH_KEEPALIVE: probed after 30 s idle, dropped after 3 unanswered probes
# 10 s apart), not by silence: then the store is not synced and is re-listed.
WATCH_TIMEOUT_SECONDS = 240
READ_IDLE_SECONDS = int(WATCH_TIMEOUT_SECONDS * 1.25) + 30
WATCH_KEEPALIVE = (30, 10, 3)  # idle, interval, count (seconds, seconds, probes)
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class Gone(Exception):
    """410: the resourceVersion is too old to watch from; list again."""


def rv_int(obj_or_rv: Any) -> int | None:
    """A resourceVersion as an int, None when there is none or it is not all digits (the API
    says resourceVersions are opaque; every API server we know uses etcd's revision)."""
    rv = obj_or_rv
    if isinstance(obj_or_rv, Mapping):
        rv = (obj_or_rv.get("metadata") or {}).get("resourceVersion")
    text = str(rv or "")
    return int(text) if text.isdigit() else None


def newer(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The newer of two versions of one object by resourceVersion; None when they cannot be
    compared (either is missing or not an integer): then the caller must read it directly."""
    ra, rb = rv_int(a) if a is not None else None, rv_int(b) if b is not None else None
    if ra is None or rb is None:
        return None
    return a if ra >= rb else b


# -- projections: only what the observations read -----------------------------------------

# The pod template annotation carrying the operator's restart marker (kubernetes.py).
RESTART_TOKEN_ANNOTATION = "grinder.io/restart-token"


def restart_token(obj: Mapping[str, Any]) -> str | None:
    """The restart token on a Deployment's or a ReplicaSet's pod template."""
    template_meta = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template_meta.get("annotations") or {}).get(RESTART_TOKEN_ANNOTATION)

_META_KEYS = ("name", "namespace", "uid", "resourceVersion", "generation", "labels",
              "ownerReferences", "creationTimestamp", "deletionTimestamp")


def _project_meta(meta: Mapping[str, Any], *extra: str) -> dict[str, Any]:
    return {k: meta[k] for k in (*_META_KEYS, *extra) if k in meta}


def project_deployment(obj: Mapping[str, Any]) -> dict[str, Any]:
    # managedFields: who changed the env, when the restart token landed (kubernetes.py).
    meta = _project_meta(obj.get("metadata") or {}, "annotations", "managedFields")
    return {"metadata": meta, "spec": obj.get("spec") or {}, "status": obj.get("status") or {}}


def annotation_owners(entries: Any) -> list[dict[str, Any]]:
    """managedFields cut to who set each annotation: the entries that own an annotation, each
    with its manager, operation, subresource and time and only its `f:metadata.f:annotations`."""
    kept = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, Mapping):
            continue
        fields = entry.get("fieldsV1")
        meta = fields.get("f:metadata") if isinstance(fields, Mapping) else None
        annotations = meta.get("f:annotations") if isinstance(meta, Mapping) else None
        if annotations:
            kept.append({**{k: entry[k] for k in ("manager", "operation", "subresource", "time") if k in entry},
                         "fieldsV1": {"f:metadata": {"f:annotations": annotations}}})
    return kept


def project_rollout(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The whole FillProbRollout but its managedFields, cut to who set each annotation (the
    rollback annotation's owner, reconciler.py): the status subresource's entry alone was a
    quarter of a rollout, unpickled at every tick (issue 10)."""
    meta = dict(obj.get("metadata") or {})
    if "managedFields" in meta:
        meta["managedFields"] = annotation_owners(meta["managedFields"])
    return {**obj, "metadata": meta}


def project_replica_set(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = _project_meta(obj.get("metadata") or {})
    revision = ((obj.get("metadata") or {}).get("annotations") or {}).get("deployment.kubernetes.io/revision")
    if revision is not None:
        meta["annotations"] = {"deployment.kubernetes.io/revision": revision}
    # whose restart its pods are (kubernetes.py `_new_pods`): the template's restart token only
    token = restart_token(obj)
    if token is None:
        return {"metadata": meta}
    return {"metadata": meta, "spec": {"template": {"metadata": {"annotations": {RESTART_TOKEN_ANNOTATION: token}}}}}


def project_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    kept: dict[str, Any] = {
        "conditions": [c for c in status.get("conditions") or () if c.get("type") == "Ready"],
        "containerStatuses": [
            {"name": s.get("name"), "state": {"terminated": (s.get("state") or {}).get("terminated")}}
            if (s.get("state") or {}).get("terminated") else {"name": s.get("name"), "state": {}}
            for s in status.get("containerStatuses") or ()
        ],
    }
    return {"metadata": _project_meta(obj.get("metadata") or {}), "status": kept}


def project_job(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    return {"metadata": _project_meta(obj.get("metadata") or {}),
            "status": {"conditions": list(status.get("conditions") or ())}}


# -- the store -----------------------------------------------------------------------------


class CacheEntry(NamedTuple):
    """One object in a store: what `select` filters on, and the projection itself, frozen as
    pickled bytes of its JSON form. Each reader gets a fresh copy (`thaw`), so no tick can
    change what the next one reads; freezing once per watch event instead of copying at each
    read makes a tick's reads several times cheaper (issue 10, point 5)."""

    namespace: str
    labels: Mapping[str, str]
    resource_version: int | None
    frozen: bytes

    def thaw(self) -> dict[str, Any]:
        return pickle.loads(self.frozen)


def _entry(projection: Mapping[str, Any]) -> CacheEntry:
    # The JSON form: what a reader got when reads copied through JSON (tuples are lists).
    plain = json.loads(json.dumps(projection))
    meta = plain.get("metadata") or {}
    return CacheEntry(meta.get("namespace"), dict(meta.get("labels") or {}), rv_int(plain),
                  pickle.dumps(plain, pickle.HIGHEST_PROTOCOL))


@dataclass
class _Store:
    objects: dict[str, CacheEntry] = field(default_factory=dict)  # (ns/name) -> its projection
    high_water: int | None = None
    synced: bool = False
    # (namespace, label, value) -> the keys of the objects carrying it; (namespace, "", "")
    # -> every key in the namespace. `select` looks up instead of scanning every object.
    index: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)

    def put(self, key: str, entry: CacheEntry) -> None:
        self.drop(key)
        self.objects[key] = entry
        for term in _terms(entry):
            self.index.setdefault(term, set()).add(key)

    def drop(self, key: str) -> None:
        old = self.objects.pop(key, None)
        if old is None:
            return
        for term in _terms(old):
            keys = self.index.get(term)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.index[term]

    def keys(self, namespace: str, match_labels: Mapping[str, str]) -> set[str]:
        """The keys of the objects in `namespace` carrying every label of `match_labels`."""
        terms = [(namespace, k, str(v)) for k, v in match_labels.items()] or [(namespace, "", "")]
        found = sorted((self.index.get(t, set()) for t in terms), key=len)
        return set(found[0]).intersection(*found[1:])


def _terms(entry: CacheEntry) -> list[tuple[str, str, str]]:
    namespace = entry.namespace or ""
    return [(namespace, "", ""), *((namespace, k, str(v)) for k, v in entry.labels.items())]


class Source(Protocol):
    """The API, as a cache needs it (adapters: `ClientSource`; tests: a fake)."""

    def list(self, namespace: str) -> tuple[list[dict[str, Any]], str]:
        """Every object (namespace "" = all) and the list's resourceVersion."""

    def watch(self, namespace: str, resource_version: str, timeout_seconds: int) -> Iterable[dict[str, Any]]:
        """Raw watch events `{"type", "object"}` from `resource_version`; raises Gone on 410."""


class WatchCache:
    """One kind in the watched namespaces. `apply_*` change the store (the thread calls them;
    tests call them directly); `fresh`, `get` and `select` read it from the event loop."""

    def __init__(
        self,
        kind: str,
        source: Source,
        namespaces: Iterable[str] = (),
        *,
        project: Callable[[Mapping[str, Any]], dict[str, Any]] = dict,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.kind = kind
        self.source = source
        self.scopes = tuple(namespaces) or (ALL_NAMESPACES,)
        self.project = project
        self._count = count or (lambda verb: None)
        self._lock = threading.Lock()
        self._stores = {scope: _Store() for scope in self.scopes}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- reading (event loop) -------------------------------------------------------------

    def _scope(self, namespace: str) -> str | None:
        if ALL_NAMESPACES in self._stores:
            return ALL_NAMESPACES
        return namespace if namespace in self._stores else None

    def fresh(self, namespace: str, floor: int | None) -> bool:
        """Whether the store for `namespace` may answer for a tick that already holds objects
        up to resourceVersion `floor` (None: not comparable, so no)."""
        scope = self._scope(namespace)
        if scope is None or floor is None:
            return False
        with self._lock:
            store = self._stores[scope]
            return store.synced and store.high_water is not None and store.high_water >= floor

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.entry(namespace, name)
        return found.thaw() if found is not None else None

    def select(self, namespace: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return [e.thaw() for e in self.entries(namespace, match_labels)]

    def entry(self, namespace: str, name: str) -> CacheEntry | None:
        """The object still frozen: a reader that has derived what it needs from the same bytes
        before need not thaw them again (kubernetes.py, `observe_deployment`)."""
        scope = self._scope(namespace)
        with self._lock:
            return self._stores[scope].objects.get(f"{namespace}/{name}") if scope is not None else None

    def entries(self, namespace: str, match_labels: Mapping[str, str]) -> list[CacheEntry]:
        """`select`, frozen, in the same order (by namespace/name)."""
        scope = self._scope(namespace)
        if scope is None:
            return []
        with self._lock:
            store = self._stores[scope]
            return [store.objects[key] for key in sorted(store.keys(namespace, match_labels))]

    def state(self, namespace: str) -> tuple[bool, int | None]:
        """(synced, high-water mark), for logs and tests."""
        scope = self._scope(namespace)
        if scope is None:
            return False, None
        with self._lock:
            store = self._stores[scope]
            return store.synced, store.high_water

    # -- writing (the watch thread) -------------------------------------------------------

    def apply_list(self, scope: str, items: Iterable[Mapping[str, Any]], resource_version: str) -> None:
        """A complete list replaces the store: what is not in it is gone."""
        fresh = _Store()
        for item in items:
            meta = item.get("metadata") or {}
            fresh.put(f"{meta.get('namespace', '')}/{meta.get('name')}", _entry(self.project(item)))
        with self._lock:
            store = self._stores[scope]
            store.objects, store.index = fresh.objects, fresh.index
            store.high_water = rv_int(resource_version)
            store.synced = store.high_water is not None

    def apply_event(self, scope: str, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        rv = rv_int(obj)
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace', '')}/{meta.get('name')}"
        with self._lock:
            store = self._stores[scope]
            if kind in ("ADDED", "MODIFIED"):
                old = store.objects.get(key)
                if old is None or rv is None or (old.resource_version or 0) <= rv:
                    store.put(key, _entry(self.project(obj)))
            elif kind == "DELETED":
                store.drop(key)
            elif kind != "BOOKMARK":
                return
            if rv is not None and (store.high_water is None or rv > store.high_water):
                store.high_water = rv

    def mark_down(self, scope: str) -> None:
        with self._lock:
            self._stores[scope].synced = False

    def resource_version(self, scope: str) -> str:
        with self._lock:
            return str(self._stores[scope].high_water or "")

    # -- the threads ----------------------------------------------------------------------

    def start(self) -> None:
        for scope in self.scopes:
            thread = threading.Thread(
                target=self._run, args=(scope,), daemon=True, name=f"watch-{self.kind}-{scope or 'all'}"
            )
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for scope in self.scopes:
            self.mark_down(scope)

    def _run(self, scope: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._relist(scope)
                failures = 0
                self._watch(scope)  # returns only on Gone; raises on any failure
            except Gone:
                logger.info("event=watch_gone kind=%s namespace=%s action=relist", self.kind, scope or "*")
            except Exception as exc:  # unreachable, timed out, dropped: not synced until re-listed
                self.mark_down(scope)
                logger.warning("event=watch_down kind=%s namespace=%s error=%r", self.kind, scope or "*", str(exc))
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                self._stop.wait(delay * random.uniform(0.8, 1.2))
            # A re-list follows a 410 or a failure: the store is stale until it completes.
            self.mark_down(scope)

    def _relist(self, scope: str) -> None:
        """LIST into the store. The listed objects (whole, with their managedFields) die here:
        held by `_run`'s frame they stayed alive for as long as the watch that follows ran."""
        self._count("list")
        items, rv = self.source.list(scope)
        self.apply_list(scope, items, rv)

    def _watch(self, scope: str) -> None:
        """Watch from the high-water mark; a watch the server ends (timeoutSeconds) is resumed
        from there, nothing lost. Gone or any exception leaves, for a re-list."""
        while not self._stop.is_set():
            self._count("watch")
            timeout = int(WATCH_TIMEOUT_SECONDS * random.uniform(1.0, 1.25))
            for event in self.source.watch(scope, self.resource_version(scope), timeout):
                if self._stop.is_set():
                    return
                if event.get("type") == "ERROR":
                    if (event.get("object") or {}).get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error: {str(event.get('object'))[:200]}")
                self.apply_event(scope, event)
                del event  # not kept (whole) while the next one is awaited


class ClientSource:
    """`Source` over a list function by the official client's name and arguments (e.g.
    `RestApi.list_namespaced_deployment` and its `..._for_all_namespaces` twin, rest.py), with
    `_preload_content=False`: the JSON parsed here, as it is read."""

    def __init__(self, namespaced: Callable[..., Any], everywhere: Callable[..., Any], *, timeout: float) -> None:
        self.namespaced, self.everywhere, self.timeout = namespaced, everywhere, timeout

    def _call(self, scope: str, **kwargs: Any) -> Any:
        if scope == ALL_NAMESPACES:
            return self.everywhere(_preload_content=False, **kwargs)
        return self.namespaced(scope, _preload_content=False, **kwargs)

    def list(self, namespace: str) -> tuple[list[dict[str, Any]], str]:
        # One list, unpaginated: a paginated list is consistent too, but costs more requests.
        response = self._call(namespace, _request_timeout=self.timeout)
        data = json.loads(response.data)
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def watch(self, namespace: str, resource_version: str, timeout_seconds: int) -> Iterator[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        try:
            response = self._call(
                namespace, watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _request_timeout=(self.timeout, READ_IDLE_SECONDS),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from exc
            raise
        try:
            for line in iter_resp_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                del line  # neither the text nor the event is kept while the next line is awaited
                yield event
                del event
        finally:
            response.close()
            response.release_conn()
