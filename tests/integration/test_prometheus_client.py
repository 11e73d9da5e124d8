"""What the Prometheus client as the operator builds it (`connect_prometheus`) sends, seen by a
real HTTP server on loopback: answers asked uncompressed, and the environment's proxy and
`~/.netrc` credentials still honoured though requests no longer looks them up at each query
(they are read once, at connect)."""

from __future__ import annotations

import base64
import http.server
import json
import threading

import pytest

from fillprob_operator.adapters.prometheus import connect_prometheus

ANSWER = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"pod": "p"}, "value": [1.0, "2"]}]}}).encode()


class Recorder(http.server.ThreadingHTTPServer):
    """Answers every GET with ANSWER (gzip-compressed when the client accepts gzip, as
    Prometheus does) and keeps each request's line and headers."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                import gzip

                server.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
                gzipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
                body = gzip.compress(ANSWER) if gzipped else ANSWER
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if gzipped:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def recorder():
    servers = []

    def start() -> Recorder:
        server = Recorder()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def test_answers_are_asked_uncompressed_and_read(recorder, clean_env):
    prometheus = recorder()
    client = connect_prometheus(timeout=5)(prometheus.url)
    assert client.custom_query("up") == [{"metric": {"pod": "p"}, "value": [1.0, "2"]}]
    ((line, headers),) = prometheus.seen
    assert line.startswith("GET /api/v1/query?query=up ")
    assert headers["accept-encoding"] == "identity"


def test_the_environments_proxy_is_used_as_it_was_at_connect(recorder, clean_env):
    proxy = recorder()
    clean_env.setenv("HTTP_PROXY", proxy.url)
    client = connect_prometheus(timeout=5)("http://prometheus.example:9090")
    clean_env.delenv("HTTP_PROXY")  # read once, at connect: a later change is not looked up
    assert client.custom_query("up")
    ((line, _),) = proxy.seen
    assert line.startswith("GET http://prometheus.example:9090/api/v1/query?query=up ")


def test_no_proxy_for_a_url_it_excludes(recorder, clean_env):
    proxy, prometheus = recorder(), recorder()
    clean_env.setenv("HTTP_PROXY", proxy.url)
    clean_env.setenv("NO_PROXY", "127.0.0.1")
    assert connect_prometheus(timeout=5)(prometheus.url).custom_query("up")
    assert proxy.seen == []
    assert len(prometheus.seen) == 1


def test_netrc_credentials_for_the_host_are_sent(recorder, clean_env, tmp_path):
    prometheus = recorder()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login reader password s3cret\n")
    netrc.chmod(0o600)
    clean_env.setenv("NETRC", str(netrc))
    assert connect_prometheus(timeout=5)(prometheus.url).custom_query("up")
    ((_, headers),) = prometheus.seen
    assert headers["authorization"] == "Basic " + base64.b64encode(b"reader:s3cret").decode()
