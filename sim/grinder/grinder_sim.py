"""Grinder simulator: a stand-in for grinder's router, honest to runbook 32.

Run: ``python3 grinder_sim.py`` or ``python3 -m grinder_sim`` from this folder (stdlib only).
Contract: /work/shared/TESTBED.md ("The grinder simulator") and runbook 32.

Environment
-----------
POD_IP (127.0.0.1), GRINDER_SIM_PORT (9090) -- where HTTP listens.
GRINDER_FILL_MODEL_ENFORCE        1 = enforce, anything else = shadow (0).
GRINDER_FILL_PROB_AUTO_THRESHOLD  1 = auto_apply, anything else = recommend_only.
GRINDER_FILL_PROB_ENFORCE_SYMBOLS unset or empty = all symbols; "A,B" = allowlist.
GRINDER_FILL_PROB_MIN_BPS         configured threshold, int 0..10000 (unset: 2500).
GRINDER_FILL_MODEL_DIR, GRINDER_FILL_PROB_EVAL_DIR, GRINDER_ARTIFACT_DIR.
GRINDER_SIM_SYMBOLS (SYM1..SYM8), GRINDER_SIM_ORDERS_PER_SEC (20, per symbol),
GRINDER_SIM_CB_BLOCK_RATE (0.9), GRINDER_SIM_SEED (unset: random).
An invalid number logs ``GRINDER_SIM_CONFIG_INVALID detail=...`` and exits 2.

Startup (stdout, one line each, in this order)
----------------------------------------------
Exactly one of
  FILL_PROB_THRESHOLD_RESOLUTION_OK mode=<recommend_only|auto_apply> recommended_bps=N configured_bps=N effective_bps=N
  FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=<code> detail=<text to end of line>
  THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset
then THRESHOLD_RESOLUTION_ARTIFACT_WRITTEN path=... (or ..._WRITE_FAILED / ..._SKIPPED),
then GRINDER_SIM_STARTED pod_ip=... port=... symbols=... enforce=... allowlist=... .
Resolution: model dir unset -> SKIPPED; model dir without manifest.json/model.json, eval dir
unset, eval_report.json missing/unreadable/not JSON/without an int recommended_bps in
0..10000 -> FAILED. effective_bps = recommended_bps in auto_apply, else configured_bps.
When resolution FAILED or was SKIPPED the gate still enforces, with the configured
GRINDER_FILL_PROB_MIN_BPS (fail back to the manual threshold, runbook R3 semantics).
Each start writes $GRINDER_ARTIFACT_DIR/threshold_resolution_<UTC %Y%m%dT%H%M%S.%fZ>.json.

Orders
------
Every symbol gets GRINDER_SIM_ORDERS_PER_SEC orders/s (10 ticks/s, fractional carry).
Each order's fill probability is uniform over 0..10000 bps. Enforcement applies to a symbol
when ENFORCE=1 and (no allowlist or the symbol is in it); an enforced order with probability
< effective threshold (or any enforced order under the blockAll fault) is blocked.

Circuit breaker (per symbol): once the symbol has 50 orders, a block rate over its last 50
orders above GRINDER_SIM_CB_BLOCK_RATE trips it: cb_trips_total += 1 and one log line
  FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=N rate_pct=P symbol=S
The breaker then latches (no more trips, no log spam) and re-arms only when that rate falls
to half of GRINDER_SIM_CB_BLOCK_RATE or below (hysteresis), or on restart. A tripped breaker
only reports: the gate keeps blocking (fail-closed), so "all orders blocked" stays visible.

Metrics decision (/metrics, Prometheus text 0.0.4)
--------------------------------------------------
The runbook's five metrics keep their names:
  grinder_router_fill_prob_enforce_enabled            gauge, unlabelled
  grinder_router_fill_prob_enforce_allowlist_enabled  gauge, unlabelled; 1 iff a non-empty
                                                      allowlist is configured (independent of ENFORCE)
  grinder_router_fill_prob_blocks_total{symbol}       counter, ONE series per simulated symbol
                                                      (0 included) and NO unlabelled series:
                                                      the runbook's total is sum(...) of it, so
                                                      sum() never double-counts
  grinder_router_fill_prob_cb_trips_total             counter, unlabelled
  grinder_router_fill_prob_auto_threshold_bps         gauge: the current recommended threshold
                                                      (recommend_only; runbook Phase 1: ">0, recommended"),
                                                      the effective one in auto_apply (the same
                                                      value), 0 when resolution failed/skipped
plus grinder_router_orders_total{symbol} (counter), grinder_sim_info{mode,resolution,
recommended_bps,configured_bps,effective_bps} 1 and process_start_time_seconds.

HTTP
----
GET /metrics, /healthz, /readyz (200), GET /sim/state (JSON).
POST /sim/faults (JSON object) changes behaviour now, no restart; keys merge into the
current fault state, and ``{}`` clears every fault:
  {"cbTrip": true[, "symbol": "SYM2"]}  one breaker trip now (counter + log line); the symbol
                                        defaults to the first enforced (else first) symbol
  {"blockAll": true|false}              block every enforced order (trips the breaker via
                                        the block rate, as in production)
  {"thresholdJumpBps": N}               recommended threshold = eval value + N (an offset, not
                                        cumulative; 0 undoes it); in auto_apply the effective
                                        threshold follows; no effect when resolution failed
Bad JSON, unknown keys or wrong types -> 400 {"error": ...}; success -> 200 with the fault state.
SIGTERM/SIGINT -> GRINDER_SIM_STOPPING, exit 0.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

DEFAULT_SYMBOLS = tuple(f"SYM{i}" for i in range(1, 9))
DEFAULT_MIN_BPS = 2500
DEFAULT_PORT = 9090
DEFAULT_ORDERS_PER_SEC = 20.0
DEFAULT_CB_BLOCK_RATE = 0.9
CB_WINDOW = 50
TICKS_PER_SEC = 10
MAX_BPS = 10000

MODE_RECOMMEND_ONLY = "recommend_only"
MODE_AUTO_APPLY = "auto_apply"

Emit = Callable[[str], None]


def emit_stdout(line: str) -> None:
    print(line, flush=True)


class ConfigError(ValueError):
    pass


# --------------------------------------------------------------------------- config


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _int_env(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
    return value


def _float_env(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
    return value


def parse_symbols(raw: str | None) -> tuple[str, ...]:
    """Comma list -> tuple, stripped, empties dropped, order kept, duplicates removed."""
    seen: dict[str, None] = {}
    for part in (raw or "").split(","):
        part = part.strip()
        if part:
            seen.setdefault(part, None)
    return tuple(seen)


def configured_min_bps(env: Mapping[str, str]) -> int:
    return _int_env(env, "GRINDER_FILL_PROB_MIN_BPS", DEFAULT_MIN_BPS, 0, MAX_BPS)


@dataclass(frozen=True)
class Config:
    pod_ip: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    enforce: bool = False
    auto_threshold: bool = False
    # Empty tuple = no allowlist (all symbols), per runbook Phase 4 "unset or empty".
    allowlist: tuple[str, ...] = ()
    configured_bps: int = DEFAULT_MIN_BPS
    model_dir: str | None = None
    eval_dir: str | None = None
    artifact_dir: str | None = None
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    orders_per_sec: float = DEFAULT_ORDERS_PER_SEC
    cb_block_rate: float = DEFAULT_CB_BLOCK_RATE
    seed: int | None = None

    @property
    def allowlist_enabled(self) -> bool:
        return bool(self.allowlist)

    def enforced(self, symbol: str) -> bool:
        return self.enforce and (not self.allowlist or symbol in self.allowlist)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        def path(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        symbols = parse_symbols(env.get("GRINDER_SIM_SYMBOLS")) if env.get("GRINDER_SIM_SYMBOLS") else DEFAULT_SYMBOLS
        if not symbols:
            raise ConfigError("GRINDER_SIM_SYMBOLS lists no symbol")
        seed_raw = env.get("GRINDER_SIM_SEED", "").strip()
        try:
            seed = int(seed_raw) if seed_raw else None
        except ValueError:
            raise ConfigError(f"GRINDER_SIM_SEED={seed_raw!r} is not an integer") from None
        return cls(
            pod_ip=env.get("POD_IP", "").strip() or "127.0.0.1",
            port=_int_env(env, "GRINDER_SIM_PORT", DEFAULT_PORT, 0, 65535),
            enforce=_flag(env.get("GRINDER_FILL_MODEL_ENFORCE")),
            auto_threshold=_flag(env.get("GRINDER_FILL_PROB_AUTO_THRESHOLD")),
            allowlist=parse_symbols(env.get("GRINDER_FILL_PROB_ENFORCE_SYMBOLS")),
            configured_bps=configured_min_bps(env),
            model_dir=path("GRINDER_FILL_MODEL_DIR"),
            eval_dir=path("GRINDER_FILL_PROB_EVAL_DIR"),
            artifact_dir=path("GRINDER_ARTIFACT_DIR"),
            symbols=symbols,
            orders_per_sec=_float_env(env, "GRINDER_SIM_ORDERS_PER_SEC", DEFAULT_ORDERS_PER_SEC, 0.0, 100000.0),
            cb_block_rate=_float_env(env, "GRINDER_SIM_CB_BLOCK_RATE", DEFAULT_CB_BLOCK_RATE, 0.0, 1.0),
            seed=seed,
        )


# ----------------------------------------------------------------- threshold resolution


class ResolutionError(Exception):
    def __init__(self, reason_code: str, detail: str):
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = reason_code
        self.detail = " ".join(detail.split())  # one log line


def read_recommended_bps(eval_dir: str) -> int:
    """recommended_bps from <eval_dir>/eval_report.json; ResolutionError when unusable."""
    report = os.path.join(eval_dir, "eval_report.json")
    if not os.path.isfile(report):
        raise ResolutionError("eval_report_missing", f"{report} does not exist")
    try:
        with open(report, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ResolutionError("eval_report_unreadable", f"{report}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResolutionError("eval_report_invalid_json", f"{report}: {exc}") from None
    if not isinstance(data, dict) or "recommended_bps" not in data:
        raise ResolutionError("recommended_bps_missing", f"{report} has no recommended_bps")
    value = data["recommended_bps"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BPS:
        raise ResolutionError("recommended_bps_invalid", f"{report}: recommended_bps={value!r} is not an int in 0..{MAX_BPS}")
    return value


def missing_model_files(model_dir: str) -> list[str]:
    return [name for name in ("manifest.json", "model.json") if not os.path.isfile(os.path.join(model_dir, name))]


@dataclass(frozen=True)
class Resolution:
    status: str  # "ok" | "failed" | "skipped"
    mode: str
    configured_bps: int
    recommended_bps: int | None = None
    reason_code: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def effective_bps(self) -> int:
        # Failed/skipped resolution falls back to the manual threshold.
        if self.ok and self.mode == MODE_AUTO_APPLY and self.recommended_bps is not None:
            return self.recommended_bps
        return self.configured_bps

    def log_line(self) -> str:
        if self.status == "ok":
            return (
                f"FILL_PROB_THRESHOLD_RESOLUTION_OK mode={self.mode} recommended_bps={self.recommended_bps} "
                f"configured_bps={self.configured_bps} effective_bps={self.effective_bps}"
            )
        if self.status == "failed":
            return f"FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code={self.reason_code} detail={self.detail}"
        return f"THRESHOLD_RESOLVE_SKIPPED reason={self.reason_code}"

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "mode": self.mode,
            "recommended_bps": self.recommended_bps,
            "configured_bps": self.configured_bps,
            "effective_bps": self.effective_bps,
            "reason_code": self.reason_code,
            "detail": self.detail,
        }


def resolve_threshold(model_dir: str | None, eval_dir: str | None, configured_bps: int, auto_threshold: bool) -> Resolution:
    mode = MODE_AUTO_APPLY if auto_threshold else MODE_RECOMMEND_ONLY
    if not model_dir:
        return Resolution("skipped", mode, configured_bps, reason_code="model_dir_unset")
    try:
        missing = missing_model_files(model_dir)
        if missing:
            raise ResolutionError("model_files_missing", f"{model_dir} lacks {','.join(missing)}")
        if not eval_dir:
            raise ResolutionError("eval_dir_unset", "GRINDER_FILL_PROB_EVAL_DIR is not set")
        recommended = read_recommended_bps(eval_dir)
    except ResolutionError as exc:
        return Resolution("failed", mode, configured_bps, reason_code=exc.reason_code, detail=exc.detail)
    return Resolution("ok", mode, configured_bps, recommended_bps=recommended)


def utc_stamp(now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def write_resolution_artifact(artifact_dir: str, resolution: Resolution, config: Config) -> str:
    """Write threshold_resolution_<stamp>.json atomically, never overwriting another pod's file."""
    os.makedirs(artifact_dir, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    body = {
        "at": now.isoformat().replace("+00:00", "Z"),
        "resolution": resolution.as_dict(),
        "pod_ip": config.pod_ip,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "model_dir": config.model_dir,
        "eval_dir": config.eval_dir,
        "enforce": config.enforce,
        "allowlist": list(config.allowlist),
    }
    data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    for _ in range(1000):
        path = os.path.join(artifact_dir, f"threshold_resolution_{utc_stamp(now)}.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)  # fails if a sibling pod took this microsecond
            return path
        except FileExistsError:
            now += datetime.timedelta(microseconds=1)
        finally:
            os.unlink(tmp)
    raise OSError("no free artifact name")


# ------------------------------------------------------------------------ simulation


@dataclass
class SymbolState:
    orders: int = 0
    blocks: int = 0
    window: collections.deque = field(default_factory=lambda: collections.deque(maxlen=CB_WINDOW))
    window_blocks: int = 0
    tripped: bool = False
    trips: int = 0


class FaultError(ValueError):
    pass


class Simulator:
    """Order flow, fill-prob gate and circuit breaker. Thread-safe; time is passed in."""

    def __init__(self, config: Config, resolution: Resolution, *, rng: random.Random | None = None, emit: Emit = emit_stdout):
        self.config = config
        self.resolution = resolution
        self.rng = rng or random.Random(config.seed)
        self.emit = emit
        self.lock = threading.RLock()
        self.symbols = {s: SymbolState() for s in config.symbols}
        self.cb_trips_total = 0
        self.block_all = False
        self.threshold_jump_bps = 0
        self.injected_cb_trips = 0
        self._carry = 0.0
        self.started_at = time.time()

    # thresholds -----------------------------------------------------------------
    @property
    def recommended_bps(self) -> int | None:
        if not self.resolution.ok or self.resolution.recommended_bps is None:
            return None
        return min(MAX_BPS, max(0, self.resolution.recommended_bps + self.threshold_jump_bps))

    @property
    def effective_bps(self) -> int:
        if self.resolution.ok and self.resolution.mode == MODE_AUTO_APPLY:
            return self.recommended_bps  # type: ignore[return-value]
        return self.resolution.configured_bps

    @property
    def auto_threshold_gauge(self) -> int:
        return self.recommended_bps or 0

    # orders ---------------------------------------------------------------------
    def simulate(self, symbol: str, n: int) -> None:
        """n orders for one symbol through the gate and the breaker."""
        with self.lock:
            st = self.symbols[symbol]
            enforced = self.config.enforced(symbol)
            threshold = self.effective_bps
            for _ in range(n):
                prob = self.rng.uniform(0, MAX_BPS)
                blocked = enforced and (self.block_all or prob < threshold)
                st.orders += 1
                if len(st.window) == CB_WINDOW and st.window[0]:
                    st.window_blocks -= 1
                st.window.append(blocked)
                if blocked:
                    st.blocks += 1
                    st.window_blocks += 1
                self._check_breaker(symbol, st)

    def _check_breaker(self, symbol: str, st: SymbolState) -> None:
        if len(st.window) < CB_WINDOW:
            return
        rate = st.window_blocks / CB_WINDOW
        if not st.tripped and rate > self.config.cb_block_rate:
            st.tripped = True
            self._trip(symbol, st, st.window_blocks, rate, source="block_rate")
        elif st.tripped and rate <= self.config.cb_block_rate / 2:
            st.tripped = False
            self.emit(f"FILL_PROB_CIRCUIT_BREAKER_REARMED symbol={symbol} rate_pct={rate * 100:.1f}")

    def _trip(self, symbol: str, st: SymbolState, block_count: int, rate: float, source: str) -> None:
        st.trips += 1
        self.cb_trips_total += 1
        self.emit(f"FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count={block_count} rate_pct={rate * 100:.1f} symbol={symbol} source={source}")

    def advance(self, seconds: float) -> int:
        """Simulate `seconds` of order flow for every symbol; returns orders per symbol."""
        with self.lock:
            due = self.config.orders_per_sec * seconds + self._carry
            n = int(due)
            self._carry = due - n
            for symbol in self.symbols:
                self.simulate(symbol, n)
            return n

    # faults ---------------------------------------------------------------------
    def apply_faults(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise FaultError("body must be a JSON object")
        known = {"cbTrip", "blockAll", "thresholdJumpBps", "symbol"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise FaultError(f"unknown keys {unknown}; known: {sorted(known)}")
        for key in ("cbTrip", "blockAll"):
            if key in body and not isinstance(body[key], bool):
                raise FaultError(f"{key} must be true or false")
        jump = body.get("thresholdJumpBps")
        if jump is not None and (isinstance(jump, bool) or not isinstance(jump, int) or abs(jump) > MAX_BPS):
            raise FaultError(f"thresholdJumpBps must be an integer in -{MAX_BPS}..{MAX_BPS}")
        symbol = body.get("symbol")
        if symbol is not None and symbol not in self.symbols:
            raise FaultError(f"symbol {symbol!r} is not simulated; symbols: {list(self.symbols)}")
        with self.lock:
            if not body:
                self.block_all = False
                self.threshold_jump_bps = 0
                self.emit("GRINDER_SIM_FAULTS_CLEARED")
                return self.fault_state()
            if "blockAll" in body:
                self.block_all = body["blockAll"]
            if jump is not None:
                self.threshold_jump_bps = jump
            if body.get("cbTrip"):
                target = symbol or self._default_fault_symbol()
                st = self.symbols[target]
                self.injected_cb_trips += 1
                rate = st.window_blocks / len(st.window) if st.window else 0.0
                self._trip(target, st, st.window_blocks, rate, source="fault")
            self.emit(
                f"GRINDER_SIM_FAULTS_APPLIED block_all={int(self.block_all)} threshold_jump_bps={self.threshold_jump_bps} "
                f"recommended_bps={self.recommended_bps} effective_bps={self.effective_bps}"
            )
            return self.fault_state()

    def _default_fault_symbol(self) -> str:
        for s in self.symbols:
            if self.config.enforced(s):
                return s
        return next(iter(self.symbols))

    def fault_state(self) -> dict:
        with self.lock:
            return {
                "blockAll": self.block_all,
                "thresholdJumpBps": self.threshold_jump_bps,
                "injectedCbTrips": self.injected_cb_trips,
                "recommendedBps": self.recommended_bps,
                "effectiveBps": self.effective_bps,
            }

    # views ------------------------------------------------------------------------
    def state(self) -> dict:
        with self.lock:
            return {
                "config": {
                    "podIp": self.config.pod_ip,
                    "port": self.config.port,
                    "enforce": self.config.enforce,
                    "autoThreshold": self.config.auto_threshold,
                    "allowlist": list(self.config.allowlist),
                    "allowlistEnabled": self.config.allowlist_enabled,
                    "configuredBps": self.config.configured_bps,
                    "symbols": list(self.config.symbols),
                    "ordersPerSec": self.config.orders_per_sec,
                    "cbBlockRate": self.config.cb_block_rate,
                    "seed": self.config.seed,
                },
                "resolution": self.resolution.as_dict(),
                "thresholds": {
                    "recommendedBps": self.recommended_bps,
                    "effectiveBps": self.effective_bps,
                    "autoThresholdGauge": self.auto_threshold_gauge,
                },
                "faults": self.fault_state(),
                "cbTripsTotal": self.cb_trips_total,
                "symbols": {
                    s: {
                        "enforced": self.config.enforced(s),
                        "orders": st.orders,
                        "blocks": st.blocks,
                        "windowBlocks": st.window_blocks,
                        "windowSize": len(st.window),
                        "cbTripped": st.tripped,
                        "cbTrips": st.trips,
                    }
                    for s, st in self.symbols.items()
                },
                "startedAt": self.started_at,
            }

    def render_metrics(self) -> str:
        with self.lock:
            out: list[str] = []

            def family(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
                out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {kind}")
                for labels, value in samples:
                    out.append(f"{name}{_labels(labels)} {_num(value)}")

            cfg = self.config
            family("grinder_router_fill_prob_enforce_enabled", "gauge", "1 = enforcement on, 0 = shadow", [({}, int(cfg.enforce))])
            family(
                "grinder_router_fill_prob_enforce_allowlist_enabled", "gauge",
                "1 = symbol allowlist active, 0 = all symbols", [({}, int(cfg.allowlist_enabled))],
            )
            family(
                "grinder_router_fill_prob_blocks_total", "counter",
                "Orders blocked by fill-prob gate, per symbol (sum() for the total)",
                [({"symbol": s}, st.blocks) for s, st in self.symbols.items()],
            )
            family("grinder_router_fill_prob_cb_trips_total", "counter", "Circuit breaker trips", [({}, self.cb_trips_total)])
            family(
                "grinder_router_fill_prob_auto_threshold_bps", "gauge",
                "Resolved threshold from eval (0 = disabled/failed)", [({}, self.auto_threshold_gauge)],
            )
            family(
                "grinder_router_orders_total", "counter", "Orders seen by the router, per symbol",
                [({"symbol": s}, st.orders) for s, st in self.symbols.items()],
            )
            info = {
                "mode": self.resolution.mode,
                "resolution": self.resolution.status,
                "recommended_bps": "" if self.recommended_bps is None else str(self.recommended_bps),
                "configured_bps": str(cfg.configured_bps),
                "effective_bps": str(self.effective_bps),
            }
            family("grinder_sim_info", "gauge", "Grinder simulator configuration", [(info, 1)])
            family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", [({}, self.started_at)])
            return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class OrderLoop(threading.Thread):
    """Feeds the simulator TICKS_PER_SEC times a second with the real elapsed time."""

    def __init__(self, sim: Simulator):
        super().__init__(name="order-loop", daemon=True)
        self.sim = sim
        self.stopped = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopped.wait(1 / TICKS_PER_SEC):
            now = time.monotonic()
            self.sim.advance(now - last)
            last = now

    def stop(self) -> None:
        self.stopped.set()


# ------------------------------------------------------------------------------ HTTP


class Handler(BaseHTTPRequestHandler):
    sim: Simulator  # set on the subclass built by make_server
    protocol_version = "HTTP/1.1"
    server_version = "grinder-sim"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - scrapes every few seconds; keep logs for events
        pass

    def _send(self, code: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, code: int, obj: object) -> None:
        self._send(code, json.dumps(obj, sort_keys=True) + "\n", "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.sim.render_metrics(), "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/healthz", "/readyz"):
            self._send(200, "ok\n", "text/plain; charset=utf-8")
        elif path == "/sim/state":
            self._json(200, self.sim.state())
        elif path == "/sim/faults":
            self._json(200, self.sim.fault_state())
        else:
            self._json(404, {"error": f"no such path {path}"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if path != "/sim/faults":
            self._json(404, {"error": f"no such path {path}"})
            return
        try:
            body = json.loads(raw.decode() or "null")
        except (ValueError, UnicodeDecodeError) as exc:
            self._json(400, {"error": f"body is not valid JSON: {exc}"})
            return
        try:
            self._json(200, self.sim.apply_faults(body))
        except FaultError as exc:
            self._json(400, {"error": str(exc)})


def make_server(sim: Simulator, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"sim": sim})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server((host, port), handler)


# ------------------------------------------------------------------------------ main


def main(env: Mapping[str, str] | None = None, emit: Emit = emit_stdout) -> int:
    env = os.environ if env is None else env
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        emit(f"GRINDER_SIM_CONFIG_INVALID detail={exc}")
        return 2

    resolution = resolve_threshold(config.model_dir, config.eval_dir, config.configured_bps, config.auto_threshold)
    emit(resolution.log_line())
    if config.artifact_dir:
        try:
            emit(f"THRESHOLD_RESOLUTION_ARTIFACT_WRITTEN path={write_resolution_artifact(config.artifact_dir, resolution, config)}")
        except OSError as exc:
            emit(f"THRESHOLD_RESOLUTION_ARTIFACT_WRITE_FAILED dir={config.artifact_dir} detail={exc}")
    else:
        emit("THRESHOLD_RESOLUTION_ARTIFACT_SKIPPED reason=artifact_dir_unset")

    sim = Simulator(config, resolution, emit=emit)
    try:
        server = make_server(sim, config.pod_ip, config.port)
    except OSError as exc:
        emit(f"GRINDER_SIM_BIND_FAILED addr={config.pod_ip}:{config.port} detail={exc}")
        return 1

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    loop = OrderLoop(sim)
    server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    server_thread.start()
    loop.start()
    emit(
        f"GRINDER_SIM_STARTED pod_ip={config.pod_ip} port={server.server_address[1]} symbols={','.join(config.symbols)} "
        f"enforce={int(config.enforce)} allowlist={','.join(config.allowlist)} effective_bps={sim.effective_bps} "
        f"orders_per_sec={config.orders_per_sec:g} seed={config.seed if config.seed is not None else ''}"
    )
    while not stop.wait(0.1):  # a Python signal handler only runs between waits
        pass
    emit("GRINDER_SIM_STOPPING")
    loop.stop()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
