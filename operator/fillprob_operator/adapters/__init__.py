"""Adapters: the only code that talks to Kubernetes and Prometheus.

They turn client errors into plain results (404 -> None / absent, unreachable -> "no data")
and run every blocking client call off the event loop, with a timeout.
"""
