"""Chaos (issue 9, point 3): a whole ceremony run twice, once undisturbed (the reference) and once
while the operator is `kill -9`ed at many seeded random moments and the API server and Prometheus
restart under it. Both runs must end the same.

The ceremony (`Ceremony`): the grinder walked up the ladder with windows of seconds, a CB trip
injected into the pods of the top step (the gate table's playbook: R3 in AutoThreshold, R2 in
Expand), then a firing alert asking for R1 posted to the operator's receiver, retried while it
does not answer 200, as Alertmanager does. It ends RolledBack (R1), verified.

The faults (`plan`, seeded by CHAOS_SEED, printed first, so a failure replays with the same seed):
- kill -9 of the operator at a random delay after a station of the ceremony (a (step, state) or a
  ceremony event: CB injected, alert accepted), spread over every station;
- kill -9 by the fault launcher (tests/e2e/chaos_operator.py) right after a status write and
  before its actions: the window between the status write and the env patch, hit on purpose;
- the API server restarted (testbed/restart.sh: SIGTERM or SIGKILL, down 1-6 s), once with the
  operator also killed and started again while it is down (serial: every test uses it);
- the rollout's own Prometheus restarted (support.DedicatedPrometheus, SIGTERM or SIGKILL).
The test plays kubelet: an operator process that exits on its own is started again (and counted).

Equal means (DESIGN: /work/wip-chaos/DESIGN.md; `compare`):
- the managed env of the Deployment, key for key;
- the status with its timestamps removed (and what names the run: namespace, the Deployment's
  uid, the Prometheus URL, the observed pods' names); `lastRollback.evidence` and each history
  entry's evidence compared on what the operator decided (playbook, setEnv, removeEnv,
  restartToken, requested, requestKey, fingerprint, signals, state), not on what it measured;
- the sequence of history entries (phase, step, action, reason, decided evidence), leaving out
  only the missing-data pair (MetricsUnavailable / MetricsAvailable), whose count depends on
  when the new pods were first scraped even undisturbed, and which Prometheus restarts add;
- the Deployment's revision (one per restart) and the restart tokens of its ReplicaSets;
- the preflight Jobs.
Figures printed: faults by kind and where the kills landed, Deployment restarts (reference, chaos,
extra), history entries (compared, lost, duplicated, rewritten between two polls), durations.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from kubernetes import client, config
from support import (
    PROMETHEUS_BIN,
    REPO_ROOT,
    DedicatedPrometheus,
    Env,
    OperatorProcess,
    delete_env,
    free_port,
    holds_for,
    make_env,
    wait_for,
)

pytestmark = pytest.mark.e2e

E2E_DIR = Path(__file__).resolve().parent
CHAOS_OPERATOR = E2E_DIR / "chaos_operator.py"
RESTART_SH = REPO_ROOT / "testbed" / "restart.sh"
APISERVER_CMD = REPO_ROOT / ".testbed" / "run" / "pids" / "kube-apiserver.cmd"
TESTBED_KUBECONFIG = REPO_ROOT / ".testbed" / "run" / "kubeconfig"

ENFORCE = "GRINDER_FILL_MODEL_ENFORCE"
MIN_BPS = "GRINDER_FILL_PROB_MIN_BPS"
CONFIGURED_BPS = "3000"
REVISION = "deployment.kubernetes.io/revision"
RESTART_TOKEN = "grinder.io/restart-token"
ALERT_PREFIX = "alert.grinder.io/"
INTERVAL = 1.0  # spec.prometheus.interval, seconds
HOLD = "30m"  # the window of the step the CB trip is injected in: it never passes on its own
# History entries whose number depends on timing even undisturbed: not compared, counted.
MISSING_DATA = frozenset({"MetricsUnavailable", "MetricsAvailable"})
# Evidence keys that record what the operator decided (compared); the rest is what it measured
# (metric values, log lines, pod names, times), which two runs never share.
DECIDED = ("playbook", "setEnv", "removeEnv", "restartToken", "requested", "requestKey", "fingerprint",
           "signals", "state")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
POD_NAME = re.compile(r"\bgrinder-[a-z0-9]{6,10}-[a-z0-9]{5}\b")


# ----------------------------------------------------------------------------- the ceremony


@dataclass(frozen=True)
class Station:
    """A moment of the ceremony a fault is scheduled after: `holds(status, marks)`."""

    name: str
    kind: str  # restart | verify | observe | passed | rollback | alert
    holds: Callable[[dict, set], bool]


def rolled_back_verified(st: dict, playbook: str) -> bool:
    actions = [h["action"] for h in st.get("history", [])]
    if f"Rollback{playbook}" not in actions:
        return False
    last = len(actions) - 1 - actions[::-1].index(f"Rollback{playbook}")
    return st.get("state") == "RolledBack" and "RollbackVerified" in actions[last:]


def rollback_issued(st: dict, playbook: str) -> bool:
    return (st.get("lastRollback") or {}).get("playbook") == playbook and not rolled_back_verified(st, playbook)


def metrics_in(st: dict) -> bool:
    return any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in st.get("conditions", []))


def alert_taken(st: dict) -> bool:
    return any(h["reason"] == "AlertFired" for h in st.get("history", []))


@dataclass(frozen=True)
class Ceremony:
    """One rollout's walk, a CB trip in `cb_step` (answered by `cb_playbook`), an R1 alert."""

    name: str
    target: str
    batches: tuple[tuple[str, ...], ...]
    windows: dict
    cb_step: str
    cb_playbook: str

    def spec(self, prometheus_url: str) -> dict:
        return {
            "targetPhase": self.target,
            "canarySymbols": ["SYM1", "SYM2"],
            "expandBatches": [list(b) for b in self.batches],
            "safeSymbols": ["SYM1"],
            "minBps": int(CONFIGURED_BPS),
            "observation": dict(self.windows),
            "prometheus": {"url": prometheus_url, "interval": f"{INTERVAL:.0f}s"},
            # API server outages and operator restarts must not time a restart out in either run.
            "progressDeadline": "5m",
        }

    def ladder(self) -> list[str]:
        steps = ["Shadow", "Canary"] + [f"Expand {k}/{len(self.batches)}" for k in range(1, len(self.batches) + 1)]
        if self.target in ("Full", "AutoThreshold"):
            steps.append("Full")
        if self.target == "AutoThreshold":
            steps.append("AutoThreshold")
        return steps

    def stations(self) -> list[Station]:
        """In ceremony order: a later station holding means the earlier ones have passed."""
        out = [Station("Preflight", "restart", lambda s, m: s.get("state") == "Preflight")]
        for label in self.ladder():
            states = [("Restarting", "restart"), ("Verifying", "verify"), ("Observing", "observe")]
            if label != self.cb_step:
                states.append(("Passed", "passed"))
            for state, kind in states:
                out.append(Station(f"{label}/{state}", kind,
                                   lambda s, m, lb=label, st=state: s.get("step") == lb and s.get("state") == st
                                   and "cb" not in m))
        cb, alert = self.cb_playbook, "R1"
        out += [
            Station("CB injected, not answered", "rollback",
                    lambda s, m: "cb" in m and s.get("state") != "RolledBack"),
            Station(f"{cb} issued, not verified", "rollback", lambda s, m: rollback_issued(s, cb)),
            Station(f"{cb} verified", "observe", lambda s, m: rolled_back_verified(s, cb) and "alert" not in m),
            Station("alert accepted, not taken", "alert", lambda s, m: "alert" in m and not alert_taken(s)),
            Station(f"{alert} issued, not verified", "rollback",
                    lambda s, m: alert_taken(s) and rollback_issued(s, alert)),
        ]
        return out


