"""procnode: the testbed's process node, a small kubelet that runs pods as local processes.

    PYTHONPATH=testbed .venv/bin/python -m procnode --kubeconfig K --state-dir D \\
        --images testbed/images.json --repo-root R --node-name procnode \\
        --listen 127.0.0.1:10250 --cert C --key KEY

Stopping the node (SIGTERM/SIGINT) leaves the pods' processes running, like a kubelet restart;
a new node process adopts them. `make testbed-down` stops them through their pid files.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from .envbuild import kubernetes_service_env
from .events import Recorder
from .images import Images
from .ipam import IPAllocator
from .kubeapi import Kube
from .manager import PodManager
from .node import NodeAgent
from .server import KubeletServer, self_signed
from .worker import NodeContext

log = logging.getLogger("procnode")

RESOURCES = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="procnode", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True, help="kubeconfig the node talks to the API server with")
    p.add_argument("--state-dir", required=True, type=Path, help="pod dirs, logs, pid files, IP allocations")
    p.add_argument("--images", required=True, type=Path, help="JSON map image -> folder (relative to --repo-root)")
    p.add_argument("--repo-root", required=True, type=Path, help="project root: image folders and .venv/bin for PATH")
    p.add_argument("--node-name", default="procnode")
    p.add_argument("--listen", default="127.0.0.1:10250", help="kubelet HTTPS endpoint host:port")
    p.add_argument("--cert", help="serving cert (default: self-signed in the state dir)")
    p.add_argument("--key", help="serving key")
    p.add_argument("--backoff-initial", type=float, default=10.0, help="crash-loop back-off start, seconds (kubelet: 10)")
    p.add_argument("--backoff-max", type=float, default=300.0, help="crash-loop back-off cap, seconds (kubelet: 300)")
    p.add_argument("--resync", type=float, default=300.0, help="relist pods every N seconds")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)

    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "pods").mkdir(exist_ok=True)
    host, _, port_text = args.listen.rpartition(":")
    port = int(port_text)
    cert, key = (args.cert, args.key) if args.cert and args.key else self_signed(state_dir, host)

    kube = Kube(args.kubeconfig)
    api = urlsplit(kube.server)
    ctx = NodeContext(
        kube=kube,
        recorder=Recorder(kube, args.node_name),
        images=Images(args.images.resolve(), args.repo_root.resolve()),
        ipam=IPAllocator(state_dir / "ipam.json"),
        state_dir=state_dir,
        repo_root=args.repo_root.resolve(),
        node_name=args.node_name,
        allocatable=RESOURCES,
        service_env=kubernetes_service_env(api.hostname or "127.0.0.1", api.port or 443),
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
    )
    pods = PodManager(ctx, kube, resync=args.resync)
    stop = threading.Event()

    server = KubeletServer((host, port), cert, key, pods)
    threading.Thread(target=server.serve_forever, name="kubelet-api", daemon=True).start()
    log.info("kubelet API on https://%s:%s (containerLogs, healthz)", host, port)

    agent = NodeAgent(kube, args.node_name, port, RESOURCES)
    while not stop.is_set():
        try:
            agent.register()
            break
        except Exception as exc:  # noqa: BLE001 - API server not up yet
            log.warning("registering node %s failed: %s; retrying", args.node_name, exc)
            stop.wait(2.0)

    threading.Thread(target=agent.heartbeat, args=(stop,), name="heartbeat", daemon=True).start()
    threading.Thread(target=pods.run, args=(stop,), name="pods", daemon=True).start()
    log.info("node %s running: state %s, images %s, repo %s", args.node_name, state_dir, args.images, ctx.repo_root)

    def on_signal(signum, _frame):
        log.info("signal %s: stopping the node (pod processes keep running)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
