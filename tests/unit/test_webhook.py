"""The Alertmanager webhook receiver (API.md, "Manual and alert-driven rollback").

Each test serves `make_webhook_app` on a loopback port with aiohttp's TestServer and talks
to it with TestClient, inside `asyncio.run` (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from aiohttp.test_utils import TestClient, TestServer

from fillprob_operator.domain.observations import RollbackRequest
from fillprob_operator.webhook import (
    TABLE_DEFAULT,
    WebhookConfig,
    make_webhook_app,
    token_from_file,
)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STARTS = "2026-01-02T03:04:05.123456789Z"


def alert(
    status: str = "firing",
    fingerprint: str = "a1b2c3",
    starts_at: str = STARTS,
    **labels: str,
) -> dict[str, Any]:
    base = {"alertname": "FillProbCircuitBreakerTripped", "fillprob_rollout": "grinder", "namespace": "trading"}
    return {
        "status": status,
        "labels": {k: v for k, v in {**base, **labels}.items() if v is not None},
        "annotations": {"summary": "circuit breaker tripped"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="FillProbCircuitBreakerTripped"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "fillprob-operator",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


class Inbox:
    """`submit`: stores requests (like the rollout's annotations); knows only trading/grinder."""

    def __init__(self, known: set[tuple[str, str]] | None = None) -> None:
        self.requests: list[tuple[RollbackRequest, str, str]] = []
        self.known = {("trading", "grinder")} if known is None else known

    async def submit(self, request: RollbackRequest, namespace: str, name: str) -> bool:
        if (namespace, name) not in self.known:
            return False
        self.requests.append((request, namespace, name))
        return True


def serve(
    scenario: Callable[[TestClient, Inbox], Awaitable[None]],
    *,
    token: str | None = TOKEN,
    inbox: Inbox | None = None,
    max_body_bytes: int = 256 * 1024,
) -> Inbox:
    inbox = inbox or Inbox()

    async def main() -> None:
        app = make_webhook_app(lambda: token, inbox.submit, max_body_bytes=max_body_bytes)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await scenario(client, inbox)

    asyncio.run(main())
    return inbox


async def post(client: TestClient, body: Any, headers: dict[str, str] | None = AUTH) -> tuple[int, dict]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    resp = await client.post("/alertmanager", data=data, headers={"Content-Type": "application/json", **(headers or {})})
    return resp.status, await resp.json()


async def still_serving(client: TestClient) -> None:
    status, body = await post(client, payload(alert(fingerprint="still")))
    assert status == 200 and len(body["accepted"]) == 1, body


# ---------------------------------------------------------------------------- auth


def test_missing_or_wrong_token_is_401_and_nothing_is_submitted():
    async def scenario(client: TestClient, inbox: Inbox) -> None:
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}):
            status, body = await post(client, payload(alert()), headers=headers)
            assert status == 401, headers
            assert "token" in body["error"]
        assert inbox.requests == []
        await still_serving(client)

    serve(scenario)


def test_no_token_configured_refuses_everything():
    async def scenario(client: TestClient, inbox: Inbox) -> None:
        for headers in (AUTH, {"Authorization": "Bearer "}, None):
            status, body = await post(client, payload(alert()), headers=headers)
            assert status == 401
            assert "no bearer token configured" in body["error"]
        assert inbox.requests == []

    serve(scenario, token=None)


def test_healthz_needs_no_token():
    async def scenario(client: TestClient, _: Inbox) -> None:
        resp = await client.get("/healthz")
        assert resp.status == 200

    serve(scenario)


