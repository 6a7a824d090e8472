"""The admin API in process, over real loopback connections on both loops: every
endpoint, status and error (bad JSON, bad names, unknown fields, wrong types, oversized
bodies, duplicate hosts and ports, unknown paths and methods), the bearer token, and
hosts registered through the API serving a real tunnel client."""

from __future__ import annotations

import asyncio
import errno
import json
import re
import socket

import pytest
from test_server_routes import get, wait_until
from tunnel_helpers import Tunnel

from ytun import Client, Server
from ytun.control.admin import MAX_BODY_SIZE, AdminApi
from ytun.errors import RegistryError, UnsafeAdminListenerError
from ytun.registry import MemoryRegistry
from ytun.tunnel.client import ExponentialBackoff

DOMAIN = "tunnel.test"
TOKEN = "admin-T0KEN-for-tests-7e1b"


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        self.body = body
        self.json = json.loads(body) if body else None

    @property
    def error(self) -> str:
        assert isinstance(self.json, dict) and set(self.json) == {"error"}, self.json
        return self.json["error"]


async def call(
    port: int,
    method: str,
    path: str,
    body: object = None,
    *,
    token: str | None = None,
    raw_body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    data = raw_body if raw_body is not None else b"" if body is None else json.dumps(body).encode()
    fields = {"Host": "admin", "Connection": "close", "Content-Length": str(len(data))}
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    fields.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + data)
        return Answer(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()


class Admin:
    """A Server (not listening publicly unless asked) with its admin API on loopback."""

    def __init__(self, server: Server, api: AdminApi, listener: asyncio.AbstractServer) -> None:
        self.server = server
        self.api = api
        self.listener = listener
        self.port = listener.sockets[0].getsockname()[1]
        self.token = api.token

    async def __call__(self, method: str, path: str, body: object = None, **kwargs) -> Answer:
        kwargs.setdefault("token", self.token)
        return await call(self.port, method, path, body, **kwargs)

    async def close(self) -> None:
        self.listener.close()
        await self.server.close(grace=0)


async def start_admin(
    server: Server | None = None, *, token: str | None = TOKEN, public_port: int = 8000
) -> Admin:
    server = server or Server(domain=DOMAIN)
    api = AdminApi(server, token=token, public_port=public_port, tcp_host="127.0.0.1")
    return Admin(server, api, await api.serve("127.0.0.1", 0))


# -- hosts -------------------------------------------------------------------------------


async def test_post_hosts_with_a_host_makes_a_fresh_identifier() -> None:
    admin = await start_admin()
    answer = await admin("POST", "/hosts", {"host": "Foo.Example.com"})
    listed = await admin("GET", "/hosts")
    await admin.close()
    assert answer.status == 201
    assert answer.json["host"] == "foo.example.com"
    assert answer.json["url"] == "http://foo.example.com:8000/"
    assert answer.headers["location"] == "/hosts/foo.example.com"
    identifier = answer.json["identifier"]
    assert len(identifier) >= 43  # secrets.token_urlsafe(32)
    assert admin.server.registry.owner(identifier) == admin.server.lookup_host("foo.example.com")
    assert listed.status == 200
    assert listed.json == {
        "hosts": [
            {
                "host": "foo.example.com",
                "url": "http://foo.example.com:8000/",
                "client": "foo.example.com",
                "connected": False,
            }
        ]
    }
    assert identifier.encode() not in listed.body


async def test_a_host_with_its_own_port_keeps_it_in_the_url() -> None:
    admin = await start_admin(public_port=80)
    with_port = await admin("POST", "/hosts", {"host": "a.test:9000"})
    default_port = await admin("POST", "/hosts", {"host": "b.test"})
    await admin.close()
    assert with_port.json["url"] == "http://a.test:9000/"
    assert default_port.json["url"] == "http://b.test/"


async def test_post_hosts_with_a_subdomain_or_nothing_uses_the_domain() -> None:
    admin = await start_admin()
    chosen = await admin("POST", "/hosts", {"subdomain": "Foo"})
    random = await admin("POST", "/hosts", {})
    empty_body = await admin("POST", "/hosts", raw_body=b"")
    await admin.close()
    assert chosen.status == 201 and chosen.json["host"] == "foo.tunnel.test"
    for answer in (random, empty_body):
        assert answer.status == 201
        assert re.fullmatch(r"[a-z][a-z0-9]{7}\.tunnel\.test", answer.json["host"])
    assert random.json["identifier"] != empty_body.json["identifier"]


async def test_subdomains_without_a_domain_are_refused_with_the_reason() -> None:
    admin = await start_admin(Server())
    for body in ({}, {"subdomain": "foo"}):
        answer = await admin("POST", "/hosts", body)
        assert answer.status == 400
        assert "--domain" in answer.error
    await admin.close()


async def test_a_taken_host_or_subdomain_is_409() -> None:
    admin = await start_admin()
    assert (await admin("POST", "/hosts", {"host": "a.test"})).status == 201
    again = await admin("POST", "/hosts", {"host": "A.TEST"})
    assert (await admin("POST", "/hosts", {"subdomain": "x"})).status == 201
    sub_again = await admin("POST", "/hosts", {"subdomain": "x"})
    full_again = await admin("POST", "/hosts", {"host": "x.tunnel.test"})
    await admin.close()
    for answer in (again, sub_again, full_again):
        assert answer.status == 409
        assert "taken" in answer.error


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"host": "http://a.test"}, "scheme"),
        ({"host": "a.test/path"}, "path"),
        ({"host": "user@a.test"}, "userinfo"),
        ({"host": "a.test?x"}, "query"),
        ({"host": "-a.test"}, "starts or ends with '-'"),
        ({"host": "a..test"}, "empty"),
        ({"host": "a.test:0"}, "port"),
        ({"host": "a.test:99999"}, "port"),
        ({"host": "[::1]:80"}, "IPv6"),
        ({"host": ""}, "empty"),
        ({"host": "a b.test"}, "whitespace"),
        ({"subdomain": "a.b"}, "single label"),
        ({"subdomain": "-x"}, "starts or ends with '-'"),
        ({"subdomain": "é"}, "ASCII"),
    ],
)
async def test_bad_names_are_400_with_the_reason(body: dict, reason: str) -> None:
    admin = await start_admin()
    answer = await admin("POST", "/hosts", body)
    await admin.close()
    assert answer.status == 400
    assert reason.lower() in answer.error.lower()
    assert not admin.server.hosts()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "JSON object"),
        (b'"a.test"', "JSON object"),
        (b'{"hosts": "a.test"}', "unknown field 'hosts'"),
        (b'{"host": 5}', "host must be a string"),
        (b'{"subdomain": null}', "subdomain must be a string"),
        (b'{"host": "a.test", "subdomain": "a"}', "not both"),
    ],
)
async def test_bad_bodies_are_400_with_the_reason(raw: bytes, reason: str) -> None:
    admin = await start_admin()
    answer = await admin("POST", "/hosts", raw_body=raw)
    await admin.close()
    assert answer.status == 400
    assert reason in answer.error
    assert not admin.server.hosts()


