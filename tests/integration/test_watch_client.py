"""The caches through the official client against a real socket (adapters/watches.py
`ClientSource`, `build_caches`): a tiny HTTP server plays the API server's list and watch of
Deployments, with a bookmark, a server-ended watch, a 410 and a broken connection, so the
client's query parameters, raw responses and line splitting run for real."""

from __future__ import annotations

import http.server
import json
import threading
import time
from urllib.parse import parse_qs, urlparse

from kubernetes import client

from fillprob_operator.adapters import watches
from fillprob_operator.adapters.kubernetes import build_caches

NS = "trading"


def deployment(name: str, rv: int) -> dict:
    return {"metadata": {"name": name, "namespace": NS, "resourceVersion": str(rv), "uid": name},
            "spec": {"replicas": 1}, "status": {}}


class FakeApiServer(http.server.BaseHTTPRequestHandler):
    """Lists answer `state`; watches play `scripts` in order (then hang until closed)."""

    state: dict = {}
    scripts: list = []
    seen: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).seen.append((url.path, query))
        if not url.path.endswith("/deployments"):
            self.send_response(404)
            self.end_headers()
            return
        if query.get("watch") != "true":
            body = json.dumps({"metadata": {"resourceVersion": self.state["rv"]}, "items": self.state["items"]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            return
        script = type(self).scripts.pop(0) if type(self).scripts else {"events": [], "then": "hang"}
        if script.get("status"):
            self.send_response(script["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        for event in script["events"]:
            self.wfile.write((json.dumps(event) + "\n").encode())
            self.wfile.flush()
        if script["then"] == "hang":
            time.sleep(3)
        # "end": the server closes the watch (timeoutSeconds reached)


def wait_for(predicate, what, deadline=10.0):
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_list_watch_bookmark_end_410_through_the_official_client(monkeypatch):
    monkeypatch.setattr(watches, "RETRY_SECONDS", (0.01,))
    FakeApiServer.state = {"rv": "10", "items": [deployment("a", 9)]}
    FakeApiServer.scripts = [
        {"events": [{"type": "MODIFIED", "object": deployment("a", 12)},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}], "then": "end"},
        {"events": [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}],
         "then": "end"},
        {"status": 410},
    ]
    FakeApiServer.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    counted = []
    caches = build_caches(client.ApiClient(configuration), (NS,), timeout=3.0,
                          count=lambda verb, resource: counted.append((verb, resource)))
    cache = caches.deployments
    try:
        cache.start()
        watches_seen = lambda: [q for p, q in FakeApiServer.seen if q.get("watch") == "true"]  # noqa: E731
        wait_for(lambda: len(watches_seen()) >= 4, "four watches")
        first, resumed = watches_seen()[0], watches_seen()[1]
        assert first["resourceVersion"] == "10" and first["allowWatchBookmarks"] == "true"
        assert int(first["timeoutSeconds"]) >= watches.WATCH_TIMEOUT_SECONDS
        assert resumed["resourceVersion"] == "15"  # after the server ended it: from the bookmark
        lists = [p for p, q in FakeApiServer.seen if q.get("watch") != "true"]
        assert lists == [f"/apis/apps/v1/namespaces/{NS}/deployments"] * 3  # first, after each 410
        assert cache.fresh(NS, 10) and cache.get(NS, "a")["metadata"]["resourceVersion"] == "9"
        assert ("watch", "deployments") in counted and ("list", "deployments") in counted
    finally:
        for c in caches.all():
            c.close()
        server.shutdown()


def test_each_kind_lists_and_watches_its_own_path_namespaced_and_cluster_wide():
    from kubernetes.client.exceptions import ApiException

    FakeApiServer.seen = []
    FakeApiServer.state = {"rv": "1", "items": []}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api = client.ApiClient(configuration)
    try:
        for namespaces, prefix in (((NS,), f"/namespaces/{NS}"), ((), "")):
            FakeApiServer.seen = []
            caches = build_caches(api, namespaces, timeout=3.0, count=lambda verb, resource: None)
            for cache in caches.all():
                try:
                    cache.source.list(cache.scopes[0])
                except ApiException as exc:
                    assert exc.status == 404
            assert [p for p, _ in FakeApiServer.seen] == [
                f"/apis/apps/v1{prefix}/deployments", f"/apis/apps/v1{prefix}/replicasets",
                f"/api/v1{prefix}/pods", f"/apis/batch/v1{prefix}/jobs",
                f"/apis/grinder.io/v1alpha1{prefix}/fillprobrollouts",
            ]
    finally:
        server.shutdown()
