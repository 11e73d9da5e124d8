"""One TLS context per Kubernetes client (`share_tls_context`), against a real TLS server that
requires a client certificate: every connection uses the one context, the CA still verifies the
server, the client certificate is still presented."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import urllib3
from kubernetes import client

from fillprob_operator.adapters.kubernetes import share_tls_context
from tls_server import api_client, make_pki, server_context

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers with the client certificate's common name."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        peer = self.connection.getpeercert()
        body = dict(x[0] for x in peer["subject"])["commonName"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _server(pki: Path, cert: str) -> Iterator[int]:
    """A TLS server presenting `cert` that requires a client certificate our CA signed; its port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = server_context(pki, cert).wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()


def _get_concurrently(api: client.ApiClient, port: int, n: int) -> list[str]:
    def get(_: int) -> str:
        return api.rest_client.request("GET", f"https://127.0.0.1:{port}/x").read().decode()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(get, range(n)))


def _contexts(api: client.ApiClient, port: int) -> list[ssl.SSLContext]:
    """The contexts of the connections the host's pool keeps (it is drained: ask once)."""
    pool = api.rest_client.pool_manager.connection_from_url(f"https://127.0.0.1:{port}/")
    out = []
    while True:
        try:
            conn = pool.pool.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty
            return out
        if conn is not None and conn.sock is not None:
            out.append(conn.sock.context)


def test_every_connection_uses_one_context_and_still_presents_the_client_certificate(pki: Path) -> None:
    with _server(pki, "server") as port:
        api = api_client(pki, port)
        assert share_tls_context(api)
        assert _get_concurrently(api, port, 6) == ["client"] * 6  # the server saw our certificate
        contexts = _contexts(api, port)
        assert len(contexts) >= 2
        assert {id(c) for c in contexts} == {id(api.rest_client.pool_manager.connection_pool_kw["ssl_context"])}

        # As urllib3 leaves it, a context per connection (what the function is for).
        plain = api_client(pki, port)
        assert _get_concurrently(plain, port, 6) == ["client"] * 6
        per_connection = _contexts(plain, port)
        assert len({id(c) for c in per_connection}) == len(per_connection) >= 2


def test_the_shared_context_still_refuses_a_server_our_ca_did_not_sign(pki: Path) -> None:
    with _server(pki, "impostor") as port:
        api = api_client(pki, port)
        assert share_tls_context(api)
        with pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
            api.rest_client.pool_manager.request("GET", f"https://127.0.0.1:{port}/x", retries=0)
        assert isinstance(caught.value.reason, urllib3.exceptions.SSLError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.reason)


def test_a_proxied_client_is_left_alone(pki: Path) -> None:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:1"
    configuration.proxy = "http://127.0.0.1:2"
    api = client.ApiClient(configuration)
    assert not share_tls_context(api)
    assert "ssl_context" not in api.rest_client.pool_manager.connection_pool_kw
