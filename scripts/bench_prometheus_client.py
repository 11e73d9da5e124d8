#!/usr/bin/env python3
"""What one gate query costs the operator's Prometheus client: figures, no verdict (issue 10).

`.venv/bin/python scripts/bench_prometheus_client.py [--rollouts 100] [--symbols 3] [--queries 300]
[--rounds 2]`

A real HTTP server on loopback answers every query with the same answer: the per-symbol gate
query's for ROLLOUTS rollouts of one pod each, SYMBOLS symbols each, labelled as the testbed's
Prometheus labels them (`kubernetes-pods`: the pod's labels, namespace, pod, node, job,
instance), gzip-compressed when the client accepts gzip, as Prometheus does. Two clients send
QUERIES queries each, taking turns for ROUNDS rounds, with a query as long as the operator's
scope for ROLLOUTS default selectors:

- `operator`: `connect_prometheus` as the operator builds it (the environment's proxy and netrc
  read at connect, answers asked uncompressed);
- `library defaults`: the same `PrometheusConnect`, session and pool, with requests' defaults
  (the environment looked up at every request, gzip).

Printed: the client thread's CPU per query (`time.thread_time`: the server's work is not in it),
median and mean, and the bytes of one answer as sent. The machine is shared: compare the two
clients with each other, within one run.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator")]

from fillprob_operator.adapters.prometheus import connect_prometheus  # noqa: E402
from fillprob_operator.adapters.prometheus_scope import query_scope  # noqa: E402
from fillprob_operator.domain.selector import default_selector  # noqa: E402


def answer(rollouts: int, symbols: int) -> bytes:
    result = []
    for r in range(rollouts):
        deployment = f"grinder-{r}"
        labels = {"__name__": "grinder_router_orders_total", "app": deployment,
                  "instance": f"10.88.{r // 250}.{r % 250}:8080", "job": "kubernetes-pods",
                  "namespace": f"bench-{r % 10}", "node": "node-0", "pod": f"{deployment}-5d8f9c7b4-{r:05d}",
                  "pod_template_hash": "5d8f9c7b4"}
        result += [{"metric": {**labels, "symbol": f"SYM{s}USDT"}, "value": [1714564800.123, str(60 + s)]}
                   for s in range(symbols)]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def serve(body: bytes) -> http.server.ThreadingHTTPServer:
    compressed = gzip.compress(body)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            gzipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
            data = compressed if gzipped else body
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def library_defaults(url: str):
    """The client as `connect_prometheus` built it before issue 10's change: requests' defaults."""
    from prometheus_api_client import PrometheusConnect
    from requests import Session
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = Session()
    session.verify = False
    client = PrometheusConnect(url=url, disable_ssl=True, timeout=10, retry=Retry(total=0), session=session)
    session.mount(url, HTTPAdapter(max_retries=Retry(total=0), pool_connections=1, pool_maxsize=16))
    return client


def cpu_per_query(client, query: str, count: int) -> list[float]:
    for _ in range(10):  # connections open, caches warm
        client.custom_query(query)
    times = []
    for _ in range(count):
        started = time.thread_time()
        client.custom_query(query)
        times.append(time.thread_time() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100)
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    body = answer(args.rollouts, args.symbols)
    server = serve(body)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    scope = query_scope([default_selector(f"bench-{r % 10}", f"grinder-{r}") for r in range(args.rollouts)])
    query = scope.query("increase(grinder_router_orders_total{scope}[1m])")
    clients = {"operator": connect_prometheus(10.0, pool_size=16)(url), "library defaults": library_defaults(url)}
    print(f"one answer: {len(body)} bytes ({len(gzip.compress(body))} gzip-compressed), "
          f"{args.rollouts * args.symbols} series; query {len(query)} characters")
    for round_ in range(1, args.rounds + 1):
        for name, client in clients.items():
            times = cpu_per_query(client, query, args.queries)
            print(f"round {round_}  {name:16}  client CPU per query: median {1000 * statistics.median(times):.3f} ms"
                  f"  mean {1000 * statistics.mean(times):.3f} ms")
    server.shutdown()


if __name__ == "__main__":
    main()