FULL = Ceremony("full", "AutoThreshold", (("SYM3", "SYM4"), ("SYM5", "SYM6")),
                {"shadow": "5s", "canary": "5s", "expandBatch": "5s", "full": "5s", "autoThreshold": HOLD},
                cb_step="AutoThreshold", cb_playbook="R3")
SHORT = Ceremony("short", "Expand", (("SYM3", "SYM4"),),
                 {"shadow": "5s", "canary": "5s", "expandBatch": HOLD},
                 cb_step="Expand 1/1", cb_playbook="R2")


def r1_alert(env: Env, fingerprint: str, starts_at: str) -> dict:
    """The chart's CB alert for this rollout, asking for R1; the same fingerprint and startsAt in
    both runs, so that its request key (status.requestKeys, history) is the same too."""
    return {"status": "firing",
            "labels": {"alertname": "FillProbCircuitBreakerTripped", "fillprob_rollout": env.rollout,
                       "namespace": env.namespace, "severity": "critical", "rollback": "R1"},
            "annotations": {"summary": "e2e: chaos"}, "startsAt": starts_at,
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint, "generatorURL": ""}


@dataclass(frozen=True)
class Receiver:
    port: int
    token: str

    @property
    def env(self) -> dict[str, str]:
        return {"FILLPROB_WEBHOOK_ADDR": f"127.0.0.1:{self.port}", "FILLPROB_WEBHOOK_TOKEN": self.token}

    def post(self, alert: dict) -> tuple[int | None, Any]:
        """(HTTP status, body); (None, why) when nothing answered (operator down, starting)."""
        payload = {"version": "4", "status": "firing", "receiver": "fillprob-operator", "groupKey": "{}:{}",
                   "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
                   "alerts": [alert]}
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/alertmanager", data=json.dumps(payload).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 (loopback)
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return None, str(exc)


def send_until_accepted(receiver: Receiver, alert: dict, timeout: float) -> int:
    """As Alertmanager does: re-send until a 200 (503: not stored, nothing answering: retry).
    Returns how many sends it took."""
    sends, last = 0, None

    def accepted() -> bool:
        nonlocal sends, last
        sends += 1
        status, body = receiver.post(alert)
        last = (status, body)
        if status == 200:
            assert [a["fingerprint"] for a in body["accepted"] + body["ignored"]] == [alert["fingerprint"]], body
            return True
        assert status in (None, 503), f"the receiver refused the alert for good: {status} {body}"
        return False

    wait_for(f"the alert accepted (last answer {last})", accepted, timeout, every=0.5)
    return sends


