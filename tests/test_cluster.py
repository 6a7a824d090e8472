"""The pieces of ``--workers`` in one process, on both loops: the ownership table, a
worker's view of it over its channel, handing a connection over a Unix socket, and two
servers handing public connections to each other."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct

import aiohttp
import pytest
from test_tunnel_http import connect, get, read_response
from tunnel_helpers import Tunnel, raw_request

from ytun import MemoryRegistry, Server
from ytun.cluster import (
    Ownership,
    OwnershipTable,
    ParentOwnership,
    WorkerPeers,
    listen_shared,
    reserve_port,
    sharing,
)
from ytun.cluster.channel import Channel
from ytun.cluster.handoff import CHUNK, MAX_CARRIED, HandOffReceiver, HandOffSender, socket_path
from ytun.tunnel import koding


def test_the_table_grants_a_key_to_the_first_claimer_until_released():
    table = OwnershipTable()
    assert table.claim("k", "0") == "0"
    assert table.claim("k", "1") == "0"  # held: the claimer learns by whom
    assert table.claim("k", "0") == "0"  # claiming again what one holds is granted
    assert not table.release("k", "1")  # only the holder releases
    assert table.release("k", "0")
    assert table.claim("k", "1") == "1"


def test_a_gone_node_holds_nothing():
    table = OwnershipTable()
    table.claim("a", "0")
    table.claim("b", "1")
    table.claim("c", "0")
    assert sorted(table.drop("0")) == ["a", "c"]
    assert dict(table.items()) == {"b": "1"}


async def test_a_worker_claims_through_its_channel_and_hears_every_change():
    """A parent stand-in: the table, answering claims and announcing holders."""
    ours, theirs = socket.socketpair()
    table = OwnershipTable()
    announced: list[dict] = []
    parent: Channel

    def on_parent(message: dict) -> None:
        if message["t"] == "claim":
            holder = table.claim(message["key"], "0")
            parent.send(
                {"t": "claimed", "n": message["n"], "key": message["key"], "ok": holder == "0"}
            )
        elif message["t"] == "release" and table.release(message["key"], "0"):
            announced.append(message)

    parent = Channel(theirs, on_parent, lambda: None)
    gone = asyncio.Event()
    worker: ParentOwnership
    channel = Channel(ours, lambda message: worker.received(message), gone.set)
    worker = ParentOwnership("0", channel)
    await parent.start()
    await channel.start()

    assert await worker.claim("k")
    assert worker.holder("k") == "0"
    table.claim("other", "1")
    assert not await worker.claim("other")
    parent.send({"t": "holder", "key": "other", "node": "1"})
    worker.release("k")
    assert worker.holder("k") is None
    for _ in range(100):
        if worker.holder("other") == "1" and announced:
            break
        await asyncio.sleep(0.01)
    assert worker.holder("other") == "1"
    assert announced == [{"t": "release", "key": "k"}]

    pending = asyncio.ensure_future(worker.claim("late"))
    parent.close()  # the parent dies before it answers
    await asyncio.wait_for(gone.wait(), 5)
    worker.parent_gone()
    assert await asyncio.wait_for(pending, 5) is False
    assert await worker.claim("after") is False
    channel.close()


class _Held(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


async def _accepted_pair() -> tuple[socket.socket, asyncio.BaseTransport]:
    """A loopback connection: the client's socket, and the server end as a transport."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    accepted.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(_Held, accepted)
    return client, transport


@pytest.mark.parametrize("size", [0, 1000, 3 * CHUNK + 17])
async def test_a_connection_moves_with_its_bytes_and_stays_open(tmp_path, size):
    adopted: asyncio.Queue[tuple[socket.socket, str, bytes]] = asyncio.Queue()
    receiver = HandOffReceiver(str(tmp_path), "1", lambda *args: adopted.put_nowait(args))
    receiver.start()
    sender = HandOffSender(str(tmp_path))
    client, transport = await _accepted_pair()
    data = os.urandom(size)
    assert sender.send("1", "http", transport, data)
    transport.abort()  # the sender's copy goes; the connection does not
    conn, kind, carried = await asyncio.wait_for(adopted.get(), 5)
    assert (kind, carried) == ("http", data)
    assert (sender.sent, receiver.adopted) == (1, 1)

    loop = asyncio.get_running_loop()
    client.settimeout(5)
    await loop.sock_sendall(conn, b"from the new worker")
    assert await asyncio.to_thread(client.recv, 100) == b"from the new worker"
    client.sendall(b"to the new worker")
    assert await asyncio.wait_for(loop.sock_recv(conn, 100), 5) == b"to the new worker"
    conn.close()
    client.close()
    sender.close()
    receiver.close()


async def test_a_worker_that_is_not_listening_gets_nothing(tmp_path):
    sender = HandOffSender(str(tmp_path))
    client, transport = await _accepted_pair()
    assert not sender.send("7", "tcp", transport, b"")
    assert not sender.send("7", "tcp", transport, os.urandom(MAX_CARRIED + 1))
    transport.close()
    client.close()


@pytest.mark.parametrize(
    "message",
    [
        b"garbage",
        b"D" + b"a continuation with nothing begun",
        struct.pack("!cBI", b"H", 9, 0),  # an unknown kind
        struct.pack("!cBI", b"H", 0, MAX_CARRIED + 1),  # more than may be carried
    ],
)
async def test_bad_hand_off_messages_drop_that_sender_only(tmp_path, message):
    adopted: list[object] = []
    receiver = HandOffReceiver(str(tmp_path), "1", lambda *args: adopted.append(args))
    receiver.start()
    loop = asyncio.get_running_loop()
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bad.connect(socket_path(str(tmp_path), "1"))
    client, transport = await _accepted_pair()
    fd = transport.get_extra_info("socket").fileno()
    socket.send_fds(bad, [message], [fd] if message.startswith(b"H") else [])
    await loop.run_in_executor(None, bad.recv, 1)  # returns once the receiver closed it
    bad.close()
    assert adopted == []

    sender = HandOffSender(str(tmp_path))  # a good sender still gets through
    assert sender.send("1", "tcp", transport, b"")
    for _ in range(100):
        if adopted:
            break
        await asyncio.sleep(0.01)
    assert len(adopted) == 1
    adopted[0][0].close()  # type: ignore[index]
    transport.abort()
    client.close()
    sender.close()
    receiver.close()


