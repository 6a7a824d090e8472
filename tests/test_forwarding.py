"""Forwarding headers and loop detection at the public edge: a public client cannot make
the origin believe another address, scheme or host, except through a trusted proxy; and a
client that sends requests back into the server gets a 508 instead of a loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re

import pytest
from test_front import Recorder, exchange, read_all
from test_tunnel_http import RawOrigin, connect, get, read_response
from tunnel_helpers import Tunnel

from ytun import Client, Server
from ytun.tunnel.client import ExponentialBackoff
from ytun.tunnel.front import LOOP_MESSAGE, peer_trusted

SPOOFED = (
    "X-Forwarded-For: 6.6.6.6",
    "x-FORWARDED-for: 7.7.7.7",
    "X-Forwarded-For: 8.8.8.8, 9.9.9.9",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: evil.example",
    "X-Forwarded-Port: 443",
    "X_Forwarded_For: 5.5.5.5",
    "Forwarded: for=1.2.3.4;proto=https;host=evil.example",
)


def fields(head: bytes) -> list[tuple[str, str]]:
    """``(lower-case name, value)`` of every header line of a request head, in order."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    pairs = []
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        pairs.append((name.lower(), value.strip()))
    return pairs


def values(head: bytes, name: str) -> list[str]:
    return [value for field, value in fields(head) if field == name]


@contextlib.asynccontextmanager
async def recorded(server: Server):
    recorder = Recorder()
    async with (
        RawOrigin(recorder) as raw,
        Tunnel(server=server, client_kwargs={"local_addr": raw.addr}) as t,
    ):
        yield t, recorder
    assert not raw.errors


async def test_spoofed_forwarding_headers_are_replaced_by_the_servers_own() -> None:
    server = Server()
    async with recorded(server) as (t, recorder):
        answers = await exchange(t.port, get("/", t.host, *SPOOFED))
        assert answers[0].status == 200
        head = recorder.requests[0]
        forwarding = [
            (name, value) for name, value in fields(head) if "forwarded" in name.replace("_", "-")
        ]
        assert forwarding == [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", t.host),
        ]
        assert b"evil.example" not in head and b"6.6.6.6" not in head
        assert values(head, "via") == ["1.1 " + server.via_mark.decode()]


async def test_an_aiohttp_origin_sees_only_the_servers_values() -> None:
    """A framework reading the first X-Forwarded-Host gets the real one."""
    async with Tunnel() as t:
        answers = await exchange(t.port, get("/?echo=x", t.host, *SPOOFED))
        assert answers[0].status == 200
        assert answers[0].headers["x-seen-forwarded-host"] == t.host
        assert answers[0].headers["x-seen-forwarded-for"] == "127.0.0.1"


async def test_a_head_without_forwarding_headers_gets_them_appended() -> None:
    """The common path: the head as received, our fields before its blank line."""
    server = Server()
    async with recorded(server) as (t, recorder):
        request = get("/plain", t.host, "Accept: */*")
        await exchange(t.port, request)
        mark = server.via_mark.decode()
        assert (
            recorder.requests[0]
            == request[:-2]
            + (
                "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                f"X-Forwarded-Host: {t.host}\r\nVia: 1.1 {mark}\r\n\r\n"
            ).encode()
        )


async def test_an_existing_via_is_appended_to() -> None:
    server = Server()
    async with recorded(server) as (t, recorder):
        await exchange(t.port, get("/", t.host, "via: 1.0 corporate-proxy"))
        mark = server.via_mark.decode()
        assert values(recorder.requests[0], "via") == [f"1.0 corporate-proxy, 1.1 {mark}"]


async def test_a_folded_forwarding_header_is_400_and_not_forwarded() -> None:
    """llhttp refuses obs-fold (RFC 9112 §5.2): a continuation line could hide a second
    value from the server that the origin would read."""
    async with recorded(Server()) as (t, recorder):
        request = get("/", t.host, "X-Forwarded-For: 1.2.3.4", " evil.example")
        answer = await read_all(t.port, request)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert recorder.received == b""