def test_readyz_says_whether_this_replica_can_store_an_alert_now():
    """The chart's readiness probe: 200 only with a token and nothing in the way (the API
    server answering); 503 with why otherwise. No token needed to ask."""
    problems: list[str | None] = [None, "the API server does not answer: timed out", None]

    async def ready() -> str | None:
        return problems.pop(0)

    async def main(token: str | None) -> list[tuple[int, dict]]:
        app = make_webhook_app(lambda: token, Inbox().submit, ready=ready)
        answers = []
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for _ in range(3 if token else 1):
                resp = await client.get("/readyz")
                answers.append((resp.status, await resp.json()))
        return answers

    ok, down, back = asyncio.run(main(TOKEN))
    assert ok == (200, {"status": "ready"})
    assert down[0] == 503 and "does not answer" in down[1]["why"]
    assert back[0] == 200
    [no_token] = asyncio.run(main(None))
    assert no_token[0] == 503 and "no bearer token" in no_token[1]["why"]


# ---------------------------------------------------------------------------- bad bodies


def test_malformed_json_and_wrong_shape_are_400_oversized_is_413_and_the_server_keeps_serving():
    big = payload(alert(fingerprint="big"))
    big["alerts"][0]["annotations"]["pad"] = "x" * 5000

    bad_bodies: list[Any] = [
        b"{not json",
        b"\xff\xfe",
        "[]",
        {"version": "4", "status": "firing"},  # no alerts
        {**payload(alert()), "version": "3"},
        {**payload(alert()), "alerts": "nope"},
        payload({**alert(), "labels": {"namespace": 7}}),  # label values are strings
        payload({**alert(), "status": "pending"}),
        payload({k: v for k, v in alert().items() if k != "fingerprint"}),
        payload({**alert(), "startsAt": "yesterday"}),
    ]

    async def scenario(client: TestClient, inbox: Inbox) -> None:
        for body in bad_bodies:
            status, answer = await post(client, body)
            assert status == 400, (body, answer)
            assert answer["error"]
        status, answer = await post(client, big)
        assert status == 413 and "over 4096 bytes" in answer["error"]
        # Chunked (no Content-Length): the limit still holds.
        async def chunks():
            yield json.dumps(big).encode()

        resp = await client.post("/alertmanager", data=chunks(), headers=AUTH)
        assert resp.status == 413
        assert inbox.requests == []
        await still_serving(client)

    serve(scenario, max_body_bytes=4096)


# ---------------------------------------------------------------------------- alerts


def test_firing_alert_becomes_a_rollback_request():
    async def scenario(client: TestClient, inbox: Inbox) -> None:
        status, body = await post(client, payload(alert(rollback="R2", symbol="SYM3")))
        assert status == 200
        assert [a["fillprobRollout"] for a in body["accepted"]] == ["trading/grinder"]
        assert body["accepted"][0]["playbook"] == "R2"
        assert body["ignored"] == [] and body["rejected"] == []

    inbox = serve(scenario)
    [(request, namespace, name)] = inbox.requests
    assert (namespace, name) == ("trading", "grinder")
    assert request.playbook == "R2"
    assert request.reason == "AlertFired"
    assert request.key == f"alert:a1b2c3:{STARTS}"
    assert request.source == (
        'FillProbCircuitBreakerTripped{fillprob_rollout="grinder",namespace="trading",rollback="R2",symbol="SYM3"}'
    )
    assert request.evidence["labels"]["symbol"] == "SYM3"
    assert request.evidence["annotations"] == {"summary": "circuit breaker tripped"}
    assert request.evidence["startsAt"] == STARTS


def test_no_rollback_label_means_the_tables_playbook():
    async def scenario(client: TestClient, inbox: Inbox) -> None:
        status, body = await post(client, payload(alert()))
        assert status == 200 and body["accepted"][0]["playbook"] == "table"

    [(request, _, _)] = serve(scenario).requests
    assert request.playbook == TABLE_DEFAULT == ""