async def test_an_oversized_body_is_413() -> None:
    admin = await start_admin()
    padding = "x" * MAX_BODY_SIZE
    answer = await admin("POST", "/hosts", {"host": "a.test", "pad": padding})
    await admin.close()
    assert answer.status == 413
    assert not admin.server.hosts()


async def test_delete_hosts_answers_204_then_404() -> None:
    admin = await start_admin()
    await admin("POST", "/hosts", {"host": "a.test:8000"})
    deleted = await admin("DELETE", "/hosts/A.test%3A8000")
    again = await admin("DELETE", "/hosts/a.test:8000")
    bad = await admin("DELETE", "/hosts/not%20a%20host")
    await admin.close()
    assert (deleted.status, deleted.body) == (204, b"")
    assert again.status == 404 and "a.test:8000" in again.error
    assert bad.status == 404
    assert not admin.server.hosts()


async def test_unknown_paths_and_methods() -> None:
    admin = await start_admin()
    nowhere = await admin("GET", "/nowhere")
    wrong_method = await admin("PUT", "/hosts")
    delete_all = await admin("DELETE", "/hosts")
    await admin.close()
    assert nowhere.status == 404 and "/nowhere" in nowhere.error
    assert wrong_method.status == 405
    assert wrong_method.headers["allow"] == "GET, POST"
    assert delete_all.status == 405


# -- the token ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer "],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/hosts"), ("POST", "/hosts"), ("GET", "/x")])
async def test_a_missing_or_wrong_token_is_401(
    authorization: str | None, method: str, path: str
) -> None:
    admin = await start_admin()
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = await admin(method, path, {"host": "a.test"}, token=None, headers=headers)
    await admin.close()
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in answer.body.decode()
    assert "token" in answer.error
    assert not admin.server.hosts()


async def test_the_right_token_in_any_case_of_the_scheme_is_let_through() -> None:
    admin = await start_admin()
    answer = await admin("GET", "/hosts", token=None, headers={"Authorization": f"bearer {TOKEN}"})
    await admin.close()
    assert answer.status == 200


async def test_without_a_token_the_api_is_open_on_loopback_only() -> None:
    admin = await start_admin(token=None)
    answer = await admin("GET", "/hosts", headers={"Authorization": "Bearer anything"})
    await admin.close()
    assert answer.status == 200
    api = AdminApi(Server())
    for host in ("0.0.0.0", "", "192.0.2.1", "example.com"):
        with pytest.raises(UnsafeAdminListenerError, match="token"):
            await api.serve(host, 0)
    for host in ("127.0.0.1", "::1", "localhost"):
        try:
            listener = await api.serve(host, 0)
        except OSError as exc:  # a machine without IPv6 on loopback
            assert exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            continue
        listener.close()
    with pytest.raises(ValueError, match="empty"):
        AdminApi(Server(), token="")


