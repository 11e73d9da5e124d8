"""`RestApi` (adapters/rest.py) against the generated client it stands in for: for the same
arguments, the same request leaves the same `ApiClient` (method, URL with its query, headers,
body); the same errors come back; and the operator's process never imports the generated
CoreV1/AppsV1/BatchV1 classes (what `RestApi` is for: 26 MiB of RSS)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException, NotFoundException

from fillprob_operator.adapters.rest import RestApi

REPO = Path(__file__).resolve().parents[2]

PATCH_BODY = {"spec": {"template": {"spec": {"containers": [{"name": "grinder", "env": [{"name": "A", "value": "1"}]}]}}},
              "metadata": {"resourceVersion": "42"}}
JOB_BODY = {"metadata": {"name": "preflight"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "preflight", "image": "g:1"}]}}}}
EVENT_BODY = {"metadata": {"name": "e.1"}, "reason": "Promoted", "count": 1,
              "involvedObject": {"kind": "FillProbRollout", "name": "r", "namespace": "ns-a"}}
WATCH = {"watch": True, "resource_version": "1234", "allow_watch_bookmarks": True, "timeout_seconds": 300}

# (generated class, method, positional arguments, keyword arguments): every call the operator
# makes through `core`, `apps` and `batch` (the adapter's calls and the caches' lists and watches).
CASES = [
    (client.CoreV1Api, "get_api_resources", (), {}),
    (client.CoreV1Api, "create_namespaced_event", ("ns-a", EVENT_BODY), {}),
    (client.CoreV1Api, "list_namespaced_pod", ("ns-a",), {"label_selector": "app=grinder,tier in (a,b)"}),
    (client.CoreV1Api, "list_namespaced_pod", ("ns-a",), WATCH),
    (client.CoreV1Api, "list_pod_for_all_namespaces", (), WATCH),
    (client.CoreV1Api, "read_namespaced_pod_log", ("grinder-1", "ns-a"), {"container": "grinder", "limit_bytes": 65536}),
    (client.AppsV1Api, "read_namespaced_deployment", ("grinder", "ns-a"), {}),
    (client.AppsV1Api, "patch_namespaced_deployment", ("grinder", "ns-a", PATCH_BODY),
     {"field_manager": "fillprob-operator", "_content_type": "application/strategic-merge-patch+json"}),
    (client.AppsV1Api, "list_namespaced_deployment", ("ns-a",), WATCH),
    (client.AppsV1Api, "list_deployment_for_all_namespaces", (), {}),
    (client.AppsV1Api, "list_namespaced_replica_set", ("ns-a",), {"label_selector": "app=grinder"}),
    (client.AppsV1Api, "list_replica_set_for_all_namespaces", (), WATCH),
    (client.BatchV1Api, "create_namespaced_job", ("ns-a", JOB_BODY), {}),
    (client.BatchV1Api, "read_namespaced_job", ("preflight", "ns-a"), {}),
    (client.BatchV1Api, "list_namespaced_job", ("ns-a",), {}),
    (client.BatchV1Api, "list_job_for_all_namespaces", (), WATCH),
]


class Answer:
    """What `ApiClient.call_api` returns (a RESTResponse), canned."""

    def __init__(self, status: int, data: bytes) -> None:
        self.status, self.reason, self.data, self._data = status, "Reason", None, data
        self.response = object()  # the streaming urllib3 response it would wrap
        self.headers = self.getheaders()

    def read(self) -> bytes:
        self.data = self._data
        return self._data

    def getheaders(self) -> dict:
        return {"content-type": "application/json"}

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.getheaders().get(name.lower(), default)


class Recording(client.ApiClient):
    """A real ApiClient (its serialization, its credentials) whose requests are recorded and
    answered by `answer` instead of sent."""

    def __init__(self, answer: Answer) -> None:
        configuration = client.Configuration(host="https://api.example:6443")
        configuration.api_key = {"BearerToken": "token-1"}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        super().__init__(configuration)
        self.answer, self.sent = answer, []

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        self.sent.append((method, url, dict(header_params or {}), body, _request_timeout))
        return self.answer


def _sent(api, name, args, kwargs, answer=None):
    recording = Recording(answer or Answer(200, b"{}"))
    getattr(api(recording), name)(*args, **kwargs, _preload_content=False, _request_timeout=7)
    return recording.sent


@pytest.mark.parametrize(("generated", "name", "args", "kwargs"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_each_call_sends_what_the_generated_client_sends(generated, name, args, kwargs) -> None:
    ours = _sent(RestApi, name, args, kwargs)
    theirs = _sent(generated, name, args, kwargs)
    assert len(ours) == 1
    method, url, headers, body, timeout = ours[0]
    assert (method, url, headers, body, timeout) == theirs[0]
    # and what that is, spelled out once: the path, and the arguments as the API names them
    assert url.startswith("https://api.example:6443/ap")
    assert headers["authorization"] == "Bearer token-1"
    if "watch" in kwargs:
        assert "watch=true" in url and "resourceVersion=1234" in url and "allowWatchBookmarks=true" in url


def test_every_call_the_operator_makes_through_core_apps_and_batch_is_checked_above() -> None:
    source = (REPO / "operator/fillprob_operator/adapters/kubernetes.py").read_text()
    # `self.apps.read_namespaced_deployment`, `core.list_namespaced_pod` (not "batch.kubernetes.io/...")
    called = set(re.findall(r"\b(?:core|apps|batch)\.([a-z_]+)\b(?!\.)", source)) - {"api_client"}
    checked = {case[1] for case in CASES}
    public = {name for name in vars(RestApi) if not name.startswith("_")}
    assert called, "no calls found: the pattern no longer matches the adapter's source"
    assert called <= checked, f"not checked against the generated client: {sorted(called - checked)}"
    assert public == checked, "a RestApi method without its check, or a check without its method"


def test_answers_are_the_json_the_api_server_sent_and_the_log_is_text() -> None:
    body = {"kind": "Deployment", "metadata": {"name": "grinder", "resourceVersion": "7"}, "spec": {"replicas": 1}}
    api = RestApi(Recording(Answer(200, json.dumps(body).encode())))
    assert api.read_namespaced_deployment("grinder", "ns-a") == body
    log = RestApi(Recording(Answer(200, "2026-12-03T10:00:00Z FILL_PROB_ ünïcode\n".encode())))
    assert log.read_namespaced_pod_log("p", "ns-a", container="grinder") == "2026-12-03T10:00:00Z FILL_PROB_ ünïcode\n"
    streaming = Answer(200, b"")
    assert RestApi(Recording(streaming)).list_namespaced_pod("ns-a", _preload_content=False) is streaming.response


@pytest.mark.parametrize("preload", [True, False])
def test_errors_are_the_generated_clients_exceptions(preload: bool) -> None:
    status = b'{"kind":"Status","code":404,"reason":"NotFound","message":"deployments \\"x\\" not found"}'
    raised = []
    for api in (RestApi, client.AppsV1Api):
        with pytest.raises(ApiException) as caught:
            api(Recording(Answer(404, status))).read_namespaced_deployment("x", "ns-a", _preload_content=preload)
        raised.append(caught.value)
    ours, theirs = raised
    assert type(ours) is type(theirs) is NotFoundException
    assert (ours.status, ours.reason, ours.body) == (theirs.status, theirs.reason, theirs.body) == (
        404, "Reason", status.decode())


def test_an_argument_it_does_not_know_is_refused_not_dropped() -> None:
    api = RestApi(Recording(Answer(200, b"{}")))
    with pytest.raises(TypeError, match="label_selectr"):
        api.list_namespaced_pod("ns-a", label_selectr="app=grinder")


def test_the_operators_adapter_never_imports_the_generated_api_classes(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Config
        clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
        users: [{name: u, user: {token: t}}]
        contexts: [{name: x, context: {cluster: c, user: u}}]
        current-context: x
        """))
    script = textwrap.dedent("""\
        import sys
        import fillprob_operator.handlers
        from fillprob_operator.adapters.clock import SystemClock
        from fillprob_operator.adapters.kubernetes import build_adapter
        adapter = build_adapter(timeout=1, executor=None, clock=SystemClock(), watch_namespaces=["ns-a"])
        generated = sorted(m for m in sys.modules if m.startswith("kubernetes.client.api.")
                           and not m.endswith("custom_objects_api"))
        print(generated)
        adapter.close()
        """)
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "operator")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_adapter_takes_plain_answers_as_they_are_and_serializes_models() -> None:
    """`plain_answer`, the adapter's `to_dict` (`from_api_client`): the JSON an answer was
    parsed from is not copied again; a generated model (discovery through CustomObjectsApi)
    still comes out as the JSON the client would send."""
    from fillprob_operator.adapters.kubernetes import KubernetesAdapter, plain_answer

    api_client = client.ApiClient(client.Configuration())
    answer = {"metadata": {"name": "grinder", "labels": {"app": "grinder"}}, "items": [1, 2.5, "x", None]}
    assert plain_answer(api_client, answer) is answer
    adapter = KubernetesAdapter.from_api_client(api_client)
    assert adapter._to_dict(answer) is answer
    adapter.close()
    assert plain_answer(api_client, None) is None and plain_answer(api_client, "log text\n") == "log text\n"
    model = client.V1APIResourceList(group_version="grinder.io/v1alpha1", resources=[client.V1APIResource(
        name="fillprobrollouts", kind="FillProbRollout", namespaced=True, singular_name="fillprobrollout",
        verbs=["get", "list"])])
    assert plain_answer(api_client, model) == api_client.sanitize_for_serialization(model) == {
        "groupVersion": "grinder.io/v1alpha1",
        "resources": [{"kind": "FillProbRollout", "name": "fillprobrollouts", "namespaced": True,
                       "singularName": "fillprobrollout", "verbs": ["get", "list"]}],
    }
