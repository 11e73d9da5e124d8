"""The Alertmanager webhook receiver: alert-driven rollback (API.md, "Manual and alert-driven rollback").

`POST /alertmanager` takes Alertmanager's webhook payload (version "4") with a bearer token.
Every *firing* alert labelled `fillprob_rollout="<name>"` and `namespace="<ns>"` becomes a
`RollbackRequest` handed to `submit(request, namespace, name)`, which stores it on the
FillProbRollout through the API server (handlers.py); the rollout's next tick gives it to
`decide()`. An optional `rollback="R1|R2|R3"` label names the playbook; without it the
request's playbook is `TABLE_DEFAULT` (""), which the domain reads as "the gate table's
playbook for a circuit-breaker trip at the current step".

Alert intake is durable (API.md, Everyday change): an alert is "accepted" only once `submit`
returned, i.e. once it is stored, so an operator restart loses nothing that was answered 200;
any replica, active or standby, accepts.

Duplicates change nothing: the request key is `alert:<fingerprint>:<startsAt>`, the same for
every re-send of one firing (Alertmanager repeats it each `repeat_interval`), a re-send stores
the same annotation again, and the domain never applies a key it has already taken. The
receiver also remembers the keys it has stored recently and reports re-sends as ignored.
Resolved alerts are ignored.

Response codes, chosen for Alertmanager's retry rules (it retries 5xx, not 4xx):
- 200 `{"accepted": [...], "ignored": [...], "rejected": [...]}`: every alert of the payload is
  in one list with the reason; accepted = stored (an invalid `rollback` label, or a rollout
  that does not exist or is in a namespace this operator does not watch, rejects that alert
  only);
- 400: not JSON, or not a version-4 webhook payload, or a body that cannot be decoded (a bad
  Content-Encoding, a broken chunked or short Content-Length body);
- 401: missing or wrong bearer token, or the receiver has no token configured (fail closed);
- 408: the body did not arrive within `body_timeout` seconds (a stalled or trickling client);
- 413: a body over `max_body_bytes` (counted as received and decoded, whatever Content-Length
  says; chunked bodies too);
- 503: storing an alert failed (the API server unreachable, or refusing the write): the body
  has the lists above plus `failed` and `error`; Alertmanager retries the payload, and alerts
  stored meanwhile stay stored (a retry reports them as duplicates or stores them again).
`GET /healthz` answers 200 without a token. `GET /readyz` (no token) answers 200 when this
replica can take an alert now (a token is configured, `ready()` reports no problem: the API
server answers), else 503 with why: the chart's readiness probe.

Bad input never costs more than one request's worth (tests/unit/test_webhook_bad_input.py): the
token is checked before the body is read, a body is read no further than `max_body_bytes` + 1
(decoded) bytes within `body_timeout`, and every answer above is given by this handler, never a
500 from an exception it let through. 408 and 413 close the connection (what is left of the body
is not wanted). Connections are independent: one stalled client holds only its own connection,
and one that never completes its request headers is closed after `keepalive_timeout`.

`submit` returns True when the request is stored, False when `<namespace>/<name>` is no
FillProbRollout this operator could act on (reported as rejected), and raises when the store
failed. An exception with a `status` (the API server answered, e.g. 422) fails that alert only;
any other (unreachable, timed out) fails the rest of the payload without trying it.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Mapping, Union

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .api import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from .domain.observations import RollbackRequest

logger = logging.getLogger("fillprob_operator.webhook")

ALERTMANAGER_PATH = "/alertmanager"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
DEFAULT_MAX_BODY_BYTES = 256 * 1024
# A body must arrive within this (a whole-body deadline, so trickling a byte now and then does
# not hold a connection forever); Alertmanager sends a few KiB at once.
DEFAULT_BODY_TIMEOUT_SECONDS = 10.0
# A connection idle, or still sending its request headers, this long is closed (aiohttp's
# run_app default; its bare server default is an hour).
DEFAULT_KEEPALIVE_TIMEOUT_SECONDS = 75.0

# Alert labels this receiver reads (API.md).
ROLLOUT_LABEL = "fillprob_rollout"
NAMESPACE_LABEL = "namespace"
ROLLBACK_LABEL = "rollback"
PLAYBOOKS = ("R1", "R2", "R3")
# RollbackRequest.playbook for an alert without a `rollback` label: the domain picks the gate
# table's playbook for a CB trip at the current step (decide.py, apply_request).
TABLE_DEFAULT = ""
ALERT_FIRED = "AlertFired"

# How many stored keys to remember for "duplicate" answers. Forgetting is safe: a re-send is
# stored again, and the domain dedupes by key against status anyway.
SEEN_KEYS = 4096
# Evidence goes into status.history; keep one chatty annotation from bloating it.
MAX_EVIDENCE_VALUE = 1024
# The request key (fingerprint + startsAt) goes into status.requestKeys and history; Alertmanager's
# fingerprints are 16 hex digits. A longer one rejects that alert only.
MAX_FINGERPRINT = 128

# RFC 1123 label (namespace) and subdomain (object name), as the API server checks them.
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)

TokenProvider = Callable[[], Union[str, None]]
Submit = Callable[[RollbackRequest, str, str], Union[Awaitable[bool], bool]]
# What keeps this replica from storing an alert now ("" or None: nothing).
Ready = Callable[[], Awaitable[Union[str, None]]]


# ---------------------------------------------------------------------------- payload


class Alert(BaseModel):
    """One alert of Alertmanager's webhook payload; fields we do not use are allowed."""

    model_config = ConfigDict(extra="ignore", strict=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: str = Field(alias="startsAt")
    ends_at: str = Field(default="", alias="endsAt")
    fingerprint: str = Field(min_length=1)
    generator_url: str = Field(default="", alias="generatorURL")

    @field_validator("starts_at")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"startsAt {value!r} is not an RFC 3339 time") from None
        return value


