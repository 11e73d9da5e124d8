"""Differential: every spec the real API server accepts is a spec the operator reads.

API.md "Everyday change": "A spec the API server accepts is a spec the operator reads. The
CRD is the single source of truth for validity; the operator's own parser never rejects what
the API server accepted." STYLE.md "One rule, one home": the models at the edge parse what the
CRD admits, never stricter.

Each run generates random specs (at least 500; seeded from a printed seed: rerun one with
FILLPROB_DIFF_SEED=<seed>, size with FILLPROB_DIFF_COUNT): valid ones and near-valid ones
(broken selector regexes and escapes, bad and extreme durations, symbols, batches, bounds,
enums, missing and mistyped fields). Each goes to the testbed's API server as a server-side
dry-run create of a FillProbRollout (strict field validation, namespace `default`: nothing is
stored), and then:
- accepted by the server: `fillprob_operator.api.parse_spec` reads the object the server
  returned (defaults applied) without error, and its selector has no regex problem (the CRD
  checks regexes with CEL's RE2 `matches`, the operator with google-re2: they must agree);
- the offline validator (`kubectl-fillprob plan`, fillprob_operator.validation) gives the
  same verdict, accept or reject, as the server.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from fillprob_operator.api import SpecError, parse_spec
from fillprob_operator.validation import validate_manifest

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL, KIND = "grinder.io", "v1alpha1", "fillprobrollouts", "FillProbRollout"
NAMESPACE = "default"  # exists in every cluster; dry-run stores nothing
MIN_SPECS = 500
WORKERS = 16
BUDGET_SECONDS = 110

# --------------------------------------------------------------------------- generators

SYMBOLS_OK = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "SYM1", "SYM2", "SYM3", "SYM4", "BTC-USD", "ETH_USDT.P",
              "1000PEPEUSDT", "A", "X" * 32]
SYMBOLS_BAD = ["btcusdt", "", "BTC,ETH", "BTC USDT", "-BTC", "X" * 33, ".A", "SYM1\n"]
DURATIONS_OK = ["90s", "4h", "1h30m", "1.5h", "250ms", "0s", "24h", "2m30s", "1µs", "1us", "1ns",
                "999999999ns", "1000000000ns", "2562047h", "2562047h47m16s", "0.5s", "1s", "10m"]
DURATIONS_BAD = ["10", "4 hours", "", "h", "-5m", "1d", "4H", " 4h", "1h 30m", ".5h", "5.h", "2562048h",
                 "99999999999h", "1μs", "1h\n", "9" * 33 + "s", "0"]
NAMES_OK = ["grinder", "g", "grinder-1", "a.b.c", "x" * 63, "a" + "-b" * 100]
NAMES_BAD = ["Grinder", "grinder_1", "", "-g", "g-", "a..b", "x" * 254, "g.", "g h"]
URLS = ["http://prometheus.monitoring.svc:9090", "https://prom:9090/prefix", "HTTP://prom:9090",
        "https://user@prom", "http://[::1]:9090", "prometheus:9090", "http://", "ftp://prom", "/prom",
        "http:///x", "http://prom:port", "", "http://prom/%zz"]
# Pieces of the text between a selector's quotes (PromQL string syntax: `\\` is one backslash
# of the regex, `\"` a quote; `\d` is an invalid PromQL escape the CRD refuses).
REGEX_PIECES = ["grinder", "-", ".*", ".+", "(", ")", "[a-z0-9]", "[", "]", "{2}", "{2,5}", "{1001}", "*", "+",
                "?", "|", r"\\d", r"\\.", r"\d", r"\.", r"\\pL", r"\\C", "(?i)", "(?P<n>", "(?<n>", r"\\1",
                "(?=", "$", "^", r"\"", r"\\", r"\\\\", r"\n", r"\t", "é", "a)(b", "[[:alpha:]]", r"\\x41",
                r"\\Q(\\E", "(?s)", r"\\z", r"\\b", "(?U)", "\t", "{", "}", "x{,3}", "[^]", "[]a]", "(?:",
                r"\\p{Greek}", r"\\pZ", "**"]
LABELS = ["job", "pod", "namespace", "_x", "le", "A9"]
LABELS_BAD = ["1bad", "a-b", ""]


URLS_OK = URLS[:5]
URLS_BAD = URLS[5:]


def _duration(rng: random.Random, bad: bool = False) -> str:
    if bad:
        return rng.choice(DURATIONS_BAD)
    if rng.random() < 0.5:
        return rng.choice(DURATIONS_OK)
    units = ["ns", "us", "µs", "ms", "s", "m", "h"]
    parts = []
    for _ in range(rng.randint(1, 3)):
        number = str(rng.randint(1, 10 ** rng.randint(1, 6)))
        if rng.random() < 0.2:
            number += "." + str(rng.randint(0, 999))
        parts.append(number + rng.choice(units))
    return "".join(parts)


def _regex(rng: random.Random) -> str:
    """Random pieces: valid regexes, invalid ones, and invalid PromQL escapes."""
    return "".join(rng.choice(REGEX_PIECES) for _ in range(rng.randint(0, 4)))


def _selector(rng: random.Random, bad: bool = False) -> str:
    matchers = []
    for _ in range(rng.randint(1, 3)):
        label = rng.choice(LABELS_BAD) if bad and rng.random() < 0.3 else rng.choice(LABELS)
        op = rng.choice(["=", "!=", "=~", "!~", "=~", "!~"] + (["==", "~"] if bad else []))
        if "~" in op:
            value = _regex(rng) if rng.random() < 0.6 else rng.choice(["grinder-.*", "g-[a-z0-9]+-.*", "(a|b)"])
        else:
            value = rng.choice(["grinder", "trading", "", "a\\\"b", "x y", "ß", "a\\\\b"])
        space = " " if rng.random() < 0.2 else ""
        matchers.append(f"{label}{space}{op}{space}\"{value}\"")
    text = (", " if rng.random() < 0.3 else ",").join(matchers)
    if bad:
        text = rng.choice(["{" + text + "}", text + ",", text.replace('"', "", 1), text + " x"])
    elif rng.random() < 0.1:
        text = " " + text + " "
    return text


def random_spec(rng: random.Random) -> dict[str, Any]:
    """A valid spec (its selector regexes still random: the CRD decides) or, about half the
    time, a near-valid one: one to three fields broken."""
    canary = rng.sample(SYMBOLS_OK[:6], rng.randint(1, 2))
    rest = [s for s in SYMBOLS_OK if s not in canary]
    spec: dict[str, Any] = {
        "deploymentName": rng.choice(NAMES_OK),
        "targetPhase": rng.choice(["Shadow", "Canary", "Expand", "Full", "AutoThreshold"]),
        "canarySymbols": canary,
    }
    if spec["targetPhase"] == "Expand" or rng.random() < 0.4:
        spec["expandBatches"] = [rest[:1], rest[1:3]][: rng.randint(1, 2)]
    if rng.random() < 0.2:
        spec["containerName"] = rng.choice(["grinder", "c", "x" * 63])
    if rng.random() < 0.3:
        spec["safeSymbols"] = rng.sample(canary, 1)
    if rng.random() < 0.3:
        spec["minBps"] = rng.choice([0, 1, 2500, 10000])
    if rng.random() < 0.3:
        spec["riskAppetite"] = rng.choice(["Conservative", "Moderate", "Aggressive"])
    if rng.random() < 0.5:
        keys = ["shadow", "canary", "expandBatch", "full", "autoThreshold"]
        spec["observation"] = {k: _duration(rng) for k in rng.sample(keys, rng.randint(1, 3))}
    if rng.random() < 0.3:
        spec["preflight"] = {"enabled": rng.random() < 0.5, "timeout": rng.choice(["10m", "1s", "90s", "1h"])}
        if rng.random() < 0.3:
            spec["preflight"]["command"] = rng.choice([["python3", "-V"], ["sh", "-c", "exit 0"]])
    if rng.random() < 0.8:
        spec["prometheus"] = {"selector": _selector(rng)}
        if rng.random() < 0.3:
            spec["prometheus"]["url"] = rng.choice(URLS_OK)
        if rng.random() < 0.3:
            spec["prometheus"]["interval"] = rng.choice(["1s", "30s", "1m", "1000ms", "1.5s"])
    if rng.random() < 0.4:
        low = rng.randint(0, 10000)
        spec["gates"] = {
            "maxBlockRatio": rng.choice([0, 0.5, 0.99, 1, 1.0, 0.1234567]),
            "minOrders": rng.choice([1, 20, 1_000_000]),
            "thresholdRange": {"minBps": low, "maxBps": rng.randint(low, 10000)},
            "maxAutoThresholdDeltaBps": rng.choice([0, 100, 10000]),
        }
    if rng.random() < 0.3:
        spec["progressDeadline"] = rng.choice(["1s", "10m", "2562047h", "1000000000ns"])
    if rng.random() < 0.2:
        spec["suspend"] = rng.random() < 0.5
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 3)):
            rng.choice(BREAKERS)(rng, spec)
    return spec


def _sub(spec: dict[str, Any], key: str) -> dict[str, Any]:
    return spec.setdefault(key, {})


# Each sets one field to a near-valid value (some of which are still valid: edges).
BREAKERS = [
    lambda rng, s: s.pop(rng.choice(["deploymentName", "targetPhase", "canarySymbols"]), None),
    lambda rng, s: s.__setitem__("deploymentName", rng.choice(NAMES_BAD)),
    lambda rng, s: s.__setitem__("containerName", rng.choice(["Grinder", "x" * 64, "a.b", ""])),
    lambda rng, s: s.__setitem__("targetPhase", rng.choice(["Preflight", "canary", "Everything", ""])),
    lambda rng, s: s.__setitem__("canarySymbols", [rng.choice(SYMBOLS_BAD + SYMBOLS_OK) for _ in range(rng.randint(0, 3))]),
    lambda rng, s: s.__setitem__("canarySymbols", ["SYM1", "SYM1"]),
    lambda rng, s: s.__setitem__("canarySymbols", [f"S{i}" for i in range(rng.choice([50, 51]))]),
    lambda rng, s: s.__setitem__("expandBatches", rng.choice([[["SYM4"], ["SYM4"]], [[]], [["SYM4", "SYM4"]],
                                                              [s.get("canarySymbols", ["SYM1"])[:1] or ["SYM1"]]])),
    lambda rng, s: s.__setitem__("safeSymbols", rng.choice([["SYM9"], ["SYM1", "SYM1"]])),
    lambda rng, s: s.__setitem__("minBps", rng.choice([-1, 10001, 2**31, 1.5, "100", 0, 10000])),
    lambda rng, s: s.__setitem__("riskAppetite", rng.choice(["Reckless", "moderate", ""])),
    lambda rng, s: _sub(s, "observation").__setitem__(
        rng.choice(["shadow", "canary", "expandBatch", "full", "autoThreshold"]), _duration(rng, bad=True)),
    lambda rng, s: _sub(s, "preflight").__setitem__("timeout", _duration(rng, bad=rng.random() < 0.7)),
    lambda rng, s: _sub(s, "preflight").__setitem__("command", rng.choice([[], ["x"] * 65, ["x" * 4097]])),
    lambda rng, s: _sub(s, "preflight").__setitem__("enabled", "yes"),
    lambda rng, s: _sub(s, "prometheus").__setitem__("selector", _selector(rng, bad=True)),
    lambda rng, s: _sub(s, "prometheus").__setitem__("selector", _selector(rng) + "," + _selector(rng)),
    lambda rng, s: _sub(s, "prometheus").__setitem__("url", rng.choice(URLS_BAD)),
    lambda rng, s: _sub(s, "prometheus").__setitem__("interval", _duration(rng, bad=rng.random() < 0.5)),
    lambda rng, s: _sub(s, "gates").__setitem__("maxBlockRatio", rng.choice([-0.01, 1.01, "0.5", 0, 1])),
    lambda rng, s: _sub(s, "gates").__setitem__("minOrders", rng.choice([0, 1_000_001, -5, 2.5, 1])),
    lambda rng, s: _sub(s, "gates").__setitem__("thresholdRange", rng.choice(
        [{"minBps": 5000, "maxBps": 1000}, {"minBps": 1}, {}, {"minBps": -1, "maxBps": 10001}, {"minBps": 7, "maxBps": 7}])),
    lambda rng, s: _sub(s, "gates").__setitem__("maxAutoThresholdDeltaBps", rng.choice([10001, -1, 0])),
    lambda rng, s: s.__setitem__("progressDeadline", _duration(rng, bad=rng.random() < 0.5)),
    lambda rng, s: s.__setitem__("suspend", rng.choice(["true", 1, None])),
    lambda rng, s: s.__setitem__("typo", 1),  # strict field validation refuses it
    lambda rng, s: _sub(s, "observation").__setitem__("expand", "1h"),
]


# --------------------------------------------------------------------------- the run


def _manifest(spec: dict[str, Any], i: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": f"diff-{i}", "namespace": NAMESPACE}, "spec": spec}


@pytest.fixture(scope="module")
def custom_api(k8s_api, crd_installed) -> client.CustomObjectsApi:
    configuration = copy.copy(k8s_api.configuration)
    configuration.connection_pool_maxsize = WORKERS
    return client.CustomObjectsApi(client.ApiClient(configuration))


def dry_run_create(api: client.CustomObjectsApi, manifest: dict[str, Any]) -> tuple[bool, Any]:
    """(True, the object the server would store) or (False, the server's message)."""
    for attempt in range(3):
        try:
            created = api.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, copy.deepcopy(manifest),
                dry_run="All", field_validation="Strict", _request_timeout=30,
            )
            return True, created
        except ApiException as exc:
            if exc.status in (400, 422):
                return False, exc.body
            if exc.status in (429, 500, 503, 504) and attempt < 2:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise AssertionError(f"unexpected answer {exc.status} for {manifest['spec']!r}: {exc.body}") from None
    raise AssertionError("unreachable")