def test_duplicates_and_resolved_alerts_change_nothing():
    async def scenario(client: TestClient, inbox: Inbox) -> None:
        first = alert(rollback="R1")
        status, body = await post(client, payload(first, first))  # twice in one payload
        assert status == 200 and len(body["accepted"]) == 1
        assert [i["reason"] for i in body["ignored"]] == ["duplicate: already accepted"]
        status, body = await post(client, payload(first))  # Alertmanager's re-send
        assert status == 200 and body["accepted"] == []
        assert body["ignored"][0]["reason"].startswith("duplicate")
        status, body = await post(client, {**payload(alert(status="resolved")), "status": "resolved"})
        assert status == 200 and body["accepted"] == []
        assert body["ignored"][0]["reason"].startswith("resolved")
        # Not ours: no fillprob_rollout / namespace label.
        status, body = await post(client, payload(alert(fingerprint="other", fillprob_rollout=None)))
        assert status == 200 and body["accepted"] == [] and "labels" in body["ignored"][0]["reason"]
        # The same alert firing again later is a new event.
        status, body = await post(client, payload(alert(rollback="R1", starts_at="2026-01-02T04:00:00Z")))
        assert len(body["accepted"]) == 1

    inbox = serve(scenario)
    assert [r.key for r, _, _ in inbox.requests] == [
        f"alert:a1b2c3:{STARTS}", "alert:a1b2c3:2026-01-02T04:00:00Z",
    ]


def test_invalid_rollback_label_rejects_that_alert_only():
    async def scenario(client: TestClient, inbox: Inbox) -> None:
        status, body = await post(client, payload(
            alert(fingerprint="bad", rollback="R4"),
            alert(fingerprint="good", rollback="R3"),
            alert(fingerprint="ns", namespace="Not_A_Namespace"),
            alert(fingerprint="unknown", fillprob_rollout="nobody"),
        ))
        assert status == 200
        assert [a["fingerprint"] for a in body["accepted"]] == ["good"]
        rejected = {r["fingerprint"]: r["reason"] for r in body["rejected"]}
        assert set(rejected) == {"bad", "ns", "unknown"}
        assert "R4" in rejected["bad"] and "R1, R2 or R3" in rejected["bad"]
        assert "no FillProbRollout trading/nobody" in rejected["unknown"]

    inbox = serve(scenario)
    assert [r.playbook for r, _, _ in inbox.requests] == ["R3"]


def test_a_rollout_unknown_at_first_is_accepted_once_it_is_known():
    """A False from submit is not remembered: the re-send is tried again."""
    inbox = Inbox(known=set())

    async def scenario(client: TestClient, inbox: Inbox) -> None:
        status, body = await post(client, payload(alert()))
        assert status == 200 and len(body["rejected"]) == 1
        inbox.known.add(("trading", "grinder"))
        status, body = await post(client, payload(alert()))
        assert len(body["accepted"]) == 1

    assert len(serve(scenario, inbox=inbox).requests) == 1