async def test_routes_added_by_a_caller_share_the_guard() -> None:
    server = Server()
    api = AdminApi(server, token=TOKEN)

    async def healthy(request):
        from ytun.control.web import json_response

        return json_response(200, {"ok": True})

    api.router.add("GET", "/healthz", healthy, public=True)
    api.router.add("GET", "/private", healthy)
    admin = Admin(server, api, await api.serve("127.0.0.1", 0))
    public = await admin("GET", "/healthz", token=None)
    private = await admin("GET", "/private", token=None)
    await admin.close()
    assert public.status == 200 and private.status == 401


# -- storing before answering ------------------------------------------------------------


class UnreachableStore(MemoryRegistry):
    """A registry whose backing store (a remote one, say) fails to take the changes."""

    async def flush(self) -> None:
        raise RegistryError("the store at redis://… did not answer")


async def test_a_change_that_cannot_be_stored_is_503_with_the_reason() -> None:
    admin = await start_admin(Server(registry=UnreachableStore()))
    answer = await admin("POST", "/hosts", {"host": "a.test"})
    await admin.close()
    assert answer.status == 503
    assert "could not be stored" in answer.error and "did not answer" in answer.error


# -- TCP routes --------------------------------------------------------------------------


async def test_tcp_routes_add_list_delete() -> None:
    admin = await start_admin()
    added = await admin("POST", "/tcp", {"port": 0})
    port = added.json["port"]
    listed = await admin("GET", "/tcp")
    again = await admin("POST", "/tcp", {"addr": f"127.0.0.1:{port}"})
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # it listens
    deleted = await admin("DELETE", f"/tcp/{port}")
    deleted_again = await admin("DELETE", f"/tcp/:{port}")
    listed_after = await admin("GET", "/tcp")
    await admin.close()
    assert added.status == 201
    assert added.json["addr"] == f"127.0.0.1:{port}" and port > 0
    assert len(added.json["identifier"]) >= 43
    assert added.headers["location"] == f"/tcp/{port}"
    assert listed.json == {
        "tcp": [{"route": f":{port}", "kind": "tcp", "client": f"tcp:{port}", "connected": False}]
    }
    assert added.json["identifier"].encode() not in listed.body
    assert again.status == 409 and "already tunnelled" in again.error
    assert deleted.status == 204
    assert deleted_again.status == 404
    assert listed_after.json == {"tcp": []}


async def test_local_ip_routes_are_listed_and_deleted_by_their_address() -> None:
    admin = await start_admin()
    server = admin.server
    await server.add_addr("127.0.0.1:0", "ident-v4", ip="127.0.0.5", listen=False)
    await server.add_addr("127.0.0.1:0", "ident-v6", ip="0:0::1", listen=False)
    listed = await admin("GET", "/tcp")
    deleted_v4 = await admin("DELETE", "/tcp/127.0.0.5")
    deleted_v6 = await admin("DELETE", "/tcp/[::1]")
    again = await admin("DELETE", "/tcp/::1")
    await admin.close()
    assert sorted((r["route"], r["kind"]) for r in listed.json["tcp"]) == [
        ("127.0.0.5", "tcp-ip"),
        ("::1", "tcp-ip"),
    ]
    assert (deleted_v4.status, deleted_v6.status, again.status) == (204, 204, 404)
    assert server.tcp_routes() == []


async def test_a_port_in_use_elsewhere_is_409() -> None:
    admin = await start_admin()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        answer = await admin("POST", "/tcp", {"addr": f"127.0.0.1:{port}"})
    await admin.close()
    assert answer.status == 409
    assert f"127.0.0.1:{port}" in answer.error
    assert not admin.server.tcp_routes()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "port"),
        ({"port": "2222"}, "port must be a whole number"),
        ({"port": True}, "port must be a whole number"),
        ({"port": 70000}, "1 to 65535"),
        ({"port": -1}, "1 to 65535"),
        ({"addr": "nowhere"}, "HOST:PORT"),
        ({"addr": "127.0.0.1:0"}, "HOST:PORT"),
        ({"addr": 2222}, "addr must be a string"),
        ({"port": 2222, "addr": ":2222"}, "one of them"),
        ({"ports": 2222}, "unknown field 'ports'"),
    ],
)
async def test_bad_tcp_bodies_are_400(body: dict, reason: str) -> None:
    admin = await start_admin()
    answer = await admin("POST", "/tcp", body)
    await admin.close()
    assert answer.status == 400
    assert reason in answer.error
    assert not admin.server.tcp_routes()