def stored_alerts(env: Env) -> list[str]:
    return [a for a in (env.get_rollout()["metadata"].get("annotations") or {}) if a.startswith(ALERT_PREFIX)]


def perform(env: Env, ceremony: Ceremony, prometheus: DedicatedPrometheus, receiver: Receiver, alert: dict,
            marks: set, timeout: float) -> None:
    """The ceremony, driven from status only (no timer decides what happens next), so that the
    reference and the chaos run take the same path however long each moment lasts."""
    env.apply_grinder({MIN_BPS: CONFIGURED_BPS}, replicas=1)
    env.wait_grinder_available(timeout=180)
    env.apply_rollout(**ceremony.spec(prometheus.url))
    env.wait_status(f"{ceremony.cb_step} Observing with its pods' metrics in",
                    lambda s: s.get("step") == ceremony.cb_step and s.get("state") == "Observing" and metrics_in(s),
                    timeout)
    # Every pod of the step trips its breaker once (a counter and a log line, nothing blocked).
    wait_for("a CB trip injected into every grinder pod",
             lambda: (lambda pods: pods and len(env.sim_fault({"cbTrip": True})) == len(pods))(env.grinder_pods()),
             60)
    marks.add("cb")
    env.wait_status(f"{ceremony.cb_playbook} applied and verified",
                    lambda s: rolled_back_verified(s, ceremony.cb_playbook), timeout)
    sends = send_until_accepted(receiver, alert, timeout)
    marks.add("alert")
    print(f"  {env.namespace}: alert accepted after {sends} send(s)")
    env.wait_status("R1 (the alert) applied and verified", lambda s: rolled_back_verified(s, "R1"), timeout)


def settle(env: Env, receiver: Receiver, alert: dict, timeout: float) -> None:
    """The end: R1 verified, metrics in, no stored alert, and nothing changes for a while, not
    even when Alertmanager re-sends the alert (repeat_interval)."""
    env.wait_status("settled: RolledBack (R1) verified, metrics in",
                    lambda s: rolled_back_verified(s, "R1") and metrics_in(s), timeout)
    wait_for("no stored alert left", lambda: not stored_alerts(env), 60)
    before = env.status()
    send_until_accepted(receiver, alert, 60)
    wait_for("the re-sent alert taken off", lambda: not stored_alerts(env), 60)
    holds_for(4 * INTERVAL + 2, lambda: strip_times(env.status()) == strip_times(before),
              "the settled status (timestamps aside)")


# ----------------------------------------------------------------------------- the faults


@dataclass
class Fault:
    kind: str  # kill | seam | apiserver | prometheus
    station: int  # index in Ceremony.stations(); fired `delay` s after it (and after the last start)
    delay: float
    arg: str = ""  # seam: CHAOS_FAULT; apiserver/prometheus: term | kill | kill-operator-while-down
    down: float = 0.0
    landed: str = ""  # where it hit, filled in when fired
    fired: bool = False

    def describe(self, stations: list[Station]) -> str:
        what = {"kill": "kill -9", "seam": f"fault {self.arg}",
                "apiserver": f"API server ({self.arg}, down {self.down:.1f}s)",
                "prometheus": f"Prometheus ({self.arg}, down {self.down:.1f}s)"}[self.kind]
        return f"{what} at {stations[self.station].name} +{self.delay:.2f}s"


