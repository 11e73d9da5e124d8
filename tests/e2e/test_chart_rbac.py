"""RBAC proof: for the chart's ServiceAccount, every (group, resource[/subresource], verb) that
the API server's discovery lists answers 403 unless a binding of that ServiceAccount grants it.

Nothing here is a hand-written list of resources or of grants:
- the probes come from discovery (/api/v1 and the preferred version of every /apis group, each
  resource and subresource with its `verbs`, namespaced or not);
- what is granted comes from the RBAC objects the API server holds: every ClusterRoleBinding and
  RoleBinding whose subjects name the ServiceAccount, its user or one of its groups (the
  SelfSubjectReview of its token says which), and the rules of the role each one refers to. So
  the cluster's own grants to every authenticated user (system:basic-user: the self reviews)
  are in it, shown apart from the chart's.

Namespaced resources are probed in the release's namespace, its watched namespace and another
one (all three created by the test), and list/watch also across all namespaces; cluster-scoped
ones at cluster level. Each probe is a real request with the ServiceAccount's token, checked
against the API server's CA, and built so that it could do no harm were it allowed: the object name never exists, a body
(create/update) has an apiVersion the endpoint rejects and a patch an invalid label value,
list/watch/deletecollection carry a label selector nothing carries, and deletecollection is sent
only into the namespaces this test created. Not granted: 403 from the authorizer, whose message
must name the verb and resource we meant (so the HTTP -> verb mapping is proven too). Granted:
anything but 403/401. A few probes cannot be a harmless real request; those are asked with a
SubjectAccessReview for the same user and groups, and counted apart:
- deletecollection of a cluster-scoped resource (a real one would run outside our namespaces);
- list/watch/deletecollection of a subresource (no such endpoint; discovery lists none today);
- any verb discovery lists beyond the eight standard ones.
Connect subresources (pods/exec, pods/portforward, pods/attach, */proxy) are real requests: the
authorizer answers before the handler looks for the (absent) pod, node or service.

Cases: the chart's defaults (cluster scope), cluster scope with peering, and namespaced scope
with `replicas: 2` (peering on, its operator pods running). The cluster-scope cases install with
`replicas: 0`: a cluster-wide operator would act on the FillProbRollouts of every namespace on
the shared testbed. That changes nothing the proof looks at: the test requires the release's
RBAC and peering objects to equal `helm template` of the user's values (replicas 1 or 2), and
takes a TokenRequest for the ServiceAccount instead of reading the token in the pod.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
import urllib3
import yaml
from chart_release import CHART, ChartRelease, run, tool
from kubernetes import client

pytestmark = pytest.mark.e2e

PROBE_NAME = "rbac-probe-does-not-exist"
# Verbs with an HTTP request of their own; "named" ones act on PROBE_NAME.
NAMED_VERBS = {"get": "GET", "update": "PUT", "patch": "PATCH", "delete": "DELETE"}
COLLECTION_VERBS = {"list": "GET", "watch": "GET", "create": "POST", "deletecollection": "DELETE"}
# Subresources live under a named object: these verbs have a request there.
SUBRESOURCE_VERBS = {"get": "GET", "create": "POST", "update": "PUT", "patch": "PATCH", "delete": "DELETE"}
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ClusterKopfPeering", "KopfPeering")


# --- the cases --------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    # The values a user sets (`{watched}` is the release's watched namespace) ...
    user_values: tuple[str, ...]
    # ... and what the test installs instead (over ChartRelease's namespaced defaults).
    installed_values: tuple[str, ...]
    runs_pods: bool


CLUSTER = ("rbac.scope=cluster", "watchNamespaces=null")
CASES = {
    "cluster-defaults": Case((), (*CLUSTER, "replicas=0"), runs_pods=False),
    "cluster-peering": Case(("replicas=2",), (*CLUSTER, "replicas=0", "peering.enabled=true"), runs_pods=False),
    "namespaced-peering": Case(
        ("rbac.scope=namespaced", "watchNamespaces={{{watched}}}", "replicas=2"), ("replicas=2",), runs_pods=True
    ),
}


class RbacRelease(ChartRelease):
    """ChartRelease that may run no operator pod (replicas: 0): then install waits for none."""

    runs_pods = True

    def wait_ready(self, timeout: float = 120):
        return super().wait_ready(timeout) if self.runs_pods else None


@pytest.fixture(params=list(CASES))
def case(request) -> tuple[str, Case]:
    return request.param, CASES[request.param]


@pytest.fixture
def release(k8s_api, crd_installed):
    rel = RbacRelease(k8s_api, "rbac")
    yield rel
    rel.teardown()


# --- discovery ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiResource:
    group: str
    version: str
    name: str  # "pods" or "pods/log"
    namespaced: bool
    verbs: tuple[str, ...]

    @property
    def resource(self) -> str:
        return self.name.partition("/")[0]

    @property
    def subresource(self) -> str:
        return self.name.partition("/")[2]


def get_json(api: client.ApiClient, path: str) -> tuple[int, dict | str]:
    """GET `path` with the admin's client: (status, the JSON body, or the text of an error)."""
    method, url, headers, _, _ = api.param_serialize(
        "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    resp = api.call_api(method, url, header_params=headers, _request_timeout=30)
    data = resp.read()
    return resp.status, (json.loads(data) if resp.status == 200 else data[:300].decode(errors="replace"))


def discover(api: client.ApiClient) -> tuple[list[ApiResource], dict[str, str]]:
    """Every resource and subresource of /api/v1 and of each /apis group's preferred version;
    and the group versions whose discovery failed (an unavailable aggregated API)."""
    versions = [("", "v1", "/api/v1")]
    status, groups = get_json(api, "/apis")
    assert status == 200, f"GET /apis: HTTP {status} {groups}"
    for group in groups["groups"]:
        preferred = group["preferredVersion"]["version"]
        versions.append((group["name"], preferred, f"/apis/{group['name']}/{preferred}"))
    resources: list[ApiResource] = []
    failed: dict[str, str] = {}
    for group, version, path in versions:
        status, listing = get_json(api, path)
        if status != 200:
            failed[path] = f"HTTP {status} {listing}"
            continue
        resources += [
            ApiResource(group, version, r["name"], r["namespaced"], tuple(r.get("verbs") or ()))
            for r in listing["resources"]
        ]
    return resources, failed


# --- what the API server's RBAC objects grant (pure, over what was read) --------------------
@dataclass(frozen=True)
class Grant:
    """The rules of one role, as one binding of the ServiceAccount gives them."""

    source: str  # "ClusterRoleBinding/x -> ClusterRole/y"
    namespace: str | None  # a RoleBinding's namespace; None: everywhere (ClusterRoleBinding)
    rules: tuple[client.V1PolicyRule, ...]
    from_chart: bool


def rule_allows(rule: client.V1PolicyRule, group: str, name: str, verb: str, object_name: str | None) -> bool:
    """RBAC's own matching (k8s.io/kubernetes pkg/apis/rbac/v1/evaluation_helpers.go);
    object_name None: whatever name (resourceNames not looked at)."""
    subresource = name.partition("/")[2]
    return (
        any(v in ("*", verb) for v in rule.verbs or ())
        and any(g in ("*", group) for g in rule.api_groups or ())
        and any(r in ("*", name) or (subresource and r == f"*/{subresource}") for r in rule.resources or ())
        and (object_name is None or not rule.resource_names or object_name in rule.resource_names)
    )


def binds(subjects, binding_ns: str | None, user: str, groups: set[str], sa_ns: str, sa_name: str) -> bool:
    for s in subjects or ():
        if s.kind == "ServiceAccount" and s.name == sa_name and (s.namespace or binding_ns) == sa_ns:
            return True
        if (s.kind == "User" and s.name == user) or (s.kind == "Group" and s.name in groups):
            return True
    return False


def read_grants(api: client.ApiClient, user: str, groups: set[str], release: str) -> list[Grant]:
    rbac = client.RbacAuthorizationV1Api(api)
    _, _, rest = user.split(":", 2)  # system:serviceaccount:<ns>:<name>
    sa_ns, sa_name = rest.split(":", 1)
    chart = lambda meta: (meta.labels or {}).get("app.kubernetes.io/instance") == release  # noqa: E731
    grants: list[Grant] = []
    bindings = [(b, None) for b in rbac.list_cluster_role_binding().items]
    bindings += [(b, b.metadata.namespace) for b in rbac.list_role_binding_for_all_namespaces().items]
    for binding, ns in bindings:
        if not binds(binding.subjects, ns, user, groups, sa_ns, sa_name):
            continue
        ref = binding.role_ref
        try:
            role = (rbac.read_cluster_role(ref.name) if ref.kind == "ClusterRole"
                    else rbac.read_namespaced_role(ref.name, ns))
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            continue  # a binding to a missing role grants nothing
        where = f"RoleBinding/{ns}/{binding.metadata.name}" if ns else f"ClusterRoleBinding/{binding.metadata.name}"
        grants.append(Grant(f"{where} -> {ref.kind}/{ref.name}", ns, tuple(role.rules or ()),
                            chart(binding.metadata) and chart(role.metadata)))
    return grants


# --- the probes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    res: ApiResource
    verb: str
    namespace: str | None  # None: cluster level (cluster-scoped, or a namespaced list/watch across all)

    @property
    def object_name(self) -> str:
        named = self.res.subresource or self.verb in NAMED_VERBS
        return PROBE_NAME if named else ""

    def where(self) -> str:
        if self.namespace:
            return self.namespace
        return "all namespaces" if self.res.namespaced else "cluster"


@dataclass
class Outcome:
    probe: Probe
    granted_by: list[Grant]
    how: str  # "request" or "SubjectAccessReview"
    status: int | None = None  # the HTTP status of a real request
    allowed: bool | None = None  # the SubjectAccessReview's answer
    detail: str = ""

    @property
    def expected_granted(self) -> bool:
        return bool(self.granted_by)

    def problem(self, user: str) -> str | None:
        p = self.probe
        if self.how == "SubjectAccessReview":
            if self.allowed != self.expected_granted:
                return f"SubjectAccessReview allowed={self.allowed}, bindings say granted={self.expected_granted}"
            return None
        if self.status == 401:
            return f"401: the token was not accepted ({self.detail})"
        if not self.expected_granted:
            if self.status != 403:
                return f"not granted, but HTTP {self.status} ({self.detail})"
            want = f'User "{user}" cannot {p.verb} resource "{p.res.name}"'
            if want not in self.detail:
                return f"403, but not the authorizer's answer to {p.verb} {p.res.name}: {self.detail}"
            return None
        if self.status == 403:
            return f"granted by {[g.source for g in self.granted_by]}, but HTTP 403 ({self.detail})"
        return None


def probes_for(resources: list[ApiResource], namespaces: list[str]) -> list[Probe]:
    out = []
    for res in resources:
        for verb in res.verbs:
            if not res.namespaced:
                out.append(Probe(res, verb, None))
                continue
            out += [Probe(res, verb, ns) for ns in namespaces]
            if verb in ("list", "watch") and not res.subresource:
                out.append(Probe(res, verb, None))  # across all namespaces: only a ClusterRole grants it
    return out


def request_for(probe: Probe, scratch: set[str], selector: str) -> tuple[str, str, dict, bytes | None, str] | None:
    """(method, path, query, body, content type) of a harmless request for `probe`; None when
    there is none (then a SubjectAccessReview asks)."""
    res = probe.res
    base = "/api/v1" if res.group == "" else f"/apis/{res.group}/{res.version}"
    collection = f"{base}/namespaces/{probe.namespace}/{res.resource}" if probe.namespace else f"{base}/{res.resource}"
    named = f"{collection}/{PROBE_NAME}" + (f"/{res.subresource}" if res.subresource else "")
    invalid_object = json.dumps({"apiVersion": "rbac-probe.invalid/v0", "kind": "RbacProbe",
                                 "metadata": {"name": PROBE_NAME}}).encode()
    invalid_patch = json.dumps({"metadata": {"labels": {"rbac-probe": "not a valid label value!"}}}).encode()
    bodies = {"POST": (invalid_object, "application/json"), "PUT": (invalid_object, "application/json"),
              "PATCH": (invalid_patch, "application/merge-patch+json")}
    if res.subresource:
        method = SUBRESOURCE_VERBS.get(probe.verb)
        if method is None:
            return None
        return (method, named, {}, *bodies.get(method, (None, "")))
    if probe.verb in NAMED_VERBS:
        method = NAMED_VERBS[probe.verb]
        return (method, named, {}, *bodies.get(method, (None, "")))
    if probe.verb == "list":
        return ("GET", collection, {"limit": "1", "labelSelector": selector}, None, "")
    if probe.verb == "watch":
        return ("GET", collection, {"watch": "1", "timeoutSeconds": "1", "labelSelector": selector}, None, "")
    if probe.verb == "create":
        return ("POST", collection, {}, *bodies["POST"])
    if probe.verb == "deletecollection" and probe.namespace in scratch:
        return ("DELETE", collection, {"labelSelector": selector}, None, "")
    return None


@dataclass
class Prober:
    api: client.ApiClient  # the admin's, for SubjectAccessReviews
    token: str
    user: str
    groups: list[str]
    scratch: set[str]
    selector: str = field(default_factory=lambda: f"rbac-probe-{uuid.uuid4().hex[:8]}=absent")

    def __post_init__(self):
        base = self.api.configuration
        assert base.ssl_ca_cert, f"the kubeconfig gives no CA for {base.host}: the probes must verify the API server"
        self.host = base.host.rstrip("/")
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=8, cert_reqs="CERT_REQUIRED", ca_certs=base.ssl_ca_cert,
            **({"assert_hostname": base.tls_server_name, "server_hostname": base.tls_server_name}
               if getattr(base, "tls_server_name", None) else {}),
        )

    def probe(self, probe: Probe, granted_by: list[Grant]) -> Outcome:
        req = request_for(probe, self.scratch, self.selector)
        if req is None:
            return self.review(probe, granted_by)
        method, path, query, body, content_type = req
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        url = self.host + path + ("?" + urlencode(query) if query else "")
        resp = self.pool.request(method, url, body=body, headers=headers, retries=False,
                                 timeout=urllib3.Timeout(connect=5, read=20))
        detail = f"{method} {path}"
        if resp.status >= 400:
            try:
                detail += ": " + json.loads(resp.data).get("message", "")
            except ValueError:
                detail += ": " + resp.data[:200].decode(errors="replace")
        return Outcome(probe, granted_by, "request", status=resp.status, detail=detail)

    def review(self, probe: Probe, granted_by: list[Grant]) -> Outcome:
        res = probe.res
        attrs = {"group": res.group, "version": res.version, "resource": res.resource, "verb": probe.verb}
        attrs.update({k: v for k, v in (("subresource", res.subresource), ("namespace", probe.namespace),
                                        ("name", probe.object_name)) if v})
        sar = client.AuthorizationV1Api(self.api).create_subject_access_review(
            {"spec": {"user": self.user, "groups": self.groups, "resourceAttributes": attrs}})
        return Outcome(probe, granted_by, "SubjectAccessReview", allowed=sar.status.allowed,
                       detail=sar.status.reason or "")