class StoreFailed(Exception):
    """What the adapter raises when the API server answered a write with an error."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def test_a_store_that_fails_is_503_so_alertmanager_retries():
    calls: list[str] = []

    def flaky(request: RollbackRequest, namespace: str, name: str) -> bool:  # a plain function works too
        calls.append(request.key)
        if len(calls) == 1:
            raise StoreFailed("store alert trading/grinder: 500 Internal Server Error", status=500)
        return True

    async def main() -> None:
        app = make_webhook_app(lambda: TOKEN, flaky)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            status, body = await post(client, payload(alert()))
            assert status == 503 and body["accepted"] == [] and "retry" in body["error"]
            assert "500 Internal Server Error" in body["failed"][0]["reason"]
            status, body = await post(client, payload(alert()))
            assert status == 200 and len(body["accepted"]) == 1

    asyncio.run(main())
    assert len(calls) == 2


def test_the_answer_comes_only_after_the_store_returned():
    entered, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def slow_store(request: RollbackRequest, namespace: str, name: str) -> bool:
        entered.set()
        await release.wait()
        order.append("stored")
        return True

    async def main() -> None:
        app = make_webhook_app(lambda: TOKEN, slow_store)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            answer = asyncio.ensure_future(post(client, payload(alert())))
            await asyncio.wait_for(entered.wait(), 5)
            assert not answer.done()
            release.set()
            status, body = await asyncio.wait_for(answer, 5)
            order.append("answered")
            assert status == 200 and len(body["accepted"]) == 1

    asyncio.run(main())
    assert order == ["stored", "answered"]


def test_one_alert_refused_by_the_api_server_does_not_hold_back_the_others():
    """An answer (422: annotations over the limit) fails that alert only; the payload is 503,
    and its stored alerts stay stored: the retry reports them as duplicates."""
    stored: list[str] = []

    def store(request: RollbackRequest, namespace: str, name: str) -> bool:
        if request.evidence["fingerprint"] == "huge":
            raise StoreFailed("store alert: 422 Unprocessable Entity", status=422)
        stored.append(request.evidence["fingerprint"])
        return True

    async def main() -> None:
        app = make_webhook_app(lambda: TOKEN, store)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            alerts = payload(alert(fingerprint="a"), alert(fingerprint="huge"), alert(fingerprint="b"))
            status, body = await post(client, alerts)
            assert status == 503, body
            assert [a["fingerprint"] for a in body["accepted"]] == ["a", "b"]
            assert [f["fingerprint"] for f in body["failed"]] == ["huge"]
            status, body = await post(client, alerts)  # Alertmanager's retry
            assert status == 503 and body["accepted"] == []
            assert [i["fingerprint"] for i in body["ignored"]] == ["a", "b"]

    asyncio.run(main())
    assert stored == ["a", "b"]


def test_an_api_server_that_does_not_answer_fails_the_rest_of_the_payload_untried():
    tried: list[str] = []

    async def store(request: RollbackRequest, namespace: str, name: str) -> bool:
        tried.append(request.evidence["fingerprint"])
        if request.evidence["fingerprint"] == "b":
            raise StoreFailed("store alert: timed out after 30.0s", status=None)
        return True

    async def main() -> None:
        app = make_webhook_app(lambda: TOKEN, store)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            status, body = await post(client, payload(*(alert(fingerprint=f) for f in "abcd")))
            assert status == 503
            assert [a["fingerprint"] for a in body["accepted"]] == ["a"]
            assert [f["fingerprint"] for f in body["failed"]] == ["b", "c", "d"]
            assert body["failed"][1]["reason"].startswith("not tried")

    asyncio.run(main())
    assert tried == ["a", "b"]


# ---------------------------------------------------------------------------- configuration


def test_token_file_is_read_per_request(tmp_path):
    path = tmp_path / "token"
    provider = token_from_file(path)
    assert provider() is None  # missing: refuse everything
    path.write_text("first\n")
    assert provider() == "first"
    path.write_text("rotated")
    assert provider() == "rotated"


def test_config_from_env(tmp_path):
    assert WebhookConfig.from_env({}) is None
    assert WebhookConfig.from_env({"FILLPROB_WEBHOOK_ADDR": "off"}) is None
    (tmp_path / "token").write_text("t0k\n")
    config = WebhookConfig.from_env({
        "FILLPROB_WEBHOOK_ADDR": "127.1.0.5:8443",
        "FILLPROB_WEBHOOK_TOKEN_FILE": str(tmp_path / "token"),
    })
    assert (config.host, config.port, config.token_provider()) == ("127.1.0.5", 8443, "t0k")
    config = WebhookConfig.from_env({"FILLPROB_WEBHOOK_ADDR": ":8443", "FILLPROB_WEBHOOK_TOKEN": "env"})
    assert (config.host, config.token_provider()) == ("0.0.0.0", "env")
    try:
        WebhookConfig.from_env({"FILLPROB_WEBHOOK_ADDR": "8443"})
    except ValueError as exc:
        assert "host:port" in str(exc)
    else:
        raise AssertionError("FILLPROB_WEBHOOK_ADDR without a port must fail")