@dataclass(frozen=True)
class Plan:
    seed: int
    kills: int  # every kill -9, the fault launcher's included
    seam: int  # of which by the fault launcher (after a status write, before its actions)
    apiserver: int
    prometheus: int

    @classmethod
    def from_env(cls, kills: int, seam: int, apiserver: int, prometheus: int, scaled: bool = False) -> "Plan":
        """CHAOS_SEED always (a replay); the counts from CHAOS_* only when `scaled` (make chaos)."""
        seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 1_000_000))
        if scaled:
            kills = int(os.environ.get("CHAOS_KILLS", kills))
            seam = int(os.environ.get("CHAOS_SEAM_KILLS", max(seam, kills // 4)))
            apiserver = int(os.environ.get("CHAOS_APISERVER_RESTARTS", apiserver))
            prometheus = int(os.environ.get("CHAOS_PROMETHEUS_RESTARTS", prometheus))
        return cls(seed, kills, min(seam, kills), apiserver, prometheus)


def spread(rng: random.Random, candidates: list[int], n: int) -> list[int]:
    """n station indices, cycling through a shuffled `candidates`: every one gets its turn before
    any gets a second."""
    out: list[int] = []
    while len(out) < n and candidates:
        order = candidates[:]
        rng.shuffle(order)
        out += order[: n - len(out)]
    return out


def plan(p: Plan, stations: list[Station]) -> list[Fault]:
    rng = random.Random(p.seed)
    every = list(range(len(stations)))
    of_kind = lambda *kinds: [i for i, s in enumerate(stations) if s.kind in kinds]  # noqa: E731
    faults = [Fault("kill", i, rng.uniform(0.0, 2.5)) for i in spread(rng, every, p.kills - p.seam)]
    # The launcher's faults fire at the next status write (with a PatchEnv) after being armed:
    # armed before a restart is issued (a step's start, a rollback).
    for n, i in enumerate(spread(rng, of_kind("restart", "passed", "observe", "alert"), p.seam)):
        point = "before-patch-env:1" if n % 3 != 2 else f"after-status-write:{rng.randint(1, 3)}"
        faults.append(Fault("seam", i, rng.uniform(0.0, 1.0), point))
    for n, i in enumerate(spread(rng, of_kind("restart", "observe", "rollback"), p.apiserver)):
        how = "kill-operator-while-down" if n == 0 else rng.choice(["term", "kill"])
        faults.append(Fault("apiserver", i, rng.uniform(0.0, 2.0), how, down=rng.uniform(1.0, 6.0)))
    for i in spread(rng, of_kind("verify", "observe", "rollback"), p.prometheus):
        faults.append(Fault("prometheus", i, rng.uniform(0.0, 2.0), rng.choice(["term", "kill"]),
                            down=rng.uniform(2.0, 10.0)))
    faults.sort(key=lambda f: (f.station, f.delay))
    return faults


class Monkey(threading.Thread):
    """Fires the planned faults at their stations on the chaos run, restarts the operator after
    each kill (and whenever it exits on its own, as the kubelet would), and watches, until told
    to stop, that history only ever grows: every poll's history starts with the previous one's."""

    def __init__(self, env: Env, stations: list[Station], faults: list[Fault], marks: set,
                 prometheus: DedicatedPrometheus, restart_testbed: Callable[..., str] | None):
        super().__init__(name="chaos-monkey", daemon=True)
        self.env, self.stations, self.faults, self.marks = env, stations, faults, marks
        self.prometheus, self.restart_testbed = prometheus, restart_testbed
        self.reached_at: dict[int, float] = {}  # station -> when a poll first saw it (or a later one)
        self.started_at = time.monotonic()
        self.armed = ""  # the CHAOS_FAULT of the running operator process
        self.history: list[dict] = []
        self.rewritten: list[str] = []
        self.kills = 0  # kill -9 sent by the test (the launcher's own are counted on its faults)
        self.kills_to_arm = 0  # of which only to start an operator with the launcher's fault armed
        self.self_exits = 0
        self.in_window = 0  # kills that left status ahead of the Deployment (token not patched yet)
        self.early_seams = 0  # launcher faults that fired before their station (kills all the same)
        self.in_seam = False  # fire_seam waits for the fault it armed: supervise leaves it be
        self.error: BaseException | None = None
        self.done = threading.Event()  # every fault fired
        self.stop_requested = threading.Event()

    # -- watching ----------------------------------------------------------------------
    def poll(self) -> None:
        self.supervise()
        now = time.monotonic()
        if "settling" in self.marks:  # the ceremony is over: every station has passed
            for i in range(len(self.stations)):
                self.reached_at.setdefault(i, now)
        try:
            st = self.env.status()
        except Exception:  # noqa: BLE001 - the API server may be down: no station seen
            return
        history = st.get("history", [])
        if history[: len(self.history)] != self.history:
            self.rewritten.append(f"{len(self.history)} entries before, {len(history)} now")
        self.history = history
        for i, station in enumerate(self.stations):
            if station.holds(st, self.marks):
                for passed in range(i + 1):  # stations are in ceremony order
                    self.reached_at.setdefault(passed, now)

    def fault_fired(self) -> bool:
        """The running start's armed launcher fault fired (its log since this start says so)."""
        if not self.armed:
            return False
        this_start = self.env.operator.tail(2000).rpartition(f"--- start {self.env.operator.starts} ---")[2]
        return f"chaos: fault {self.armed} fired" in this_start

    def supervise(self) -> None:
        """An operator process that ended without the test killing it: the launcher's fault
        fired (its log says so), or it exited on its own (counted). Either way it is started
        again, the kubelet's way, except while fire_seam waits for the fault it armed. A fault
        armed ahead of its station fires at the first step that gets that far, which may come
        before the station: a kill all the same, counted apart; fire_seam arms it again."""
        code = self.env.operator.exited()
        if code is None:
            return
        if self.fault_fired():
            if self.in_seam:
                return
            self.early_seams += 1
            print(f"  chaos: fault {self.armed} fired before its station, at {self.where()}; started again unarmed")
            self.start_operator("")
            return
        self.self_exits += 1
        print(f"  chaos: the operator exited on its own ({code}); started again\n{self.env.operator.tail(20)}")
        time.sleep(1.0)
        self.start_operator("")

    def wait(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until() and not self.stop_requested.is_set():
            self.poll()
            time.sleep(0.05)

    # -- the operator ------------------------------------------------------------------
    def kill9(self) -> None:
        self.env.operator.kill9()
        self.kills += 1

    def start_operator(self, fault: str) -> None:
        op = self.env.operator
        op.extra_env.pop("CHAOS_FAULT", None)
        if fault:
            op.extra_env["CHAOS_FAULT"] = fault
        op.start()
        self.armed, self.started_at = fault, time.monotonic()

    def next_seam(self, index: int) -> str:
        """The next fault's CHAOS_FAULT when it is the launcher's: armed at this restart."""
        following = self.faults[index + 1] if index + 1 < len(self.faults) else None
        return following.arg if following is not None and following.kind == "seam" else ""

    def where(self) -> str:
        """Where the run is: step/state, and whether the Deployment lacks status's restart token
        (the status is written, the env patch is not: the window this test is most about)."""
        try:
            st = self.env.status()
            dep = self.env.apps.read_namespaced_deployment(self.env.deployment, self.env.namespace)
        except Exception as exc:  # noqa: BLE001
            return f"(unreadable: {type(exc).__name__})"
        token = (dep.spec.template.metadata.annotations or {}).get(RESTART_TOKEN)
        ahead = (st.get("restart") or {}).get("token") not in (None, token)
        self.in_window += ahead
        return f"{st.get('step')}/{st.get('state')}" + (" [status written, env not patched]" if ahead else "")

    # -- the faults --------------------------------------------------------------------
    def run(self) -> None:
        try:
            for index, fault in enumerate(self.faults):
                self.wait(3600, lambda f=fault: f.station in self.reached_at)
                if self.stop_requested.is_set():
                    return
                # `delay` after the station was seen, and after the operator's last start.
                at = max(self.reached_at[fault.station], self.started_at) + fault.delay
                self.wait(at - time.monotonic())
                fault.landed = getattr(self, f"fire_{fault.kind}")(index, fault)
                fault.fired = bool(fault.landed)
                print(f"  chaos {index + 1}/{len(self.faults)}: {fault.describe(self.stations)} "
                      f"-> {fault.landed or 'never reached'}")
            self.done.set()
            self.wait(24 * 3600)  # keep supervising and watching history until told to stop
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            print(f"  chaos: the monkey stopped: {exc!r}", flush=True)
            self.error = exc
            self.done.set()

    def fire_kill(self, index: int, fault: Fault) -> str:
        self.kill9()
        landed = self.where()
        self.start_operator(self.next_seam(index))
        return landed

    def fire_seam(self, index: int, fault: Fault) -> str:
        self.in_seam = True
        try:
            if self.armed != fault.arg:  # not armed at the previous restart: kill now, start it armed
                self.kill9()
                self.kills_to_arm += 1
                self.start_operator(fault.arg)
            self.wait(240, lambda: self.env.operator.exited() is not None or "settling" in self.marks)
        finally:
            self.in_seam = False
        if self.env.operator.exited() is None:  # never got to its point: not counted as fired
            self.kill9()
            self.kills_to_arm += 1
            self.start_operator(self.next_seam(index))
            return ""
        landed = self.where()
        self.start_operator(self.next_seam(index))
        return landed

    def fire_apiserver(self, index: int, fault: Fault) -> str:
        assert self.restart_testbed is not None, "API server restarts need the testbed_restarts fixture"
        landed = self.where()
        if fault.arg == "kill-operator-while-down":
            self.restart_testbed("apiserver", "stop")
            self.kill9()
            self.start_operator(self.next_seam(index))  # kopf starts with no API server to talk to
            time.sleep(fault.down)
            self.restart_testbed("apiserver", "start")
            return landed + " (operator killed and started while it was down)"
        self.restart_testbed("apiserver", "restart", "--down", f"{fault.down:.1f}",
                             *(["--kill"] if fault.arg == "kill" else []))
        return landed

    def fire_prometheus(self, index: int, fault: Fault) -> str:
        landed = self.where()
        (self.prometheus.kill9 if fault.arg == "kill" else self.prometheus.stop)()
        self.wait(fault.down)
        self.prometheus.start()
        return landed


# ----------------------------------------------------------------------------- comparing


def strip_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_times(v) for k, v in value.items()
                if k not in ("at", "lastTransitionTime", "issuedAt", "reachedAt", "startedAt",
                             "observationStartedAt", "observationEndsAt", "suspendedAt")}
    if isinstance(value, list):
        return [strip_times(v) for v in value]
    if isinstance(value, str):
        return RFC3339.sub("<time>", value)
    return value


def decided(evidence: dict | None) -> dict:
    return {k: (sorted(v) if k == "signals" else v) for k, v in (evidence or {}).items() if k in DECIDED}


def history_key(h: dict) -> tuple:
    return (h["phase"], h["step"], h["action"], h["reason"], json.dumps(decided(h.get("evidence")), sort_keys=True))


def compared_history(st: dict) -> list[tuple]:
    return [history_key(h) for h in st.get("history", []) if h["action"] not in MISSING_DATA]


@dataclass
class Outcome:
    """What one run left: the figures `compare` is judged on."""

    namespace: str
    status: dict
    env: dict
    revision: int
    tokens: list[str]
    jobs: list[str]
    deployment_uid: str
    seconds: float

    @classmethod
    def read(cls, env: Env, seconds: float) -> "Outcome":
        dep = env.apps.read_namespaced_deployment(env.deployment, env.namespace)
        rss = sorted(
            (int((rs.metadata.annotations or {}).get(REVISION, "0")),
             (rs.spec.template.metadata.annotations or {}).get(RESTART_TOKEN) or "")
            for rs in env.apps.list_namespaced_replica_set(env.namespace, label_selector="app=grinder").items
            if any(o.kind == "Deployment" and o.name == env.deployment for o in rs.metadata.owner_references or [])
        )
        jobs = sorted(j.metadata.name for j in client.BatchV1Api(env.api).list_namespaced_job(env.namespace).items)
        return cls(env.namespace, env.status(), env.managed_env(),
                   int((dep.metadata.annotations or {}).get(REVISION, "0")), [t for _, t in rss], jobs,
                   dep.metadata.uid, seconds)

    def normalised_status(self) -> dict:
        """Status without history, times, and what names this run rather than describes it."""
        st = copy.deepcopy(self.status)
        st.pop("history", None)
        if st.get("deploymentUid") == self.deployment_uid:
            st["deploymentUid"] = "<the Deployment's uid>"
        if (st.get("appliedSpec") or {}).get("prometheus", {}).get("url"):
            st["appliedSpec"]["prometheus"]["url"] = "<the run's own Prometheus>"
        if st.get("lastRollback"):
            st["lastRollback"]["evidence"] = decided(st["lastRollback"].get("evidence"))
        text = json.dumps(strip_times(st), sort_keys=True).replace(self.namespace, "<namespace>")
        return json.loads(POD_NAME.sub("<pod>", text))


def differences(a: Any, b: Any, path: str = "status") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: reference {json.dumps(a)[:200]} / chaos {json.dumps(b)[:200]}"]


def compare(ref: Outcome, chaos: Outcome) -> dict:
    ref_h, chaos_h = compared_history(ref.status), compared_history(chaos.status)
    lost, duplicated = Counter(ref_h) - Counter(chaos_h), Counter(chaos_h) - Counter(ref_h)
    return {
        "env_equal": ref.env == chaos.env,
        "status_differences": differences(ref.normalised_status(), chaos.normalised_status()),
        "restarts": (ref.revision - 1, chaos.revision - 1),
        "extra_restarts": chaos.revision - ref.revision,
        "tokens_equal": ref.tokens == chaos.tokens,
        "history": (len(ref_h), len(chaos_h)),
        "lost": sum(lost.values()),
        "duplicated": sum(duplicated.values()),
        "lost_entries": list(lost.elements()),
        "duplicated_entries": list(duplicated.elements()),
        "order_equal": ref_h == chaos_h,
        "missing_data": tuple(sum(h["action"] in MISSING_DATA for h in o.status.get("history", []))
                              for o in (ref, chaos)),
        "full_history": max(len(o.status.get("history", [])) for o in (ref, chaos)),
        "jobs": (ref.jobs, chaos.jobs),
    }


def print_figures(p: Plan, ceremony: Ceremony, faults: list[Fault], monkey: Monkey, ref: Outcome, chaos: Outcome,
                  cmp: dict) -> None:
    by_kind = Counter(f.kind for f in faults if f.fired)
    seam = Counter(f.arg.split(":")[0] for f in faults if f.kind == "seam" and f.fired)
    unfired = sum(1 for f in faults if f.kind == "seam" and not f.fired)
    landed = Counter(f.landed.split(" [")[0] for f in faults if f.kind in ("kill", "seam") and f.fired)
    kills = monkey.kills + by_kind["seam"] + monkey.early_seams
    api = [f for f in faults if f.kind == "apiserver"]
    print(f"\nchaos figures (CHAOS_SEED={p.seed}, ceremony {ceremony.name}):")
    print(f"  operator kill -9: {kills} ({by_kind['kill']} at random moments, {monkey.kills_to_arm} to arm or "
          f"disarm the fault launcher, {sum(f.arg == 'kill-operator-while-down' for f in api)} while the API "
          f"server was down, {by_kind['seam']} by the launcher: {seam['before-patch-env']} before an env patch, "
          f"{seam['after-status-write']} after a status write, {monkey.early_seams} before their station; "
          f"{unfired} armed but never reached)")
    print(f"  kills that left status ahead of the Deployment (between the status write and the env patch): "
          f"{monkey.in_window}")
    print(f"  where the kills landed: {', '.join(f'{k}: {v}' for k, v in sorted(landed.items()))}")
    print(f"  API server restarts: {by_kind['apiserver']} of {len(api)}"
          f"{' (one with the operator killed and started while it was down)' if api else ''}; "
          f"Prometheus restarts: {by_kind['prometheus']}")
    print(f"  operator exits the test did not cause: {monkey.self_exits}")
    print(f"  durations: reference {ref.seconds:.0f}s, chaos {chaos.seconds:.0f}s")
    print(f"  Deployment restarts: reference {cmp['restarts'][0]}, chaos {cmp['restarts'][1]}, "
          f"extra {cmp['extra_restarts']}; restart tokens equal: {cmp['tokens_equal']}")
    print(f"  history entries compared: reference {cmp['history'][0]}, chaos {cmp['history'][1]}; "
          f"lost {cmp['lost']}, duplicated {cmp['duplicated']}, same order: {cmp['order_equal']}; "
          f"rewritten between two polls: {len(monkey.rewritten)}; missing-data entries (not compared): "
          f"reference {cmp['missing_data'][0]}, chaos {cmp['missing_data'][1]}")
    print(f"  final env equal: {cmp['env_equal']}; status equal (timestamps aside): "
          f"{not cmp['status_differences']}; preflight Jobs: reference {len(cmp['jobs'][0])}, "
          f"chaos {len(cmp['jobs'][1])}")
    for line in cmp["status_differences"]:
        print(f"    differs: {line}")
    for entry in cmp["lost_entries"]:
        print(f"    lost: {entry}")
    for entry in cmp["duplicated_entries"]:
        print(f"    duplicated: {entry}")


# ----------------------------------------------------------------------------- the runs


@dataclass
class Run:
    """One namespace's ceremony: its operator (with the receiver), its own Prometheus."""

    env: Env
    prometheus: DedicatedPrometheus
    receiver: Receiver
    alert: dict
    marks: set = field(default_factory=set)

    @classmethod
    def prepare(cls, env: Env, workdir: Path, fingerprint: str, starts_at: str, launcher: bool) -> "Run":
        workdir.mkdir(parents=True, exist_ok=True)
        receiver = Receiver(free_port(), f"e2e-chaos-{fingerprint}")
        env.operator.stop()
        env.operator = OperatorProcess(env.namespace, workdir, receiver.env,
                                       argv=[sys.executable, str(CHAOS_OPERATOR)] if launcher else None).start()
        prometheus = DedicatedPrometheus(env.namespace, workdir / "prometheus").start()
        return cls(env, prometheus, receiver, r1_alert(env, fingerprint, starts_at))

    def perform(self, ceremony: Ceremony, timeout: float) -> float:
        started = time.monotonic()
        perform(self.env, ceremony, self.prometheus, self.receiver, self.alert, self.marks, timeout)
        return time.monotonic() - started

    def finish(self, timeout: float, seconds: float) -> Outcome:
        self.marks.add("settling")  # (the reference's marks: no monkey reads them)
        settle(self.env, self.receiver, self.alert, timeout)
        return Outcome.read(self.env, seconds)


def run_chaos(p: Plan, ceremony: Ceremony, chaos_env: Env, reference_env: Env, tmp_path: Path,
              restart_testbed: Callable[..., str] | None, reference_first: bool) -> None:
    assert PROMETHEUS_BIN.exists(), f"{PROMETHEUS_BIN} missing: run `make testbed-up`"
    stations = ceremony.stations()
    faults = plan(p, stations)
    print(f"\nchaos: CHAOS_SEED={p.seed} ceremony={ceremony.name}: {len(faults)} faults planned "
          f"(replay: CHAOS_SEED={p.seed} pytest {Path(__file__).relative_to(REPO_ROOT)})")
    for fault in faults:
        print(f"  planned: {fault.describe(stations)}")
    fingerprint = hashlib.sha256(f"chaos-{p.seed}".encode()).hexdigest()[:16]
    starts_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    ref = Run.prepare(reference_env, tmp_path / "reference", fingerprint, starts_at, launcher=False)
    chaos = Run.prepare(chaos_env, tmp_path / "chaos", fingerprint, starts_at, launcher=True)
    # The monkey reads status with its own client: the ceremony's calls and its polls never share one.
    monkey_env = dataclasses.replace(chaos_env, api=config.new_client_from_config(
        config_file=os.environ["KUBECONFIG"]))
    monkey_env.operator = chaos_env.operator
    monkey = Monkey(monkey_env, stations, faults, chaos.marks, chaos.prometheus, restart_testbed)
    timeout = 300 + 20 * len(faults)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="reference") as pool:
            if reference_first:  # API server restarts reach every namespace: the reference runs alone first
                reference = ref.finish(timeout, ref.perform(ceremony, timeout))
            else:
                pending = pool.submit(lambda: ref.finish(timeout, ref.perform(ceremony, timeout)))
            monkey.start()
            seconds = chaos.perform(ceremony, timeout)
            chaos.marks.add("settling")  # faults still pending fire now, on the settling rollout
            assert monkey.done.wait(timeout), "the planned faults did not all fire"
            if monkey.error is not None:
                raise monkey.error
            outcome = chaos.finish(timeout, seconds)
            if not reference_first:
                reference = pending.result(timeout)
    except BaseException:
        print(chaos_env.operator.tail(120))
        raise
    finally:
        monkey.stop_requested.set()
        if monkey.is_alive():
            monkey.join(30)
        for run in (ref, chaos):
            run.prometheus.stop()

    cmp = compare(reference, outcome)
    print_figures(p, ceremony, faults, monkey, reference, outcome, cmp)
    assert cmp["full_history"] < 100, "history reached its bound (100): the comparison would miss entries"
    assert monkey.self_exits == 0, f"the operator exited {monkey.self_exits} time(s) on its own"
    assert cmp["env_equal"], (reference.env, outcome.env)
    assert not cmp["status_differences"], cmp["status_differences"]
    assert cmp["extra_restarts"] == 0 and cmp["tokens_equal"], (reference.tokens, outcome.tokens)
    assert cmp["lost"] == 0 and cmp["duplicated"] == 0 and cmp["order_equal"], (cmp["lost_entries"],
                                                                                  cmp["duplicated_entries"])
    assert not monkey.rewritten, monkey.rewritten
    assert cmp["jobs"][0] == cmp["jobs"][1], cmp["jobs"]
    kills = monkey.kills + sum(f.fired for f in faults if f.kind == "seam") + monkey.early_seams
    assert kills >= p.kills, f"{kills} kills happened, {p.kills} planned"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def reference_env(testbed, crd_installed, tmp_path_factory):
    """A second namespace and operator, for the undisturbed run; its own client (the reference
    may run in a thread beside the chaos run)."""
    env = make_env(config.new_client_from_config(config_file=testbed.kubeconfig), "chaos-reference")
    env.operator = OperatorProcess(env.namespace, tmp_path_factory.mktemp("reference-operator")).start()
    yield env
    delete_env(env)


@pytest.fixture
def testbed_restarts(testbed):
    """testbed/restart.sh on the local testbed (serial: conftest.SERIAL_FIXTURES). Whatever
    happens in the test, the API server runs again afterwards."""
    if Path(testbed.kubeconfig) != TESTBED_KUBECONFIG:
        pytest.fail(f"this test restarts the local testbed's API server; KUBECONFIG={testbed.kubeconfig} "
                    "names another cluster", pytrace=False)
    if not APISERVER_CMD.is_file():
        pytest.fail(f"{APISERVER_CMD} missing: the testbed was started by an up.sh that does not record "
                    "command lines; make testbed-down && make testbed-up", pytrace=False)

    def restart(*args: str) -> str:
        done = subprocess.run([str(RESTART_SH), *args], capture_output=True, text=True, timeout=240)  # noqa: S603
        assert done.returncode == 0, f"testbed/restart.sh {' '.join(args)}: exit {done.returncode}\n" \
                                     f"{done.stdout}{done.stderr}"
        return done.stdout

    yield restart
    # A test that failed while the API server was stopped leaves it stopped: start it ("already
    # running", the usual case, is a harmless failure).
    subprocess.run([str(RESTART_SH), "apiserver", "start"], capture_output=True, timeout=240)  # noqa: S603


# ----------------------------------------------------------------------------- tests


def test_chaos_operator_kills_and_prometheus_restarts(grinder_env, reference_env, tmp_path):
    """CI, beside the other tests: its own namespaces, operators and Prometheus; the reference
    runs at the same time. 10 kills (4 by the fault launcher), 1 Prometheus restart."""
    run_chaos(Plan.from_env(kills=10, seam=4, apiserver=0, prometheus=1), FULL, grinder_env, reference_env,
              tmp_path, restart_testbed=None, reference_first=False)


def test_chaos_api_server_restarts(grinder_env, reference_env, testbed_restarts, tmp_path):
    """CI, serial (the API server is every test's): the short ceremony, the reference first; 2 API
    server restarts (one with the operator killed and started while it is down), 4 kills."""
    run_chaos(Plan.from_env(kills=4, seam=1, apiserver=2, prometheus=0), SHORT, grinder_env, reference_env,
              tmp_path, restart_testbed=testbed_restarts, reference_first=True)


@pytest.mark.chaos
def test_chaos_whole_ceremony(grinder_env, reference_env, testbed_restarts, tmp_path):
    """`make chaos` (not in `make test`): the whole ceremony, 36 kills (9 by the fault launcher),
    3 API server and 3 Prometheus restarts; CHAOS_KILLS, CHAOS_SEAM_KILLS,
    CHAOS_APISERVER_RESTARTS, CHAOS_PROMETHEUS_RESTARTS and CHAOS_SEED change them."""
    run_chaos(Plan.from_env(kills=36, seam=9, apiserver=3, prometheus=3, scaled=True), FULL, grinder_env,
              reference_env, tmp_path, restart_testbed=testbed_restarts, reference_first=True)
