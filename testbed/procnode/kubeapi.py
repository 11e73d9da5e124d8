"""A thin raw-JSON client over the `kubernetes` package: the node works on API dicts (camelCase, as
the server sends them) and sends patches as dicts, so nothing is lost converting to and from models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("procnode.api")

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status, self.reason, self.body = status, reason, body
        message = reason
        try:
            message = json.loads(body).get("message") or reason
        except (ValueError, AttributeError):
            pass
        super().__init__(f"{status} {message}")


class Gone(ApiError):
    """410: the watch's resourceVersion is too old; list again."""


class Kube:
    def __init__(self, kubeconfig: str) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.cfg = cfg
        self.api = client.ApiClient(cfg)
        self.api.user_agent = "procnode/0.1 (kubelet v1.36.3)"
        self.server: str = cfg.host
        self.ca_pem: bytes = Path(cfg.ssl_ca_cert).read_bytes() if cfg.ssl_ca_cert else b""

    def _send(self, method: str, path: str, query: Mapping | None, body, content_type: str, timeout):
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items() if v is not None]
        method, url, headers, body, post = self.api.param_serialize(
            method=method, resource_path=path, query_params=params, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        return self.api.call_api(method, url, headers, body, post, _request_timeout=timeout)

    def request(self, method: str, path: str, *, query: Mapping | None = None, body=None,
                content_type: str = JSON, timeout: float = 30) -> dict | None:  # fmt: skip
        resp = self._send(method, path, query, body, content_type, timeout)
        resp.read()
        text = resp.data.decode("utf-8", "replace") if resp.data else ""
        if not 200 <= resp.status < 300:
            raise (Gone if resp.status == 410 else ApiError)(resp.status, resp.reason or "", text)
        return json.loads(text) if text else None

    def get_or_none(self, path: str) -> dict | None:
        try:
            return self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def watch(self, path: str, query: Mapping, timeout: float) -> Iterator[dict]:
        """Events of a watch (dicts with type/object); raises Gone on an expired resourceVersion."""
        resp = self._send("GET", path, {**query, "watch": True}, None, JSON, (10, timeout))
        if not 200 <= resp.status < 300:
            resp.read()
            raise (Gone if resp.status == 410 else ApiError)(resp.status, resp.reason or "", resp.data.decode("utf-8", "replace"))
        raw = resp.response
        try:
            for line in iter_resp_lines(raw):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    code = int(status.get("code") or 500)
                    raise (Gone if code == 410 else ApiError)(code, status.get("reason", ""), json.dumps(status))
                yield event
        finally:
            raw.release_conn()
