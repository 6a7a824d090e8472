"""The route methods of ``ytun.Server`` (what the admin API calls) through real tunnels on
loopback: identifiers made for new hosts, random and chosen subdomains of ``domain``,
wildcard routing below a subdomain, the 502 answer for an unknown subdomain, deleting a
host (and disconnecting a client left without routes), and a restart on a SQLite state
file that routes a reconnecting client again with no action."""

from __future__ import annotations

import asyncio
import pathlib
import socket
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from tunnel_helpers import Tunnel, origin_app

from ytun import Client, ClientState, HostTakenError, InvalidHostError, Server, SqliteRegistry
from ytun.registry import Route
from ytun.tunnel.client import ExponentialBackoff

TIMEOUT = aiohttp.ClientTimeout(total=20)
DOMAIN = "tunnel.test"


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def get(port: int, host: str, path: str = "/?echo=hi") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}) as response,
    ):
        return response.status, await response.text()


# -- hosts and identifiers ---------------------------------------------------------------


def test_add_host_makes_a_fresh_identifier_when_none_is_given() -> None:
    server = Server()
    first = server.add_host("a.test")
    second = server.add_host("b.test")
    assert first != second and len(first) >= 40  # token_urlsafe(32): 43 characters
    assert server.registry.owner(first) == server.lookup_host("a.test")
    assert server.add_host("c.test", "chosen") == "chosen"


def test_add_host_without_replace_refuses_another_owner() -> None:
    server = Server()
    identifier = server.add_host("a.test")
    with pytest.raises(HostTakenError):
        server.add_host("A.test", replace=False)
    assert server.add_host("a.test", identifier, replace=False) == identifier
    with pytest.raises(InvalidHostError):
        server.add_host("http://a.test/")


def test_add_subdomain_hands_out_free_random_names_under_the_domain() -> None:
    server = Server(domain="Tunnel.TEST")
    made = [server.add_subdomain() for _ in range(50)]
    hosts = [host for host, _ in made]
    assert len(set(hosts)) == 50
    for host, identifier in made:
        label, _, domain = host.partition(".")
        assert domain == DOMAIN and len(label) == 8
        assert server.lookup_host(host) == server.registry.owner(identifier)
    assert [route.name for route in server.hosts()] == hosts


def test_add_subdomain_with_a_label() -> None:
    server = Server(domain=DOMAIN)
    host, identifier = server.add_subdomain("Foo")
    assert host == f"foo.{DOMAIN}"
    assert server.hosts() == [Route("host", host, host)]
    with pytest.raises(HostTakenError):
        server.add_subdomain("foo")
    with pytest.raises(InvalidHostError):
        server.add_subdomain("foo.bar")
    assert server.lookup_host(host) == server.registry.owner(identifier)


def test_add_subdomain_needs_a_domain() -> None:
    with pytest.raises(InvalidHostError, match="domain"):
        Server().add_subdomain()


def test_a_bad_domain_is_refused() -> None:
    with pytest.raises(InvalidHostError):
        Server(domain="http://tunnel.test")


def test_routes_are_listed_without_secrets() -> None:
    server = Server()
    identifier = server.add_host("a.test")
    shown = repr(server.hosts() + server.tcp_routes())
    assert "a.test" in shown
    assert identifier not in shown and server.registry.key_for(identifier) not in shown


# -- through a tunnel --------------------------------------------------------------------