class WebhookPayload(BaseModel):
    """Alertmanager's webhook body, version "4" (receiver, groupKey etc. are not used)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[Alert]


class PayloadError(ValueError):
    """The body is not an Alertmanager version-4 webhook payload."""


def parse_payload(body: bytes | bytearray) -> WebhookPayload:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: "[[[[..."
        raise PayloadError(f"body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise PayloadError("body is not a JSON object (want Alertmanager's webhook payload)")
    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<body>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise PayloadError(f"not an Alertmanager webhook v4 payload: {problems}") from None


# ---------------------------------------------------------------------------- alert -> request


@dataclass(frozen=True)
class Verdict:
    """What the receiver makes of one alert: a request to submit, or why not."""

    outcome: Literal["request", "ignored", "rejected"]
    summary: dict[str, Any]
    request: RollbackRequest | None = None
    namespace: str = ""
    name: str = ""


def alert_source(alert: Alert) -> str:
    """`AlertName{label="value",...}` (alertname and all labels, sorted), as Prometheus prints it;
    clipped like the evidence (it is stored in status.history too)."""
    labels = ",".join(f'{k}={json.dumps(v)}' for k, v in sorted(alert.labels.items()) if k != "alertname")
    source = f"{alert.labels.get('alertname', '<no alertname>')}{{{labels}}}"
    return source if len(source) <= MAX_EVIDENCE_VALUE else source[:MAX_EVIDENCE_VALUE] + "..."


def _clip(values: Mapping[str, str]) -> dict[str, str]:
    return {k: v if len(v) <= MAX_EVIDENCE_VALUE else v[:MAX_EVIDENCE_VALUE] + "..." for k, v in values.items()}


def judge(alert: Alert) -> Verdict:
    """Firing + fillprob_rollout + namespace labels -> a RollbackRequest; else ignored/rejected."""
    labels = alert.labels
    summary: dict[str, Any] = {
        "alertname": labels.get("alertname", ""),
        "fingerprint": alert.fingerprint,
        "startsAt": alert.starts_at,
    }
    name, namespace = labels.get(ROLLOUT_LABEL, ""), labels.get(NAMESPACE_LABEL, "")
    if name:
        summary["fillprobRollout"] = f"{namespace}/{name}"
    if alert.status != "firing":
        return Verdict("ignored", {**summary, "reason": "resolved: only firing alerts roll back"})
    if not name or not namespace:
        return Verdict("ignored", {**summary, "reason": f"no {ROLLOUT_LABEL} and {NAMESPACE_LABEL} labels"})
    if len(alert.fingerprint) > MAX_FINGERPRINT:
        summary["fingerprint"] = alert.fingerprint[:MAX_FINGERPRINT] + "..."
        return Verdict("rejected", {**summary, "reason": f"fingerprint longer than {MAX_FINGERPRINT} characters"})
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        return Verdict("rejected", {**summary, "reason": f"label {NAMESPACE_LABEL}={namespace!r} is not a namespace name"})
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        return Verdict("rejected", {**summary, "reason": f"label {ROLLOUT_LABEL}={name!r} is not an object name"})
    playbook = labels.get(ROLLBACK_LABEL)
    if playbook is not None and playbook not in PLAYBOOKS:
        return Verdict("rejected", {**summary, "reason": f"label {ROLLBACK_LABEL}={playbook!r}: use R1, R2 or R3"})
    playbook = playbook or TABLE_DEFAULT
    summary["playbook"] = playbook or "table"
    request = RollbackRequest(
        playbook=playbook,
        reason=ALERT_FIRED,
        source=alert_source(alert),
        evidence={
            "alertname": labels.get("alertname", ""),
            "labels": _clip(labels),
            "annotations": _clip(alert.annotations),
            "startsAt": alert.starts_at,
            "fingerprint": alert.fingerprint,
            **({"generatorURL": alert.generator_url[:MAX_EVIDENCE_VALUE]} if alert.generator_url else {}),
        },
        key=f"alert:{alert.fingerprint}:{alert.starts_at}",
    )
    return Verdict("request", summary, request, namespace, name)


# ---------------------------------------------------------------------------- HTTP


def _error(status: int, message: str, *, close: bool = False) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    if close:  # the rest of this connection's bytes are not wanted (aiohttp drains, then closes)
        response.force_close()
    return response


def _credential(value: str) -> bytes:
    """A header value as the bytes the client sent: aiohttp decodes headers as UTF-8 with
    surrogateescape, so this is exact (a plain "replace" would make b"\\xff" equal "?")."""
    return value.encode("utf-8", "surrogateescape")


def _authorized(header: str | None, token: str) -> bool:
    """`Bearer <token>`, the token byte for byte; only HTTP's own whitespace (space, tab) around
    it is ignored (str.strip() would also drop a no-break space and other Unicode spaces)."""
    scheme, _, presented = (header or "").partition(" ")
    presented = presented.strip(" \t")
    if scheme.lower() != "bearer" or not presented:
        return False
    try:
        expected = token.encode("utf-8")
    except UnicodeEncodeError:  # a token that no client can send
        return False
    return hmac.compare_digest(_credential(presented), expected)


@dataclass(frozen=True)
class _Unread:
    """Why the body was not read: the answer to give (the connection is closed after it)."""

    status: int
    message: str


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytearray | _Unread:
    """The body, or why not: over `limit` (read no further than limit + 1 decoded bytes, kept in
    one buffer, never copied), not complete within `timeout` seconds, or not decodable."""
    if request.content_length is not None and request.content_length > limit:
        return _Unread(413, f"body over {limit} bytes (Content-Length {request.content_length})")
    body = bytearray()

    async def read() -> bool:
        while True:
            chunk = await request.content.read(min(65536, limit + 1 - len(body)))
            if not chunk:
                return True
            body.extend(chunk)
            if len(body) > limit:
                return False

    try:
        complete = await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        return _Unread(408, f"body not received within {timeout:g}s")
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # bad gzip/deflate, broken chunks
        why = " ".join(str(exc).split()) or type(exc).__name__
        return _Unread(400, f"body unreadable: {why}"[:300])
    if not complete:
        return _Unread(413, f"body over {limit} bytes")
    return body


class _Receiver:
    def __init__(self, token_provider: TokenProvider, submit: Submit, max_body_bytes: int,
                 body_timeout: float, ready: Ready | None = None) -> None:
        self.token_provider = token_provider
        self.submit = submit
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.ready = ready
        self.seen: OrderedDict[str, None] = OrderedDict()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        """200 when this replica can take an alert now: a token is configured and `ready()`
        (the API server answers, so an alert can be stored) says nothing is wrong; else 503
        with why. The chart's readiness probe, so the Service sends alerts only where they
        can be stored."""
        if not self._token():
            return web.json_response({"status": "not ready", "why": "no bearer token configured"}, status=503)
        problem = await self.ready() if self.ready is not None else None
        if problem:
            return web.json_response({"status": "not ready", "why": problem}, status=503)
        return web.json_response({"status": "ready"})

    def _token(self) -> str | None:
        try:
            return self.token_provider()
        except Exception as exc:  # fail closed: a broken provider refuses, never answers 500
            logger.warning("event=webhook_token_unreadable error=%s", json.dumps(repr(exc)))
            return None

    async def alertmanager(self, request: web.Request) -> web.Response:
        token = self._token()
        if not token:
            logger.warning("event=webhook_refused why=no_token_configured")
            return _error(401, "the receiver has no bearer token configured; refusing every request")
        if not _authorized(request.headers.get("Authorization"), token):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        try:
            body = await _read_body(request, self.max_body_bytes, self.body_timeout)
        except ConnectionError:  # the client went away mid-body: nobody to answer
            logger.info("event=webhook_client_gone remote=%s", request.remote)
            return _error(400, "connection lost while reading the body", close=True)
        if isinstance(body, _Unread):
            logger.warning("event=webhook_body_refused status=%d remote=%s error=%s",
                           body.status, request.remote, json.dumps(body.message))
            return _error(body.status, body.message, close=True)
        try:
            payload = parse_payload(body)
        except PayloadError as exc:
            logger.warning("event=webhook_bad_payload error=%s", json.dumps(str(exc)))
            return _error(400, str(exc))

        result: dict[str, list[dict[str, Any]]] = {"accepted": [], "ignored": [], "rejected": []}
        failed: list[dict[str, Any]] = []
        unreachable = ""  # set once a store got no answer at all: the rest is not tried
        for alert in payload.alerts:
            verdict = judge(alert)
            if verdict.request is None:
                result[verdict.outcome].append(verdict.summary)
                continue
            key = verdict.request.key
            if key in self.seen:
                result["ignored"].append({**verdict.summary, "reason": "duplicate: already accepted"})
                continue
            if unreachable:
                failed.append({**verdict.summary, "reason": f"not tried: {unreachable}"})
                continue
            try:
                stored = self.submit(verdict.request, verdict.namespace, verdict.name)
                if inspect.isawaitable(stored):
                    stored = await stored
            except Exception as exc:  # not stored: answer 503 so that Alertmanager retries
                logger.warning(
                    "event=webhook_store_failed namespace=%s name=%s key=%s error=%s",
                    verdict.namespace, verdict.name, json.dumps(key), json.dumps(str(exc)),
                )
                failed.append({**verdict.summary, "reason": f"not stored: {exc}"})
                if getattr(exc, "status", None) is None:
                    unreachable = str(exc)
                continue
            if not stored:
                result["rejected"].append({
                    **verdict.summary,
                    "reason": f"no FillProbRollout {verdict.namespace}/{verdict.name} "
                              "(absent, or in a namespace this operator does not watch)",
                })
                continue
            self._remember(key)
            result["accepted"].append(verdict.summary)
            logger.info(
                "event=webhook_rollback_requested namespace=%s name=%s playbook=%s key=%s source=%s",
                verdict.namespace, verdict.name, verdict.request.playbook or "table",
                json.dumps(key), json.dumps(verdict.request.source),
            )
        if failed:
            return web.json_response(
                {**result, "failed": failed,
                 "error": f"{len(failed)} alert(s) not stored; retry (the stored ones stay stored)"},
                status=503,
            )
        return web.json_response(result)

    def _remember(self, key: str) -> None:
        self.seen[key] = None
        while len(self.seen) > SEEN_KEYS:
            self.seen.popitem(last=False)


def make_webhook_app(
    token_provider: TokenProvider,
    submit: Submit,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS,
    ready: Ready | None = None,
) -> web.Application:
    """The receiver as an aiohttp Application; serve it with `start_webhook_server`."""
    receiver = _Receiver(token_provider, submit, max_body_bytes, body_timeout, ready)
    # The body is read by hand (413 past the limit); client_max_size guards any other reader.
    app = web.Application(client_max_size=max_body_bytes + 1)
    app.router.add_post(ALERTMANAGER_PATH, receiver.alertmanager)
    app.router.add_get(HEALTHZ_PATH, receiver.healthz)
    app.router.add_get(READYZ_PATH, receiver.readyz)
    return app


async def start_webhook_server(
    app: web.Application, host: str, port: int,
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT_SECONDS,
    shutdown_timeout: float = 60.0,
) -> web.AppRunner:
    """Start serving on host:port in the running loop; `await runner.cleanup()` stops it,
    waiting up to `shutdown_timeout` for requests in flight (aiohttp's default). Port 0 picks a
    free port (`runner.addresses`)."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


# ---------------------------------------------------------------------------- configuration


def token_from_file(path: str | os.PathLike[str]) -> TokenProvider:
    """Read the token from `path` at each request, so a rotated Secret applies without a restart.

    An unreadable or empty file gives None: every request is refused (fail closed).
    """
    file = Path(path)

    def provider() -> str | None:
        try:
            return file.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:  # not UTF-8: no client could send it
            logger.warning("event=webhook_token_unreadable path=%s error=%s", json.dumps(str(file)), json.dumps(str(exc)))
            return None

    return provider


@dataclass(frozen=True)
class WebhookConfig:
    """FILLPROB_WEBHOOK_ADDR (host:port; unset, "", "off": not served) and the token source:
    FILLPROB_WEBHOOK_TOKEN_FILE (the chart mounts the Secret there), else FILLPROB_WEBHOOK_TOKEN."""

    host: str
    port: int
    token_provider: TokenProvider

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "WebhookConfig | None":
        env = os.environ if environ is None else environ
        addr = env.get("FILLPROB_WEBHOOK_ADDR", "").strip()
        if addr.lower() in ("", "off", "none", "0"):
            return None
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"FILLPROB_WEBHOOK_ADDR={addr!r}: want host:port")
        token_file = env.get("FILLPROB_WEBHOOK_TOKEN_FILE", "").strip()
        if token_file:
            provider = token_from_file(token_file)
        else:
            token = env.get("FILLPROB_WEBHOOK_TOKEN", "").strip() or None
            provider = lambda: token  # noqa: E731
        return cls(host=host or "0.0.0.0", port=int(port), token_provider=provider)