def test_the_crd_refuses_an_invalid_selector_regex_saying_what_to_fix(custom_api) -> None:
    """The user's report: `pod=~"grinder-(.*"` was admitted and the operator could not read it."""
    spec = {"deploymentName": "grinder", "targetPhase": "Shadow", "prometheus": {"selector": 'pod=~"grinder-(.*"'}}
    accepted, answer = dry_run_create(custom_api, _manifest(spec, 0))
    assert not accepted
    assert "spec.prometheus.selector" in answer and "RE2" in answer and "missing" in answer, answer
    good = {**spec, "prometheus": {"selector": 'pod=~"grinder-\\\\(.*"'}}
    accepted, answer = dry_run_create(custom_api, _manifest(good, 1))
    assert accepted, answer
    assert parse_spec(answer["spec"]).prometheus.selector_problems == ()


def test_every_spec_the_api_server_accepts_the_operator_reads(custom_api) -> None:
    seed = int(os.environ.get("FILLPROB_DIFF_SEED") or random.SystemRandom().randrange(2**32))
    count = max(MIN_SPECS, int(os.environ.get("FILLPROB_DIFF_COUNT") or 600))
    print(f"\nspec differential: seed {seed} (rerun: FILLPROB_DIFF_SEED={seed}), {count} specs")
    rng = random.Random(seed)
    manifests = [_manifest(random_spec(rng), i) for i in range(count)]

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        answers = list(pool.map(lambda m: dry_run_create(custom_api, m), manifests))
    elapsed = time.monotonic() - started

    unreadable: list[str] = []
    regex_disagreements: list[str] = []
    offline_disagreements: list[str] = []
    outcome: Counter[str] = Counter()
    for manifest, (accepted, answer) in zip(manifests, answers):
        outcome["accepted" if accepted else "rejected"] += 1
        if accepted:
            try:
                spec = parse_spec(answer["spec"])
            except (SpecError, ValueError) as exc:
                unreadable.append(f"{manifest['spec']!r}\n    server stored {answer['spec']!r}\n    parse_spec: {exc}")
            else:
                if spec.prometheus.selector_problems:
                    regex_disagreements.append(f"{spec.prometheus.selector!r}: {spec.prometheus.selector_problems}")
        offline = validate_manifest(manifest)
        if (not offline) != accepted:
            offline_disagreements.append(
                f"{manifest['spec']!r}\n    server: {'accepted' if accepted else answer}\n    offline: {offline or 'valid'}"
            )

    print(f"spec differential: {outcome['accepted']} accepted, {outcome['rejected']} rejected by the API server "
          f"in {elapsed:.1f}s; parse_spec failed on {len(unreadable)}, selector regex disagreements "
          f"{len(regex_disagreements)}, offline validator disagreements {len(offline_disagreements)}")
    assert outcome["accepted"] >= count // 5 and outcome["rejected"] >= count // 5, (
        f"the generator lost its mix: {dict(outcome)}"
    )
    assert not unreadable, (
        f"seed {seed}: {len(unreadable)} spec(s) the API server accepted do not parse:\n  " + "\n  ".join(unreadable[:10])
    )
    assert not regex_disagreements, (
        f"seed {seed}: the CRD (Go RE2) admitted regexes google-re2 cannot compile:\n  "
        + "\n  ".join(regex_disagreements[:10])
    )
    assert not offline_disagreements, (
        f"seed {seed}: the offline validator and the API server disagree:\n  " + "\n  ".join(offline_disagreements[:10])
    )
    assert elapsed < BUDGET_SECONDS, f"{count} dry runs took {elapsed:.0f}s"

