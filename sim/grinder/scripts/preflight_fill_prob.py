"""Phase 0.2 preflight: ``python3 -m scripts.preflight_fill_prob --model DIR --eval DIR [--auto-threshold]``.

Run from the simulator's root (sim/grinder). Prints one ``PASS <check>`` or
``FAIL <check>: <why>`` line per check, then ``configured_bps=N``, ``recommended_bps=N``,
``effective_bps=N``, ``mode=recommend_only|auto_apply`` (a value that cannot be known is left
out), then ``PREFLIGHT_PASS`` / ``PREFLIGHT_FAIL failed=N``. Exit 0 when every check passes,
1 otherwise, 2 on bad usage. configured_bps comes from GRINDER_FILL_PROB_MIN_BPS (same
parsing and default as the simulator).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import grinder_sim
except ImportError:  # run as a file path: make the simulator root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import grinder_sim


def _check_dir(label: str, value: str | None, flag: str) -> str | None:
    """None when usable, else why not."""
    if value is None or value.strip() == "":
        return f"{flag} is missing or empty (is the env var set?)"
    if "$(" in value or "${" in value:
        return f"{flag} {value!r} is an unexpanded variable reference (the env var is not set on the container)"
    if not os.path.isdir(value):
        return f"{value} is not a directory"
    return None


def _check_json_file(path: str) -> str | None:
    if not os.path.isfile(path):
        return f"{path} does not exist"
    try:
        with open(path, encoding="utf-8") as fh:
            json.load(fh)
    except OSError as exc:
        return f"{path} is unreadable: {exc.strerror or exc}"
    except ValueError as exc:
        return f"{path} is not valid JSON: {exc}"
    return None


def run(argv: list[str] | None = None, env=None, out=print) -> int:
    parser = argparse.ArgumentParser(prog="preflight_fill_prob", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GRINDER_FILL_MODEL_DIR")
    parser.add_argument("--eval", dest="eval_dir", help="GRINDER_FILL_PROB_EVAL_DIR")
    parser.add_argument("--auto-threshold", action="store_true", help="plan auto_apply (GRINDER_FILL_PROB_AUTO_THRESHOLD=1)")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env

    failures = 0
    values: dict[str, object] = {}

    def check(name: str, why: str | None) -> bool:
        nonlocal failures
        if why is None:
            out(f"PASS {name}")
            return True
        failures += 1
        out(f"FAIL {name}: {' '.join(why.split())}")
        return False

    if check("model_dir", _check_dir("model", args.model, "--model")):
        check("model_manifest", _check_json_file(os.path.join(args.model, "manifest.json")))
        check("model_file", _check_json_file(os.path.join(args.model, "model.json")))
    else:
        check("model_manifest", "skipped: no usable model dir")
        check("model_file", "skipped: no usable model dir")

    if check("eval_dir", _check_dir("eval", args.eval_dir, "--eval")):
        try:
            values["recommended_bps"] = grinder_sim.read_recommended_bps(args.eval_dir)
            check("eval_report", None)
        except grinder_sim.ResolutionError as exc:
            check("eval_report", f"{exc.reason_code}: {exc.detail}")
        check("eval_manifest", _check_json_file(os.path.join(args.eval_dir, "manifest.json")))
    else:
        check("eval_report", "skipped: no usable eval dir")
        check("eval_manifest", "skipped: no usable eval dir")

    try:
        values["configured_bps"] = grinder_sim.configured_min_bps(env)
        check("configured_bps", None)
    except grinder_sim.ConfigError as exc:
        check("configured_bps", str(exc))

    mode = grinder_sim.MODE_AUTO_APPLY if args.auto_threshold else grinder_sim.MODE_RECOMMEND_ONLY
    effective = values.get("recommended_bps") if args.auto_threshold else values.get("configured_bps")
    if effective is not None:
        values["effective_bps"] = effective
    for key in ("configured_bps", "recommended_bps", "effective_bps"):
        if key in values:
            out(f"{key}={values[key]}")
    out(f"mode={mode}")
    out("PREFLIGHT_PASS" if failures == 0 else f"PREFLIGHT_FAIL failed={failures}")
    return 0 if failures == 0 else 1


def main() -> None:
    sys.exit(run(out=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main()