# --- helpers on the release ---------------------------------------------------------------
def identity(api: client.ApiClient, token: str) -> tuple[str, list[str]]:
    """User and groups of `token` (a SelfSubjectReview sent with that token only)."""
    config = client.Configuration()
    base = api.configuration
    config.host, config.ssl_ca_cert = base.host, base.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(config) as sa_api:
        info = client.AuthenticationV1Api(sa_api).create_self_subject_review({}).status.user_info
    return info.username, list(info.groups or ())


def requested_token(release: ChartRelease) -> str:
    """A TokenRequest for the release's ServiceAccount (when no operator pod holds one)."""
    tr = release.core.create_namespaced_service_account_token(
        release.fullname, release.namespace, {"spec": {"expirationSeconds": 600}})
    return tr.status.token


def rbac_objects(manifest: str) -> dict[tuple[str, str, str], dict]:
    docs = [d for d in yaml.safe_load_all(manifest) if d and d.get("kind") in RBAC_KINDS]
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}


def assert_rbac_as_user_values_render(release: ChartRelease, values: tuple[str, ...]) -> None:
    installed = run(tool("helm"), "get", "manifest", release.release, "--namespace", release.namespace).stdout
    rendered = run(tool("helm"), "template", release.release, str(CHART), "--namespace", release.namespace,
                   *[a for v in values for a in ("--set", v)]).stdout
    assert rbac_objects(installed) == rbac_objects(rendered), (
        f"the release's RBAC/peering objects differ from `helm template` with {values or 'the defaults'}")


