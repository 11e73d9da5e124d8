"""The pure domain: ladder, gates, playbooks, status and history.

Nothing here imports kopf, kubernetes or a Prometheus client, performs I/O, logs,
or reads the clock: time arrives as an argument (`.importlinter` enforces the first part).
"""
