"""`python tests/e2e/chaos_operator.py`: the operator, exactly `python -m fillprob_operator`, with
one fault armed, for tests/e2e/test_chaos.py. A test launcher: the operator never imports it and
the image does not ship it (STYLE.md: no test switches in production code).

CHAOS_FAULT=<point>:<n> SIGKILLs this process (no cleanup handler runs, as a kill -9 from outside)
the n-th time (1-based, counted in this process) it gets to <point>:

  after-status-write  the API server has answered a status patch; none of the decision's actions
                      (env patch, preflight Job, annotation removal, Events) has run
  before-patch-env    the same, for a decision that carries a PatchEnv: the new restart token is
                      in status, the Deployment does not have it yet (docs/reliability.md: the
                      next tick re-sends the patch, at most once)

It wraps `Executor._write_status`, the one place where the executor writes the status before it
acts (adapters/executor.py: status first, then actions). Should a refactor move that write, this
launcher refuses to start instead of arming nothing. Before dying it prints one line
`chaos: fault <point>:<n> fired ...` to the operator's log, which the test counts.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from fillprob_operator import __main__ as operator_main
from fillprob_operator.adapters import executor
from fillprob_operator.domain.actions import PatchEnv

POINTS = ("after-status-write", "before-patch-env")


def parse(text: str) -> tuple[str, int]:
    point, _, n = text.strip().rpartition(":")
    if point not in POINTS or not n.isdigit() or int(n) < 1:
        raise SystemExit(f"chaos_operator: CHAOS_FAULT={text!r}: want <{'|'.join(POINTS)}>:<n>, n >= 1")
    return point, int(n)


def arm(point: str, n: int) -> None:
    original = getattr(executor.Executor, "_write_status", None)
    if original is None:
        raise SystemExit("chaos_operator: Executor._write_status is gone; move the fault to where the "
                         "executor now writes the status before its actions")
    reached = 0

    async def write_status(self: Any, ctx: Any, decided: Any, actions: Any, result: Any) -> Any:
        nonlocal reached
        out = await original(self, ctx, decided, actions, result)
        to_run = out[0]
        if result.status_patched and (point == "after-status-write"
                                      or any(isinstance(a, PatchEnv) for a in to_run)):
            reached += 1
            if reached == n:
                kinds = ",".join(type(a).__name__ for a in to_run) or "none"
                history = (result.status.get("history") or [{}])[-1]
                print(f"chaos: fault {point}:{n} fired: status of {ctx.namespace}/{ctx.name} written "
                      f"(state={result.status.get('state')} step={result.status.get('step')!r} "
                      f"last={history.get('action')}), actions not run: {kinds}", flush=True)
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return out

    executor.Executor._write_status = write_status  # type: ignore[method-assign]


def main() -> None:
    fault = os.environ.get("CHAOS_FAULT", "").strip()
    if fault:
        arm(*parse(fault))
        print(f"chaos: fault {fault} armed", flush=True)
    operator_main.main()


if __name__ == "__main__":
    main()
