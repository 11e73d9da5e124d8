"""`python -m fillprob_operator`: the operator, configured from the environment.

Same as `kopf run -m fillprob_operator.handlers --all-namespaces` (or `--namespace` for each
of FILLPROB_NAMESPACES), with kopf's liveness endpoint when FILLPROB_LIVENESS_ENDPOINT is set.
"""

from __future__ import annotations

import os

import kopf

from . import allocator
from .settings import Settings


def main() -> None:
    config = Settings.from_env()
    # Before any thread allocates (kopf's, the caches' watches, the I/O threads): a limit set
    # later leaves the arenas made before it (allocator.py). The startup handler says what took.
    allocator.limit_arenas(config.malloc_arenas)
    kopf.configure(verbose=os.environ.get("FILLPROB_VERBOSE") == "1")
    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=os.environ.get("FILLPROB_LIVENESS_ENDPOINT") or None,
    )


if __name__ == "__main__":
    main()