class SubdomainClient:
    """An origin and a Client connected with the identifier ``add_subdomain`` gave."""

    def __init__(self, server: Server, port: int, identifier: str) -> None:
        self.server, self.port, self.identifier = server, port, identifier

    async def __aenter__(self) -> SubdomainClient:
        self._runner = web.AppRunner(origin_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        origin = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.client = Client(
            f"127.0.0.1:{self.port}",
            self.identifier,
            local_addr=f"127.0.0.1:{origin}",
            backoff=ExponentialBackoff(initial=0.05, maximum=0.2),
        )
        self.task = asyncio.ensure_future(self.client.start())
        await self.client.wait_connected(timeout=10)
        await wait_until(lambda: self.server.is_connected(self.identifier))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close(grace=1)
        await asyncio.wait_for(self.task, 10)
        await self._runner.cleanup()


async def test_a_subdomain_and_the_names_below_it_route_to_its_client() -> None:
    server = Server(domain=DOMAIN)
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    host, identifier = server.add_subdomain()
    try:
        async with SubdomainClient(server, port, identifier):
            for asked in (host, f"{host}:{port}", f"api.{host}:{port}", f"a.b.{host.upper()}"):
                assert await get(port, asked) == (200, "hi"), asked
            # An unknown subdomain: the original's 502 body, with the name as asked.
            assert await get(port, f"nobody.{DOMAIN}:{port}") == (
                502,
                f'no virtual host available for "nobody.{DOMAIN}:{port}"\n',
            )
            assert await get(port, f"api.nobody.{DOMAIN}") == (
                502,
                f'no virtual host available for "api.nobody.{DOMAIN}"\n',
            )
    finally:
        await server.close(grace=1)


async def test_without_a_domain_names_below_a_host_are_unknown() -> None:
    async with Tunnel() as t:
        t.server.add_host(f"foo.{DOMAIN}", t.identifier)
        assert await get(t.port, f"foo.{DOMAIN}") == (200, "hi")
        status, body = await get(t.port, f"api.foo.{DOMAIN}")
        assert (status, body) == (502, f'no virtual host available for "api.foo.{DOMAIN}"\n')


async def test_deleting_a_host_stops_its_routing_and_keeps_a_client_with_other_routes() -> None:
    async with Tunnel() as t:
        t.server.add_host("second.test", t.identifier)
        assert await get(t.port, "second.test") == (200, "hi")
        assert t.server.delete_host("second.test") is True
        assert t.server.delete_host("second.test") is False
        assert await get(t.port, "second.test") == (
            502,
            'no virtual host available for "second.test"\n',
        )
        await asyncio.sleep(0.1)
        assert t.server.is_connected(t.identifier)  # app.test:PORT is still its own
        assert await get(t.port, t.host) == (200, "hi")


async def test_deleting_the_last_host_of_a_client_disconnects_it() -> None:
    changes: list = []
    server = Server(on_state_change=changes.append)
    async with Tunnel(server=server, client_kwargs={"exit_on_refused": True}) as t:
        assert t.server.delete_host(t.host) is True
        await wait_until(lambda: not t.server.is_connected(t.identifier))
        assert server.clients == []
        # It may not come back: its identifier owns nothing now.
        await asyncio.sleep(0.3)
        assert not t.server.is_connected(t.identifier)
        assert any("last route" in str(change.error) for change in changes)
        assert all(t.identifier not in repr(change) for change in changes)


async def test_deleting_the_last_tcp_route_of_a_client_disconnects_it() -> None:
    async with Tunnel() as t:
        _, port = await t.server.add_addr("127.0.0.1:0", t.identifier)
        t.server.delete_host(t.host)
        await asyncio.sleep(0.1)
        assert t.server.is_connected(t.identifier)  # the TCP route is still its own
        t.server.delete_addr(port)
        await wait_until(lambda: not t.server.is_connected(t.identifier))


# -- a restart on the state file ---------------------------------------------------------


async def test_a_restarted_server_routes_the_reconnecting_client_again(
    tmp_path: pathlib.Path,
) -> None:
    """Server 1 learns the host; server 2 (same port, same state file, no add_host) routes
    the same client, which reconnected by itself."""
    state = tmp_path / "ytun.db"
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = Server(registry=SqliteRegistry(state), domain=DOMAIN)
    await server.serve(sock=sock)
    host, identifier = server.add_subdomain("app")
    try:
        async with SubdomainClient(server, port, identifier) as tunnel:
            assert await get(port, f"{host}:{port}") == (200, "hi")
            await server.close(grace=0)
            server.registry.close()
            await wait_until(lambda: tunnel.client.state is not ClientState.CONNECTED)
            server = Server(registry=SqliteRegistry(state), domain=DOMAIN)
            await server.serve("127.0.0.1", port)
            tunnel.server = server
            await tunnel.client.wait_connected(timeout=10)
            await wait_until(lambda: server.is_connected(identifier))
            assert await get(port, f"api.{host}:{port}", "/?echo=again") == (200, "again")
    finally:
        await server.close(grace=0)
        server.registry.close()
