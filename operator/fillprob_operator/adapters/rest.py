"""The CoreV1, AppsV1 and BatchV1 calls the operator makes, without the generated API classes.

`kubernetes.client.CoreV1Api`, `AppsV1Api` and `BatchV1Api` are generated: each method is a
pydantic `validate_call` over every argument of its OpenAPI operation, with the operation's
documentation in its annotations, and each answer is turned into model objects that the
operator turns back into dicts. Importing the three costs the process about 26 MiB (CoreV1Api
alone brings in some 250 model classes; issue 10: RSS at most 150 MiB at N=300), and every call
validates its arguments. The operator makes 16 kinds of call through them; `RestApi` makes them
through the same `ApiClient` (`param_serialize` + `call_api`: the same URL, query, headers,
credentials and pool) under the same method names and arguments, and answers with the JSON the
API server sent, parsed. Errors are the client's `ApiException` (`from_response`: 404 is a
`NotFoundException`, ...) as the generated methods raise them.

`tests/unit/test_rest.py` checks each method against the generated one: the same request
(method, URL, query, headers, body) for the same arguments.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

# The generated methods' query arguments the operator passes (no others: an unknown one is a
# TypeError), by their OpenAPI name, in the order the generated methods send them.
QUERY = {
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "container": "container",
    "field_manager": "fieldManager",
    "label_selector": "labelSelector",
    "limit_bytes": "limitBytes",
    "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds",
    "watch": "watch",
}


class RestApi:
    """`ApiClient` calls by the generated client's method names, answered as parsed JSON (the
    pod log as text; with `_preload_content=False`, the streaming urllib3 response)."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def _call(
        self,
        method: str,
        path: str,
        path_params: dict[str, str],
        query: dict[str, Any],
        *,
        body: Any = None,
        text: bool = False,
    ) -> Any:
        preload = query.pop("_preload_content", True)
        timeout = query.pop("_request_timeout", None)
        content_type = query.pop("_content_type", None)
        unknown = sorted(set(query) - set(QUERY))
        if unknown:
            raise TypeError(f"{path}: unexpected argument(s) {', '.join(unknown)}")
        headers = {"Accept": "application/json"}
        if content_type is not None:  # else JSON, as the generated methods leave it to the REST layer
            headers["Content-Type"] = content_type
        request = self.api_client.param_serialize(
            method=method, resource_path=path, path_params=path_params,
            query_params=[(api_name, query[name]) for name, api_name in QUERY.items() if query.get(name) is not None],
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        if not preload:
            return response.response
        data = response.read()
        if text:
            return data.decode("utf-8", errors="replace")
        return json.loads(data) if data else None

    # -- CoreV1 ---------------------------------------------------------------------------

    def get_api_resources(self, **kwargs: Any) -> Any:
        return self._call("GET", "/api/v1/", {}, kwargs)

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        return self._call("POST", "/api/v1/namespaces/{namespace}/events", {"namespace": namespace}, kwargs, body=body)

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        return self._call("GET", "/api/v1/namespaces/{namespace}/pods", {"namespace": namespace}, kwargs)

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._call("GET", "/api/v1/pods", {}, kwargs)

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self._call(
            "GET", "/api/v1/namespaces/{namespace}/pods/{name}/log", {"namespace": namespace, "name": name},
            kwargs, text=True,
        )

    # -- AppsV1 ---------------------------------------------------------------------------

    def read_namespaced_deployment(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self._call(
            "GET", "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            {"namespace": namespace, "name": name}, kwargs,
        )

    def patch_namespaced_deployment(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any:
        return self._call(
            "PATCH", "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            {"namespace": namespace, "name": name}, kwargs, body=body,
        )

    def list_namespaced_deployment(self, namespace: str, **kwargs: Any) -> Any:
        return self._call("GET", "/apis/apps/v1/namespaces/{namespace}/deployments", {"namespace": namespace}, kwargs)

    def list_deployment_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._call("GET", "/apis/apps/v1/deployments", {}, kwargs)

    def list_namespaced_replica_set(self, namespace: str, **kwargs: Any) -> Any:
        return self._call("GET", "/apis/apps/v1/namespaces/{namespace}/replicasets", {"namespace": namespace}, kwargs)

    def list_replica_set_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._call("GET", "/apis/apps/v1/replicasets", {}, kwargs)

    # -- BatchV1 --------------------------------------------------------------------------

    def create_namespaced_job(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        return self._call("POST", "/apis/batch/v1/namespaces/{namespace}/jobs", {"namespace": namespace}, kwargs, body=body)

    def read_namespaced_job(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self._call(
            "GET", "/apis/batch/v1/namespaces/{namespace}/jobs/{name}", {"namespace": namespace, "name": name}, kwargs,
        )

    def list_namespaced_job(self, namespace: str, **kwargs: Any) -> Any:
        return self._call("GET", "/apis/batch/v1/namespaces/{namespace}/jobs", {"namespace": namespace}, kwargs)

    def list_job_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._call("GET", "/apis/batch/v1/jobs", {}, kwargs)