def summarize(name: str, release: ChartRelease, resources, failed, outcomes: list[Outcome]) -> str:
    pairs = {(r.group, r.name, v) for r in resources for v in r.verbs}
    by_group: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        c = by_group[o.probe.res.group or "core"]
        c["probes"] += 1
        c["sar" if o.how == "SubjectAccessReview" else "requests"] += 1
        c["granted" if o.expected_granted else "denied"] += 1
    for r in resources:
        by_group[r.group or "core"]["pairs"] += len(r.verbs)
    reviewed = Counter(
        f"{o.probe.verb} of a {'subresource' if o.probe.res.subresource else 'cluster-scoped resource'}"
        if o.probe.verb in COLLECTION_VERBS else f"non-standard verb {o.probe.verb}"
        for o in outcomes if o.how == "SubjectAccessReview")
    lines = [
        f"RBAC proof [{name}]: {release.sa_user()}",
        f"  discovery: {len({r.group for r in resources})} groups (preferred versions), {len(resources)} resources "
        f"and subresources, {len(pairs)} (resource, verb) pairs; "
        f"{sum(not r.verbs for r in resources)} with no verbs listed"
        + (f"; discovery FAILED for {failed}" if failed else ""),
        f"  probes: {len(outcomes)} = {sum(o.how == 'request' for o in outcomes)} real requests + "
        f"{sum(o.how != 'request' for o in outcomes)} SubjectAccessReviews; "
        f"{sum(not o.expected_granted for o in outcomes)} denied (expected 403), "
        f"{sum(o.expected_granted for o in outcomes)} granted (expected not 403)",
        f"  by SubjectAccessReview (no harmless real request): {dict(reviewed) or 'none'}",
        f"  {'group':36} {'pairs':>5} {'probes':>6} {'denied':>6} {'granted':>7} {'by SAR':>6}",
    ]
    for group in sorted(by_group):
        c = by_group[group]
        lines.append(f"  {group:36} {c['pairs']:5} {c['probes']:6} {c['denied']:6} {c['granted']:7} {c['sar']:6}")
    granted: dict[tuple[str, str, str, bool], list[str]] = defaultdict(list)
    for o in outcomes:
        if o.expected_granted:
            key = (o.probe.res.group or "core", o.probe.res.name, o.probe.verb, any(g.from_chart for g in o.granted_by))
            answer = o.status if o.how == "request" else f"SAR allowed={o.allowed}"
            granted[key].append(f"{o.probe.where()}: {answer}")
    for chart in (True, False):
        lines.append("  granted by the chart:" if chart else "  granted by the cluster's own bindings:")
        lines += [f"    {verb} {group}/{res} -- {', '.join(where)}"
                  for (group, res, verb, c), where in sorted(granted.items()) if c == chart] or ["    (none)"]
    return "\n".join(lines)


