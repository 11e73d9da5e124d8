"""Pod log streams over HTTP/2 (`adapters/http2.py`, kubernetes.py `Http2LogStreams`) against a
real TLS server speaking HTTP/2 (tls_server.H2Server: the h2 library's server side), for what
long-lived follow streams need: many on one connection, a stream closed early reset (the API
server stops following that log), data acknowledged as it is read (an unread stream does not
stall the others), every wait bounded, a dropped connection failing each of its streams and the
next request reconnecting; and the configuration's CA, client certificate and token."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from kubernetes import client
from tls_server import H2Server, Reply, Request, make_pki, server_context
from tls_server import api_client as tls_api_client

from fillprob_operator.adapters.http2 import Http2Client, Http2Unavailable, StreamFailed
from fillprob_operator.adapters.kubernetes import Http2LogStreams, LogStreamRefused, tls_context
from fillprob_operator.adapters.logs import LogFollower


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def api_client(pki: Path, port: int) -> client.ApiClient:
    return tls_api_client(pki, port, token="t0ken")


def http2_client(pki: Path, port: int, **kwargs) -> Http2Client:
    options = {"timeout": 5.0, "idle_read": 30.0, **kwargs}
    return Http2Client("127.0.0.1", port, tls=tls_context(api_client(pki, port).configuration), **options)


async def until(predicate, what: str, deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def first_chunk(response) -> bytes:
    async for chunk in response.chunks():
        return chunk
    return b""


def follow(request: Request) -> Reply:
    """A followed log: a line naming the path, then open until the client lets go."""
    return Reply(body=[f"2026-12-03T07:00:00.000000000Z {request.path}\n".encode()], follow=True)


def test_log_streams_share_a_connection_present_certificate_and_token_and_verify_the_server(pki):
    def answer(request: Request) -> Reply:
        if "/pods/gone/" in request.path:
            return Reply(404, [b'{"kind":"Status","code":404,"message":"pods \\"gone\\" not found"}'])
        auth = request.headers.get("authorization")
        return Reply(body=[f"2026-12-03T07:00:00.000000000Z cn={request.client_cn} auth={auth} "
                           f"path={request.path}\n".encode()])

    server, impostor = H2Server(server_context(pki, "server", ("h2",)), answer), \
        H2Server(server_context(pki, "impostor", ("h2",)), answer)
    with server.running(), impostor.running():
        async def scenario() -> None:
            streams = Http2LogStreams(api_client(pki, server.port), timeout=5)
            bodies = []
            for pod in ("p1", "p2", "p3"):
                response = await streams.open("trading", pod, "grinder", "2026-12-03T07:00:00Z")
                bodies.append(b"".join([chunk async for chunk in response.chunks()]).decode())
                assert response.http_version == "HTTP/2"
                await response.aclose()
            assert all("cn=client auth=Bearer t0ken" in body for body in bodies), bodies
            assert "path=/api/v1/namespaces/trading/pods/p2/log?" in bodies[1]
            assert "sinceTime=2026-12-03T07%3A00%3A00Z" in bodies[1] and "follow=true" in bodies[1]
            assert server.connections == 1 and streams.connections == 1
            with pytest.raises(LogStreamRefused) as refused:
                await streams.open("trading", "gone", "grinder", None)
            assert refused.value.status == 404 and 'pods \\"gone\\" not found' in str(refused.value)
            with pytest.raises(Exception) as wrong:
                await Http2LogStreams(api_client(pki, impostor.port), timeout=5).open("trading", "p1", "grinder", None)
            assert "CERTIFICATE_VERIFY_FAILED" in repr(wrong.value) or "certificate verify failed" in str(wrong.value)
            await streams.aclose()
            assert streams.connections == 0

        asyncio.run(scenario())


def test_a_stream_closed_early_is_reset_and_the_others_go_on(pki):
    """What the API server feels: the stream let go is reset at once (it stops following that
    log), the others stay open on the same connection."""
    server = H2Server(server_context(pki, "server", ("h2",)), follow)
    with server.running():
        async def scenario() -> None:
            h2 = http2_client(pki, server.port)
            responses = [await h2.get(f"/logs/{n}", []) for n in range(3)]
            assert [await first_chunk(r) for r in responses] == [
                f"2026-12-03T07:00:00.000000000Z /logs/{n}\n".encode() for n in range(3)]
            await responses[1].aclose()
            await until(lambda: server.resets == ["/logs/1"], f"the reset of /logs/1, got {server.resets}")
            assert sorted(server.open.values()) == ["/logs/0", "/logs/2"]
            for response in responses:
                await response.aclose()
            await until(lambda: not server.open, f"every stream reset, open: {server.open}")
            assert sorted(server.resets) == ["/logs/0", "/logs/1", "/logs/2"] and server.connections == 1
            await h2.aclose()

        asyncio.run(scenario())


def test_more_streams_than_a_connection_carries_open_another_connection(pki):
    server = H2Server(server_context(pki, "server", ("h2",)), follow)
    with server.running():
        async def scenario() -> None:
            h2 = http2_client(pki, server.port, per_connection=2)
            responses = await asyncio.gather(*(h2.get(f"/logs/{n}", []) for n in range(5)))
            assert (server.connections, h2.connections, len(server.open)) == (3, 3, 5)
            for response in responses:
                await response.aclose()
            await h2.aclose()

        asyncio.run(scenario())


def test_headers_that_never_come_time_out_and_the_stream_is_reset(pki):
    server = H2Server(server_context(pki, "server", ("h2",)), lambda request: Reply(hold=True))
    with server.running():
        async def scenario() -> None:
            h2 = http2_client(pki, server.port, timeout=0.3)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await h2.get("/logs/held", [])
            assert time.monotonic() - started < 3
            await until(lambda: server.resets == ["/logs/held"], f"the held stream reset, got {server.resets}")
            await h2.aclose()

        asyncio.run(scenario())


def test_a_body_with_nothing_for_idle_read_is_a_timeout(pki):
    server = H2Server(server_context(pki, "server", ("h2",)), lambda request: Reply(follow=True))
    with server.running():
        async def scenario() -> None:
            h2 = http2_client(pki, server.port, idle_read=0.3)
            response = await h2.get("/logs/quiet", [])
            with pytest.raises(TimeoutError, match="nothing arrived for 0.3s"):
                await first_chunk(response)
            await response.aclose()
            await h2.aclose()

        asyncio.run(scenario())


@pytest.mark.parametrize("end, reason", [("drop_connections", "closed the connection|Error"), ("goaway", "GOAWAY")])
def test_a_connection_that_ends_fails_every_stream_and_the_next_request_opens_another(pki, end, reason):
    """The server drops the connection (a restarting API server) or sends GOAWAY (one shedding
    connections, `--goaway-chance`): every stream on it fails, naming why; the next request
    opens another connection."""
    server = H2Server(server_context(pki, "server", ("h2",)), follow)
    with server.running():
        async def scenario() -> None:
            h2 = http2_client(pki, server.port)
            responses = [await h2.get(f"/logs/{n}", []) for n in range(2)]
            for response in responses:
                await first_chunk(response)
            getattr(server, end)()
            for response in responses:
                with pytest.raises(StreamFailed, match=reason):
                    async for _ in response.chunks():
                        pass
                await response.aclose()
            assert h2.connections == 0
            again = await h2.get("/logs/again", [])
            assert await first_chunk(again) == b"2026-12-03T07:00:00.000000000Z /logs/again\n"
            assert (server.connections, h2.connections) == (2, 1)
            await again.aclose()
            await h2.aclose()

        asyncio.run(scenario())


def test_an_unread_stream_does_not_stall_the_others_and_arrives_whole_once_read(pki):
    """1 MiB on one stream (four times its window) while it is not read: another stream on the
    same connection still gets its line; then the big one, read, arrives whole (acknowledged as
    read, so the server may send the rest)."""
    big = bytes(range(256)) * 4096

    def answer(request: Request) -> Reply:
        return Reply(body=[big]) if request.path == "/big" else follow(request)

    server = H2Server(server_context(pki, "server", ("h2",)), answer)
    with server.running():
        async def scenario() -> None:
            h2 = http2_client(pki, server.port)
            slow = await h2.get("/big", [])
            await asyncio.sleep(0.3)  # the server fills the big stream's window
            other = await h2.get("/logs/other", [])
            assert await first_chunk(other) == b"2026-12-03T07:00:00.000000000Z /logs/other\n"
            assert b"".join([chunk async for chunk in slow.chunks()]) == big
            await other.aclose()
            await slow.aclose()
            await h2.aclose()

        asyncio.run(scenario())


def test_a_server_without_http2_is_a_clear_error(pki):
    server = H2Server(server_context(pki, "server", ("http/1.1",)), follow)
    with server.running():
        async def scenario() -> None:
            with pytest.raises(Http2Unavailable, match="did not agree to HTTP/2.*FILLPROB_LOG_TRANSPORT=threads"):
                await http2_client(pki, server.port).get("/logs/0", [])

        asyncio.run(scenario())


def test_log_follower_over_http2_resumes_after_a_dropped_connection_without_losing_a_line(pki):
    """LogFollower as the operator runs it: the log lines arrive; the connection drops (missing
    data, not "no such line"); the stream reopens with sinceTime and the line logged meanwhile
    arrives, none counted twice."""
    lines = ["2026-12-03T07:00:01.000000000Z FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only"]
    asked: list[str] = []

    def answer(request: Request) -> Reply:
        asked.append(request.path)
        return Reply(body=[(line + "\n").encode() for line in lines], follow=True)

    server = H2Server(server_context(pki, "server", ("h2",)), answer)
    with server.running():
        async def scenario() -> None:
            streams = Http2LogStreams(api_client(pki, server.port), timeout=5)
            woken: list = []
            follower = LogFollower(open_async=streams.open, aclose=streams.aclose,
                                   wake=lambda ns, name: woken.append((ns, name)))
            pods = [("p1", "uid-1")]
            seen = await follower.observe(("trading", "r"), "trading", pods, "grinder", timeout=5)
            assert seen["uid-1"].readable and seen["uid-1"].resolution_line
            lines.append("2026-12-03T07:00:02.000000000Z FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=3 symbol=SYM1")
            server.drop_connections()

            async def tripped() -> bool:
                seen = await follower.observe(("trading", "r"), "trading", pods, "grinder", timeout=5)
                return seen["uid-1"].readable and bool(seen["uid-1"].circuit_breaker_lines)

            end = time.monotonic() + 10
            while not await tripped():
                assert time.monotonic() < end, "the CB line after the reconnect"
                await asyncio.sleep(0.05)
            seen = await follower.observe(("trading", "r"), "trading", pods, "grinder", timeout=5)
            assert len(seen["uid-1"].circuit_breaker_lines) == 1
            assert len(asked) == 2 and "sinceTime=2026-12-03T07%3A00%3A01Z" in asked[1], asked
            assert ("trading", "r") in woken
            await follower.aclose()

        asyncio.run(scenario())