# -- two servers in one process, one holding the client ---------------------------------


class _SharedTable(Ownership):
    """Both servers' view of one table, as the parent's announcements keep it."""

    def __init__(self, table: OwnershipTable, node: str) -> None:
        self.table = table
        self.node = node

    async def claim(self, key: str) -> bool:
        return self.table.claim(key, self.node) == self.node

    def release(self, key: str) -> None:
        self.table.release(key, self.node)

    def holder(self, key: str) -> str | None:
        return dict(self.table.items()).get(key)


def two_servers(directory: str):
    """Two servers of one table, handing connections to each other through ``directory``."""
    table = OwnershipTable()
    senders, receivers, servers = [], [], []
    salt = os.urandom(32)  # one salt, as the workers of one server share: one key per client
    for node in ("0", "1"):
        sender = HandOffSender(directory)
        server = Server(
            registry=MemoryRegistry(salt=salt),
            peers=WorkerPeers(_SharedTable(table, node), sender),
            via_mark=b"ytun-t",
        )
        receiver = HandOffReceiver(directory, node, server.adopt)
        receiver.start()
        senders.append(sender)
        receivers.append(receiver)
        servers.append(server)
    return table, senders, receivers, servers


async def test_requests_reach_the_client_through_the_server_that_does_not_hold_it(tmp_path):
    """Server 1 holds the client; everything is sent to server 0, which hands each
    connection over: a plain request, a body, a WebSocket, a second CONNECT."""
    table, senders, receivers, servers = two_servers(str(tmp_path))
    listener = await servers[0].serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with Tunnel(server=servers[1]) as tunnel:
        servers[0].add_host(tunnel.host, tunnel.identifier)
        assert dict(table.items()) == {servers[1].registry.key_for(tunnel.identifier): "1"}
        url = f"http://127.0.0.1:{port}"
        headers = {"Host": tunnel.host}
        body = os.urandom(200_000)
        # A connection per request: each one lands on server 0 and is handed over.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"{url}/?echo=moved", headers=headers) as answer:
                assert (answer.status, await answer.text()) == (200, "moved")
            async with session.post(f"{url}/upload", data=body, headers=headers) as answer:
                expected = f"{len(body)} {hashlib.sha256(body).hexdigest()}"
                assert (answer.status, await answer.text()) == (200, expected)
            async with session.ws_connect(f"{url}/ws", headers=headers) as ws:
                await ws.send_str("through a hand-off")
                assert (await ws.receive(timeout=5)).data == "through a hand-off"
        second = koding.connect_request(tunnel.host, tunnel.identifier)
        answer = await raw_request(port, second)
        assert answer.startswith(b"HTTP/1.1 502") and b"control conn already exist" in answer
        assert servers[1].is_connected(tunnel.identifier)
        assert senders[0].sent == receivers[1].adopted >= 4
        assert senders[1].sent == receivers[0].adopted == 0
    assert dict(table.items()) == {}  # the client left: released
    for sender, receiver in zip(senders, receivers, strict=True):
        sender.close()
        receiver.close()
    await servers[0].close(grace=0)


# -- sharing the port -------------------------------------------------------------------


def test_the_port_is_shared_by_reuse_port_unless_told_to_inherit():
    assert sharing({}) == "reuse_port"
    assert sharing({"YTUN_SHARE_LISTENER": "inherit"}) == "inherit"


def test_a_reserved_port_takes_workers_and_nobody_else():
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved[0].getsockname()[1]
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))  # another program: refused
    with socket.socket() as worker:
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, _ = worker.accept()  # the worker gets it, never the reservation
            conn.close()
    for sock in reserved:
        sock.close()


def test_a_taken_port_is_named():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen_shared("127.0.0.1", port)


async def test_a_keep_alive_connection_moves_as_often_as_its_requests_need(tmp_path):
    """Pipelined requests in one write, for a client of server 1, one of server 0, one of
    server 1 again: the connection goes 0 -> 1 -> 0 -> 1, carrying the requests not yet
    answered, and the answers come back in order."""
    table, senders, receivers, servers = two_servers(str(tmp_path))
    listener = await servers[0].serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with Tunnel(server=servers[1]) as far, Tunnel(server=servers[0]) as near:
        servers[0].add_host(far.host, far.identifier)
        servers[1].add_host(near.host, near.identifier)
        key_for = servers[0].registry.key_for
        assert dict(table.items()) == {key_for(far.identifier): "1", key_for(near.identifier): "0"}
        async with connect(port) as (reader, writer):
            writer.write(
                get("/?echo=one", far.host)
                + get("/?echo=two", near.host)
                + get("/?echo=three", far.host)
            )
            for text in ("one", "two", "three"):
                answer = await read_response(reader)
                assert (answer.status, answer.body) == (200, text.encode())
        assert (senders[0].sent, senders[1].sent) == (2, 1)
        assert (receivers[1].adopted, receivers[0].adopted) == (2, 1)
    for sender, receiver in zip(senders, receivers, strict=True):
        sender.close()
        receiver.close()
    await servers[0].close(grace=0)
