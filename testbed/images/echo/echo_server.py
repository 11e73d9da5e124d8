"""Test image `echo:local` (testbed/images.json): a tiny HTTP server for the process node's e2e tests.

Binds $POD_IP:$PORT (default 8080). GET / answers JSON with the pod's hostname, IP, pid and the env
vars named in $ECHO_VARS (comma separated); GET /healthz answers "ok" (or 503 while $ECHO_UNHEALTHY_FILE
exists). On SIGTERM it writes "<pid> SIGTERM" to $ECHO_TERM_MARKER (when set), logs and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(message: str) -> None:
    print(message, flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/healthz":
            unhealthy = os.environ.get("ECHO_UNHEALTHY_FILE")
            code, body = (503, b"unhealthy\n") if unhealthy and os.path.exists(unhealthy) else (200, b"ok\n")
        else:
            names = [n for n in os.environ.get("ECHO_VARS", "").split(",") if n]
            code = 200
            body = json.dumps({
                "hostname": os.environ.get("HOSTNAME"), "podIP": os.environ.get("POD_IP"), "pid": os.getpid(),
                "env": {n: os.environ.get(n) for n in names}, "argv": sys.argv,
            }).encode()  # fmt: skip
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        log(f"GET {self.path} {code}")

    def log_message(self, *args) -> None:
        pass


def main() -> int:
    host = os.environ.get("POD_IP") or "127.0.0.1"
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((host, port), Handler)

    def on_term(signum, _frame) -> None:
        marker = os.environ.get("ECHO_TERM_MARKER")
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()} SIGTERM\n")
        log(f"got signal {signum}, exiting")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    log(f"echo listening on {host}:{port} argv={sys.argv[1:]}")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