# --- the test -----------------------------------------------------------------------------------
def test_chart_serviceaccount_gets_403_for_everything_not_granted(case, release: RbacRelease, k8s_api):
    name, spec = case
    release.runs_pods = spec.runs_pods
    release.install(*spec.installed_values)
    user_values = tuple(v.format(watched=release.watched) for v in spec.user_values)
    assert_rbac_as_user_values_render(release, user_values)

    token = release.serviceaccount_token() if spec.runs_pods else requested_token(release)
    user, groups = identity(k8s_api, token)
    assert user == release.sa_user(), f"the token is {user}, not the chart's ServiceAccount"

    grants = read_grants(k8s_api, user, set(groups), release.release)
    assert any(g.from_chart for g in grants), f"no binding of the release names {user}: {[g.source for g in grants]}"
    resources, failed = discover(k8s_api)
    assert not failed, f"discovery failed for {failed}: the probes would miss their resources"
    assert {"grinder.io", "kopf.dev"} <= {r.group for r in resources}

    # A chart rule that matches nothing discovery lists is a dead (misspelt) grant.
    dead = [(g.source, rule.api_groups, rule.resources, verb)
            for g in grants if g.from_chart for rule in g.rules for verb in rule.verbs
            if not any(rule_allows(rule, r.group, r.name, verb, None) for r in resources if verb in r.verbs)]
    assert not dead, f"chart rules that match no (resource, verb) of discovery: {dead}"

    namespaces = [release.namespace, release.watched, release.other]
    prober = Prober(k8s_api, token, user, groups, scratch=set(namespaces))
    probes = probes_for(resources, namespaces)

    def granted_by(p: Probe) -> list[Grant]:
        return [g for g in grants
                if (g.namespace is None or g.namespace == p.namespace)
                and any(rule_allows(rule, p.res.group, p.res.name, p.verb, p.object_name) for rule in g.rules)]

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda p: prober.probe(p, granted_by(p)), probes))
    print()
    print(summarize(name, release, resources, failed, outcomes))

    problems = [f"{o.probe.verb} {o.probe.res.group or 'core'}/{o.probe.res.name} in {o.probe.where()}: {why}"
                for o in outcomes if (why := o.problem(user))]
    assert not problems, f"{len(problems)} of {len(outcomes)} probes disagree with the RBAC objects:\n" + "\n".join(
        problems[:80])
    # The positive control: the chart's grants were exercised, not only denials.
    assert any(o.expected_granted and any(g.from_chart for g in o.granted_by) for o in outcomes)

    release.uninstall()