async def test_delete_tcp_of_an_unknown_route_is_404() -> None:
    admin = await start_admin()
    names = ("2222", ":1", "x", "a:b", "10.0.0.1", "[::2]")
    answers = [await admin("DELETE", f"/tcp/{name}") for name in names]
    await admin.close()
    assert [answer.status for answer in answers] == [404] * len(names)


# -- through real tunnels ----------------------------------------------------------------


async def test_a_host_registered_through_the_api_serves_a_real_client() -> None:
    server = Server(domain=DOMAIN)
    async with Tunnel(server=server) as tunnel:
        admin = Admin(
            server,
            api := AdminApi(server, token=TOKEN, public_port=tunnel.port),
            await api.serve("127.0.0.1", 0),
        )
        answer = await admin("POST", "/hosts", {"subdomain": "app"})
        assert answer.json["url"] == f"http://app.{DOMAIN}:{tunnel.port}/"
        client = Client(
            f"127.0.0.1:{tunnel.port}",
            answer.json["identifier"],
            local_addr=tunnel.origin,
            backoff=ExponentialBackoff(initial=0.05, maximum=0.2),
        )
        task = asyncio.ensure_future(client.start())
        await client.wait_connected(timeout=10)
        await wait_until(lambda: server.is_connected(answer.json["identifier"]))
        assert await get(tunnel.port, f"app.{DOMAIN}:{tunnel.port}", "/?echo=hi") == (200, "hi")
        hosts = (await admin("GET", "/hosts")).json["hosts"]
        assert {"host": f"app.{DOMAIN}", "connected": True} in [
            {"host": h["host"], "connected": h["connected"]} for h in hosts
        ]
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)
        admin.listener.close()


async def test_clients_shows_labels_peers_streams_and_bytes_never_identifiers() -> None:
    async with Tunnel() as tunnel:
        server = tunnel.server
        api = AdminApi(server, token=TOKEN)
        admin = Admin(server, api, await api.serve("127.0.0.1", 0))
        before = (await admin("GET", "/clients")).json["clients"]
        assert await get(tunnel.port, tunnel.host, "/bytes?n=100000") == (200, "Z" * 100000)
        answer = await admin("GET", "/clients")
        admin.listener.close()
    [client] = answer.json["clients"]
    assert client["label"] == tunnel.host
    assert re.fullmatch(r"127\.0\.0\.1:\d+", client["peer"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", client["connected_since"])
    assert isinstance(client["streams"], int)
    # the answer crossed the tunnel towards the server, the request away from it
    assert client["bytes_in"] >= before[0]["bytes_in"] + 100000
    assert client["bytes_out"] > before[0]["bytes_out"]
    assert tunnel.identifier not in answer.body.decode()
    assert server.registry.key_for(tunnel.identifier) not in answer.body.decode()


async def test_deleting_a_clients_last_host_disconnects_it() -> None:
    async with Tunnel(client_kwargs={"exit_on_refused": True}) as tunnel:
        server = tunnel.server
        api = AdminApi(server, token=TOKEN)
        admin = Admin(server, api, await api.serve("127.0.0.1", 0))
        assert len((await admin("GET", "/clients")).json["clients"]) == 1
        deleted = await admin("DELETE", f"/hosts/{tunnel.host}")
        await wait_until(lambda: not server.is_connected(tunnel.identifier))
        clients = (await admin("GET", "/clients")).json["clients"]
        status, _ = await get(tunnel.port, tunnel.host)
        admin.listener.close()
    assert deleted.status == 204
    assert clients == []
    assert status == 502


async def test_a_tcp_route_added_through_the_api_tunnels_to_a_real_client() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo: " + await reader.readline())
        await writer.drain()
        writer.close()

    local = await asyncio.start_server(echo, "127.0.0.1", 0)
    local_port = local.sockets[0].getsockname()[1]
    admin = await start_admin()
    public = await admin.server.serve("127.0.0.1", 0)
    public_port = public.sockets[0].getsockname()[1]
    added = (await admin("POST", "/tcp", {"port": 0})).json
    client = Client(
        f"127.0.0.1:{public_port}",
        added["identifier"],
        tcp_local={added["port"]: f"127.0.0.1:{local_port}"},
        backoff=ExponentialBackoff(initial=0.05, maximum=0.2),
    )
    task = asyncio.ensure_future(client.start())
    await client.wait_connected(timeout=10)
    await wait_until(lambda: admin.server.is_connected(added["identifier"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", added["port"])
    writer.write(b"hello\n")
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    listed = (await admin("GET", "/tcp")).json["tcp"]
    await client.close(grace=1)
    await asyncio.wait_for(task, 10)
    await admin.close()
    local.close()
    assert line == b"echo: hello\n"
    assert listed[0]["connected"] is True