async def test_a_trusted_proxy_keeps_its_headers_and_the_peer_is_appended() -> None:
    server = Server(trust_forwarded=["127.0.0.0/8"])
    async with recorded(server) as (t, recorder):
        await exchange(
            t.port,
            get(
                "/",
                t.host,
                "X-Forwarded-For: 203.0.113.7",
                "X-Forwarded-Proto: https",
                "X-Forwarded-Host: public.example",
                "Forwarded: for=203.0.113.7;proto=https",
            ),
        )
        head = recorder.requests[0]
        assert values(head, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
        assert values(head, "x-forwarded-proto") == ["https"]
        assert values(head, "x-forwarded-host") == ["public.example"]
        assert values(head, "forwarded") == ["for=203.0.113.7;proto=https"]


async def test_a_trusted_proxy_without_headers_gets_the_servers_own() -> None:
    server = Server(trust_forwarded=["127.0.0.1/32"])
    async with recorded(server) as (t, recorder):
        await exchange(t.port, get("/", t.host, "X-Forwarded-Proto: https"))
        head = recorder.requests[0]
        assert values(head, "x-forwarded-for") == ["127.0.0.1"]
        assert values(head, "x-forwarded-proto") == ["https"]
        assert values(head, "x-forwarded-host") == [t.host]


async def test_a_peer_outside_the_trusted_networks_is_not_trusted() -> None:
    server = Server(trust_forwarded=["10.0.0.0/8", "::1/128"])
    async with recorded(server) as (t, recorder):
        await exchange(t.port, get("/", t.host, "X-Forwarded-For: 10.1.1.1"))
        assert values(recorder.requests[0], "x-forwarded-for") == ["127.0.0.1"]


async def test_forwarded_headers_off_forwards_the_head_untouched() -> None:
    async with recorded(Server(forwarded_headers=False)) as (t, recorder):
        request = get("/", t.host, *SPOOFED, "Via: 1.0 x")
        await exchange(t.port, request)
        assert recorder.requests[0] == request


def test_peer_trusted_reads_ipv4_mapped_addresses() -> None:
    import ipaddress

    networks = (ipaddress.ip_network("192.0.2.0/24"),)
    assert peer_trusted("::ffff:192.0.2.9", networks)
    assert peer_trusted("192.0.2.1", networks)
    assert not peer_trusted("192.0.3.1", networks)
    assert not peer_trusted("-", networks)
    assert not peer_trusted("192.0.2.1", ())


# -- loop detection ----------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_a_client_forwarding_to_the_server_itself_gets_508(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = Server()
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    host = f"loop.test:{port}"
    server.add_host(host, "loop-secret-id")
    # An explicit local address: the client's own default-target check does not apply.
    client = Client(
        f"127.0.0.1:{port}",
        "loop-secret-id",
        local_addr=f"127.0.0.1:{port}",
        backoff=ExponentialBackoff(initial=0.05, maximum=0.2),
    )
    task = asyncio.ensure_future(client.start())
    try:
        await client.wait_connected(timeout=10)
        answer = await read_all(port, get("/", host, "Connection: close"))
        assert answer.startswith(b"HTTP/1.1 508 Loop Detected\r\n")
        assert answer.endswith(b"\r\n\r\n" + LOOP_MESSAGE.encode() + b"\n")
        baseline = open_fds()
        for index in range(20):
            again = await read_all(port, get(f"/{index}", host, "Connection: close"))
            assert b" 508 " in again.split(b"\r\n", 1)[0]
        async with connect(port) as (reader, writer):  # keep-alive: every answer is 508
            for index in range(5):
                writer.write(get(f"/k{index}", host))
                assert (await read_response(reader)).status == 508

        async def settled() -> None:
            while open_fds() > baseline + 4:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(settled(), 10)  # no descriptor left behind per request
        assert server.in_flight == 0
    finally:
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)
        await server.close(grace=1)
    reports = [r.getMessage() for r in caplog.records if "come back" in r.getMessage()]
    assert len(reports) == 1
    assert "loop-secret-id" not in "\n".join(r.getMessage() for r in caplog.records)
    assert re.search(r'"loop\.test:\d+"', reports[0])
