"""procnode: probe parsing (defaults, named ports) and one probe attempt against real sockets."""

from __future__ import annotations

import http.server
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode.probes import Health, ProbeError, ProbeSpec, parse_probe, probe_loop, run_probe  # noqa: E402

CONTAINER = {"name": "main", "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]}


def test_http_probe_defaults_and_named_port() -> None:
    spec = parse_probe({"httpGet": {"path": "healthz", "port": "metrics"}}, CONTAINER, "127.1.0.9")
    assert (spec.action, spec.host, spec.port, spec.path, spec.scheme) == ("httpGet", "127.1.0.9", 9090, "/healthz", "HTTP")
    assert (spec.initial_delay, spec.period, spec.timeout, spec.success_threshold, spec.failure_threshold) == (0, 10, 1, 1, 3)


def test_probe_settings_and_headers() -> None:
    spec = parse_probe(
        {"httpGet": {"port": 8080, "host": "127.0.0.5", "scheme": "HTTPS", "httpHeaders": [{"name": "X-A", "value": "1"}]},
         "initialDelaySeconds": 3, "periodSeconds": 2, "timeoutSeconds": 5, "successThreshold": 2, "failureThreshold": 7,
         "terminationGracePeriodSeconds": 4},
        CONTAINER, "127.1.0.9",
    )  # fmt: skip
    assert (spec.host, spec.port, spec.scheme, spec.headers) == ("127.0.0.5", 8080, "HTTPS", (("X-A", "1"),))
    assert (spec.initial_delay, spec.period, spec.timeout, spec.success_threshold, spec.failure_threshold, spec.termination_grace) == (3, 2, 5, 2, 7, 4)


def test_exec_and_tcp_probes() -> None:
    assert parse_probe({"exec": {"command": ["cat", "/tmp/ready"]}}, CONTAINER, "ip").command == ("cat", "/tmp/ready")
    tcp = parse_probe({"tcpSocket": {"port": "http"}}, CONTAINER, "127.1.0.9")
    assert (tcp.action, tcp.host, tcp.port) == ("tcpSocket", "127.1.0.9", 8080)


def test_unknown_named_port_and_missing_handler() -> None:
    with pytest.raises(ProbeError, match="not a named port"):
        parse_probe({"httpGet": {"port": "nope"}}, CONTAINER, "ip")
    with pytest.raises(ProbeError, match="no handler"):
        parse_probe({"periodSeconds": 1}, CONTAINER, "ip")


@pytest.fixture
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code = {"/ok": 200, "/redirect": 302, "/fail": 500}.get(self.path, 404)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize(("path", "ok"), [("/ok", True), ("/redirect", True), ("/fail", False), ("/missing", False)])
def test_http_probe_status_codes(http_server: int, path: str, ok: bool) -> None:
    success, message = run_probe(ProbeSpec("httpGet", host="127.0.0.1", port=http_server, path=path), {}, "/")
    assert success is ok, message


def test_tcp_and_exec_attempts(http_server: int, tmp_path: Path) -> None:
    assert run_probe(ProbeSpec("tcpSocket", host="127.0.0.1", port=http_server), {}, "/")[0]
    (tmp_path / "ready").write_text("yes")
    env = {"PATH": "/usr/bin:/bin"}
    assert run_probe(ProbeSpec("exec", command=("cat", "ready")), env, str(tmp_path)) == (True, "yes")
    ok, message = run_probe(ProbeSpec("exec", command=("sh", "-c", "exit 3")), env, str(tmp_path))
    assert not ok and "exit code 3" in message
    ok, message = run_probe(ProbeSpec("exec", command=("sleep", "5"), timeout=0.2), env, str(tmp_path))
    assert not ok and "timed out" in message


def test_closed_port_fails() -> None:
    ok, message = run_probe(ProbeSpec("tcpSocket", host="127.0.0.1", port=1), {}, "/")
    assert not ok and "tcpSocket" in message


def test_readiness_loop_needs_success_threshold_then_failure_threshold() -> None:
    results = iter([False, True, True, False, False, True])
    seen: list[bool] = []
    health = Health(has_startup=False, has_readiness=True)

    def prober(_spec):
        try:
            ok = next(results)
        except StopIteration:
            health.stop.set()
            return False, "done"
        return ok, "" if ok else "nope"

    def notify(reason, _message):
        if not reason:
            seen.append(health.ready)

    probe_loop("readiness", ProbeSpec("exec", period=0, success_threshold=2, failure_threshold=2), health, prober, notify)
    assert seen == [True, False]


def test_liveness_failure_marks_the_run_for_killing() -> None:
    health = Health(has_startup=False, has_readiness=False)
    probe_loop("liveness", ProbeSpec("exec", period=0, failure_threshold=2, termination_grace=3), health,
               lambda _s: (False, "boom"), lambda *_: None)  # fmt: skip
    assert health.failure == "Liveness probe failed: boom"
    assert health.failure_grace == 3
