"""Text for `kubectl fillprob`: pure functions from FillProbRollout objects to lines.

No Kubernetes client here (cli.py talks to the cluster): everything is a function of the
object as the API server returns it plus `now`, so unit tests render without a cluster.
The ladder, the env per step and the gate table come from the domain (`domain.ladder`,
`domain.playbooks`), never from a copy.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from .api import AppliedEnv, FillProbRolloutSpec, Phase, Playbook, SpecError, parse_spec
from .domain.durations import format_duration
from .domain.gates import AUTO_APPLY, CIRCUIT_BREAKER_TRIPPED, RECOMMEND_ONLY, RESOLUTION_FAILED, RESOLUTION_OK, \
    RESOLVE_SKIPPED, Signal
from .domain.ladder import Step, build_ladder, index_at_or_below, target_index
from .domain.playbooks import NO_GO_TABLE, playbook_patch

# --------------------------------------------------------------------------- small helpers


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None


def human(delta: timedelta | float | None) -> str:
    """12s, 4m05s, 3h02m, 2d4h (kubectl-style ages)."""
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    if seconds < 0:
        seconds = 0
    if seconds < 120:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s" if minutes < 10 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def env_text(set_env: Mapping[str, str], remove_env: Iterable[str] = ()) -> str:
    parts = [f"{k}={v}" for k, v in set_env.items()] + [f"-{k} (removed)" for k in remove_env]
    return " ".join(parts) if parts else "(no change)"


_SUMMED = {"cbTrips", "blocks", "blocksOutsideAllowlist"}
_DROPPED = {"restartToken", "requestKey"}


def _scalar(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def compact_evidence(evidence: Mapping[str, Any] | None, width: int = 110) -> str:
    """Evidence in one line: per-pod counters summed, per-pod gauges as their distinct values."""
    parts: list[str] = []
    for key, value in (evidence or {}).items():
        if key in _DROPPED or value in (None, {}, []):
            continue
        if isinstance(value, Mapping) and value and all(isinstance(v, (int, float)) for v in value.values()):
            if key in _SUMMED:
                text = _scalar(sum(value.values()))
            else:
                text = "/".join(sorted({_scalar(v) for v in value.values()}))
        elif isinstance(value, Mapping):
            text = ",".join(f"{k}:{_flat(v)}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            text = " | ".join(_flat(v) for v in value) if key == "logLines" else ",".join(_flat(v) for v in value)
        else:
            text = _flat(value)
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line if len(line) <= width else line[: width - 3] + "..."


def _flat(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_flat(v) for v in value) + "]"
    return _scalar(value)


# --------------------------------------------------------------------------- the ladder


def spec_or_none(obj: Mapping[str, Any]) -> FillProbRolloutSpec | None:
    try:
        return parse_spec(obj.get("spec"))
    except SpecError:
        return None


def step_env(step: Step, spec: FillProbRolloutSpec) -> str:
    patch = step.env(spec.min_bps)
    return env_text(dict(patch.set_env), patch.remove_env)


def step_symbols(ladder: tuple[Step, ...], i: int) -> str:
    """What a rung adds to the allowlist (Canary: its symbols; Expand k: +batch k)."""
    step = ladder[i]
    if not step.allowlist:
        return "all symbols" if step.enforces else "none enforced"
    before = ladder[i - 1].allowlist if i > 0 else ()
    added = [s for s in step.allowlist if s not in before]
    return ",".join(step.allowlist) if not before else "+" + ",".join(added)


def _passed_steps(history: list[Mapping[str, Any]]) -> dict[str, tuple[datetime | None, datetime | None]]:
    """label -> (step started, step passed) from history (RestartIssued ... StepPassed)."""
    started: dict[str, datetime | None] = {}
    passed: dict[str, tuple[datetime | None, datetime | None]] = {}
    for entry in history:
        label, at = entry.get("step", ""), parse_time(entry.get("at"))
        if entry.get("action") in ("RestartIssued", "PreflightStarted"):
            started[label] = at
        elif entry.get("action") in ("StepPassed", "PreflightPassed", "PreflightSkipped"):
            passed[label] = (started.get(label), at)
    return passed


def window_text(status: Mapping[str, Any], now: datetime, bar: int = 20) -> str:
    start, end = parse_time(status.get("observationStartedAt")), parse_time(status.get("observationEndsAt"))
    if start is None or end is None:
        return "-"
    total = max((end - start).total_seconds(), 1.0)
    elapsed = min(max((now - start).total_seconds(), 0.0), total)
    filled = int(bar * elapsed / total)
    return f"[{'#' * filled}{'.' * (bar - filled)}] {human(elapsed)} / {human(total)}"


def ladder_lines(obj: Mapping[str, Any], now: datetime) -> list[str]:
    spec, status = spec_or_none(obj), obj.get("status") or {}
    if spec is None:
        return ["  (spec does not parse: see `kubectl fillprob plan`)"]
    ladder = build_ladder(spec)
    top = target_index(ladder, spec.target_phase)
    passed = _passed_steps(status.get("history") or [])
    started = {h.get("step") for h in status.get("history") or [] if h.get("action") == "RestartIssued"}
    try:
        phase = Phase(status.get("phase", "Preflight"))
    except ValueError:
        phase = Phase.PREFLIGHT
    current = index_at_or_below(ladder, phase, status.get("batch")) if status else -1
    state = status.get("state", "Pending")
    rows = [["", "STEP", "SYMBOLS", "STATUS", "ENV"]]
    pre_state = "passed" if current >= 0 or "Preflight" in passed else (state if status else "pending")
    rows.append(["> " if current < 0 and status else "  ", "Preflight", "", pre_state,
                 "(job: scripts.preflight_fill_prob)" if spec.preflight.enabled else "(disabled)"])
    for i, step in enumerate(ladder):
        mark = "  "
        if i == current:
            mark = "> "
            what = state
            if state == "Observing":
                what += " " + window_text(status, now, bar=10)
            if status.get("step") and status.get("step") != step.label:
                what += f" ({status['step']})"
        elif step.label in passed:
            start, end = passed[step.label]
            what = "passed" + (f" in {human(end - start)}" if start and end else "")
        elif i < current:
            what = "passed"
        elif state in ("RolledBack", "Halted") and step.label in started:
            what = "rolled back from here" if state == "RolledBack" else "halted here"
        elif state in ("RolledBack", "Halted"):
            what = "held (a spec change re-arms)"
        elif i <= top:
            what = "next" if i == current + 1 else "pending"
        else:
            what = "above target"
        rows.append([mark, step.label, step_symbols(ladder, i), what, step_env(step, spec)])
    return ["  " + line for line in table(rows)]


# --------------------------------------------------------------------------- status


def _condition_lines(status: Mapping[str, Any], now: datetime) -> list[str]:
    conditions = status.get("conditions") or []
    if not conditions:
        return ["  (none)"]
    rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
    for c in conditions:
        at = parse_time(c.get("lastTransitionTime"))
        rows.append([c.get("type", ""), c.get("status", ""), c.get("reason", ""),
                     human(now - at) if at else "-", (c.get("message") or "")[:90]])
    return ["  " + line for line in table(rows)]


def timeline_lines(history: list[Mapping[str, Any]], limit: int | None = 15, width: int = 100) -> list[str]:
    if not history:
        return ["  (no history yet)"]
    shown = history[-limit:] if limit else history
    first = parse_time(history[0].get("at"))
    rows = [["AT", "+T", "STEP", "ACTION", "REASON", "EVIDENCE"]]
    for entry in shown:
        at = parse_time(entry.get("at"))
        rows.append([
            at.strftime("%H:%M:%S") if at else "?",
            "+" + human(at - first) if at and first else "",
            entry.get("step", ""),
            entry.get("action", ""),
            entry.get("reason", ""),
            compact_evidence(entry.get("evidence"), width) or "-",
        ])
    lines = ["  " + line for line in table(rows)]
    if limit and len(history) > limit:
        lines.insert(0, f"  ({len(history) - limit} earlier entries; --history 0 shows all)")
    return lines


def threshold_text(threshold: Mapping[str, Any] | None) -> str:
    if not threshold:
        return "-"
    fields = [("configured", "configuredBps"), ("recommended", "recommendedBps"), ("effective", "effectiveBps")]
    text = ", ".join(f"{label} {threshold[k]} bps" for label, k in fields if threshold.get(k) is not None)
    if threshold.get("mode"):
        text += f"  (mode {threshold['mode']})"
    return text or "-"


def render_status(obj: Mapping[str, Any], now: datetime, history_limit: int | None = 15) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    lines = [
        f"FillProbRollout {meta.get('namespace', '')}/{meta.get('name', '')}   "
        f"deployment {spec.get('deploymentName', '?')}   target {spec.get('targetPhase', '?')}",
    ]
    if not status:
        lines.append("State:       (no status yet: is the operator running and watching this namespace?)")
    else:
        state = status.get("state", "?")
        gen, observed = meta.get("generation"), status.get("observedGeneration")
        lines.append(f"State:       {state}   step {status.get('step', '?')}   phase {status.get('phase', '?')}"
                     + (f"   (generation {gen}, operator saw {observed})" if gen != observed else ""))
        if status.get("reason") or status.get("message"):
            lines.append(f"Why:         {status.get('reason', '')}: {status.get('message', '')}")
        lines.append(f"Window:      {window_text(status, now)}"
                     + (f"   ends {status['observationEndsAt']}" if status.get("observationEndsAt") else ""))
        enforced = status.get("enforcedSymbols") or []
        lines.append(f"Enforced:    {','.join(enforced) if enforced else '(none)'}   "
                     f"last known-good: {','.join(status.get('lastKnownGoodSymbols') or []) or '(none)'}")
        lines.append(f"Threshold:   {threshold_text(status.get('threshold'))}")
        last = status.get("lastRollback")
        if last:
            lines.append(f"Rollback:    {last.get('playbook')} {last.get('reason')} at {last.get('at')}")
            lines.append(f"             evidence: {compact_evidence(last.get('evidence'), 120)}")
    if spec.get("suspend"):
        why = annotations.get("grinder.io/suspend-reason")
        lines.append("Suspended:   spec.suspend is true" + (f" ({why})" if why else ""))
    if annotations.get("grinder.io/rollback"):
        lines.append(f"Pending:     rollback {annotations['grinder.io/rollback']} requested "
                     f"({annotations.get('grinder.io/rollback-reason', 'no reason given')}); waiting for the operator")
    lines += ["", "Ladder:"] + ladder_lines(obj, now)
    if status:
        lines += ["", "Conditions:"] + _condition_lines(status, now)
        lines += ["", "Timeline:"] + timeline_lines(status.get("history") or [], history_limit)
    return "\n".join(lines)


def render_list(items: list[Mapping[str, Any]], now: datetime, with_namespace: bool = False) -> str:
    rows = [(["NAMESPACE"] if with_namespace else []) +
            ["NAME", "TARGET", "PHASE", "STEP", "STATE", "SYMBOLS", "WINDOW", "AGE"]]
    for obj in items:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        created = parse_time(meta.get("creationTimestamp"))
        window = window_text(status, now, bar=0).strip("[] ") if status.get("state") == "Observing" else "-"
        rows.append(([meta.get("namespace", "")] if with_namespace else []) + [
            meta.get("name", ""), spec.get("targetPhase", ""), status.get("phase", "-"), status.get("step", "-"),
            status.get("state", "-") + (" (suspend)" if spec.get("suspend") and status.get("state") != "Suspended"
                                        else ""),
            str(status.get("enforcedSymbolCount", len(status.get("enforcedSymbols") or []))),
            window, human(now - created) if created else "-",
        ])
    return "\n".join(table(rows))


# --------------------------------------------------------------------------- plan

_SIGNAL_TEXT = {
    Signal.CIRCUIT_BREAKER_TRIP: f"CB trip (cb_trips_total > 0 or {CIRCUIT_BREAKER_TRIPPED})",
    Signal.ALL_ORDERS_BLOCKED: "a symbol all blocked (block ratio >= {ratio} over >= {orders} orders)",
    Signal.BLOCKS_OUTSIDE_ALLOWLIST: "blocks outside the allowlist",
    Signal.RESOLUTION_FAILED: "threshold resolution failed/skipped, wrong gauges after restart",
    Signal.UNEXPECTED_THRESHOLD: "recommended threshold jump / effective threshold unexpected",
    Signal.RESTART_TIMED_OUT: "restart not rolled out within progressDeadline ({deadline})",
}


def _post_restart_checks(step: Step, spec: FillProbRolloutSpec) -> list[str]:
    env = step.env(spec.min_bps).apply_to(AppliedEnv())
    mode = AUTO_APPLY if env.auto_threshold == "1" else RECOMMEND_ONLY
    checks = [
        f"rolled out within progressDeadline {format_duration(spec.progress_deadline)}",
        f"new pods log {RESOLUTION_OK} mode={mode}; no {RESOLUTION_FAILED}, no {RESOLVE_SKIPPED} reason=model_dir_unset",
        f"grinder_router_fill_prob_enforce_enabled = {1 if step.enforces else 0}"
        + (f", enforce_allowlist_enabled = {1 if step.allowlist else 0}" if step.enforces else ""),
        "grinder_router_fill_prob_auto_threshold_bps > 0"
        + (" and = the logged effective_bps" if mode == AUTO_APPLY else " (the recommended value)"),
        "grinder_router_fill_prob_cb_trips_total = 0",
    ]
    return checks


def _window_checks(step: Step, spec: FillProbRolloutSpec) -> list[str]:
    gates = spec.gates
    lines = []
    for signal, by_phase in NO_GO_TABLE.items():
        response = by_phase[step.phase]
        if response is None:
            continue
        text = _SIGNAL_TEXT[signal].format(ratio=gates.max_block_ratio, orders=gates.min_orders,
                                           deadline=format_duration(spec.progress_deadline))
        if signal is Signal.ALL_ORDERS_BLOCKED and not step.enforces:
            continue  # nothing is enforced: Shadow's "zero blocks" check covers it
        if signal is Signal.BLOCKS_OUTSIDE_ALLOWLIST and not step.enforces:
            text = "any block at all (Shadow must show zero blocks)"
        if signal is Signal.UNEXPECTED_THRESHOLD and step.phase is Phase.AUTO_THRESHOLD and gates.threshold_range:
            text += f" (thresholdRange {gates.threshold_range.min_bps}..{gates.threshold_range.max_bps} bps)"
        action = getattr(response, "value", response)
        lines.append(f"{text} -> {action}")
    return lines


def plan_lines(spec: FillProbRolloutSpec, name: str, namespace: str | None,
               live_status: Mapping[str, Any] | None = None, live: bool = False) -> list[str]:
    ladder = build_ladder(spec)
    top = target_index(ladder, spec.target_phase)
    current, state = -2, None
    if live_status:
        try:
            phase = Phase(live_status.get("phase", "Preflight"))
        except ValueError:
            phase = Phase.PREFLIGHT
        current = index_at_or_below(ladder, phase, live_status.get("batch"))
        state = live_status.get("state")
    lines = [
        f"FillProbRollout {namespace + '/' if namespace else ''}{name}: valid",
        f"  deployment {spec.deployment_name}, container {spec.container_name or '(the first container)'}, "
        f"target {spec.target_phase.value}, riskAppetite {spec.risk_appetite.value}",
        f"  gates evaluated every {format_duration(spec.prometheus.interval)}; "
        f"Prometheus {spec.prometheus.url or '(the operator default)'}"
        + (f", selector {spec.prometheus.selector}" if spec.prometheus.selector else ""),
        "  only the keys below change on the managed container; every other env entry is left as it is",
        "",
    ]
    pre = "Phase 0 preconditions: GRINDER_FILL_MODEL_DIR, GRINDER_FILL_PROB_EVAL_DIR, GRINDER_ARTIFACT_DIR set; " \
          "ENFORCE/AUTO_THRESHOLD 0 or unset, ENFORCE_SYMBOLS unset" + (", MIN_BPS set" if spec.min_bps is None else "")
    lines.append(pre)
    if spec.preflight.enabled:
        lines.append(f"Preflight Job: {' '.join(spec.preflight.command)} (timeout "
                     f"{format_duration(spec.preflight.timeout)}), must exit 0"
                     + (_live_mark(-1, current, state) if live else ""))
    else:
        lines.append("Preflight Job: disabled")
    total = timedelta()
    for i, step in enumerate(ladder):
        if i > top:
            lines.append(f"\n{i + 1}. {step.label}: not walked (above targetPhase {spec.target_phase.value})")
            continue
        window = spec.observation_window(step.phase)
        total += window
        lines += [
            "",
            f"{i + 1}. {step.label}   observe >= {format_duration(window)}"
            + (_live_mark(i, current, state) if live else ""),
            f"   symbols: {step_symbols(ladder, i)}",
            f"   env:     {step_env(step, spec)}",
            "   after the restart, on the new pods only:",
        ]
        lines += [f"     - {c}" for c in _post_restart_checks(step, spec)]
        lines.append("   no-go signals (post-restart, during the window and for as long as the step is applied) -> response:")
        lines += [f"     - {c}" for c in _window_checks(step, spec)]
        if step.phase is Phase.AUTO_THRESHOLD and spec.gates.max_auto_threshold_delta_bps is not None:
            lines.append(f"   entry refused when |recommended - configured| > "
                         f"{spec.gates.max_auto_threshold_delta_bps} bps")
    lines += ["", f"Minimum time to {spec.target_phase.value}: {format_duration(total)} of observation "
                  "(plus restarts and the preflight Job)", "", "Rollback playbooks (runbook 32):"]
    r2 = ",".join(spec.safe_symbols) or "(none: R1)"
    for playbook in Playbook:
        if playbook is Playbook.R2:
            patch = playbook_patch(playbook, ("<last known-good>",))
            note = f"; falls back to safeSymbols {r2}"
        else:
            patch, note = playbook_patch(playbook), ""
        lines.append(f"  {playbook.value}: {env_text(dict(patch.set_env), patch.remove_env)}{note}")
    return lines


def _live_mark(i: int, current: int, state: str | None) -> str:
    if current == -2:
        return "   [live: not applied yet]"
    if i < current:
        return "   [live: done]"
    if i == current:
        return f"   [live: NOW, {state}]"
    if i == current + 1:
        return "   [live: next]"
    return "   [live: ahead]"


__all__ = [
    "compact_evidence", "human", "ladder_lines", "parse_time", "plan_lines", "render_list", "render_status",
    "timeline_lines", "window_text",
]
