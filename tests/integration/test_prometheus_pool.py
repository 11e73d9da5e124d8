"""The Prometheus client as the operator builds it (`connect_prometheus`), against a real HTTP
server on loopback: as many queries at once as the I/O pool has threads keep their connections
alive for the next interval, instead of the library's pool of 10 closing every one past it
("Connection pool is full, discarding connection")."""

from __future__ import annotations

import http.server
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fillprob_operator.adapters.prometheus import connect_prometheus

EMPTY = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()


class SlowPrometheus(http.server.ThreadingHTTPServer):
    """Answers every query with an empty vector after `delay`, keeping connections alive;
    counts the TCP connections it accepted."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.connections = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections += 1

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                threading.Event().wait(server.delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(EMPTY)))
                self.end_headers()
                self.wfile.write(EMPTY)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def prometheus():
    server = SlowPrometheus(delay=0.3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def rounds(url: str, pool_size: int, threads: int, count: int) -> None:
    client = connect_prometheus(timeout=5, pool_size=pool_size)(url)
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(count):
            answers = list(pool.map(lambda i: client.custom_query(f"vector({i})"), range(threads)))
            assert answers == [[]] * threads


def test_a_pool_as_large_as_the_io_threads_keeps_every_connection(prometheus):
    url = f"http://127.0.0.1:{prometheus.server_address[1]}"
    rounds(url, pool_size=16, threads=16, count=3)
    # One connection per thread, reused in the next rounds.
    assert prometheus.connections == 16


def test_the_librarys_default_pool_would_open_new_connections_every_round(prometheus):
    """The same load with the default pool (10): the check above can fail."""
    url = f"http://127.0.0.1:{prometheus.server_address[1]}"
    rounds(url, pool_size=10, threads=16, count=3)
    assert prometheus.connections > 16
