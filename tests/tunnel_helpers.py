"""A tunnel on loopback for tests: an origin app, a ytun Server and a ytun Client."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable

from aiohttp import WSMsgType, web

from ytun import Client, Server
from ytun.tunnel.client import ExponentialBackoff


def origin_app(latency: Callable[[], float] | None = None) -> web.Application:
    """The local service: ``/?echo=X`` answers X; ``/bytes?n=N`` N bytes; ``/upload`` the
    SHA-256 of the body; ``/ws`` echoes WebSocket messages; ``/close-framed`` answers
    without Content-Length and closes."""

    async def echo(request: web.Request) -> web.StreamResponse:
        if latency is not None:
            await asyncio.sleep(latency())
        response = web.Response(text=request.query.get("echo", ""))
        response.headers["X-Seen-Forwarded-For"] = request.headers.get("X-Forwarded-For", "")
        response.headers["X-Seen-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", "")
        return response

    async def many_bytes(request: web.Request) -> web.StreamResponse:
        size = int(request.query["n"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        block = b"\x5a" * 65536
        while size:
            piece = block[: min(size, len(block))]
            await response.write(piece)
            size -= len(piece)
        return response

    async def upload(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
        return web.Response(text=f"{total} {digest.hexdigest()}")

    async def websocket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                if latency is not None:
                    await asyncio.sleep(latency())
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/", echo)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/bytes", many_bytes)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", websocket)
    return app


class Tunnel:
    """Origin + Server + Client on 127.0.0.1. ``host`` is the virtual host to send."""

    def __init__(
        self,
        *,
        app: web.Application | None = None,
        server: Server | None = None,
        client_kwargs: dict | None = None,
        server_ssl=None,
        client_ssl=None,
    ) -> None:
        self.app = app or origin_app()
        self.server = server or Server()
        self.identifier = secrets.token_hex(8)
        self._client_kwargs = client_kwargs or {}
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl

    async def __aenter__(self) -> Tunnel:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.origin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"127.0.0.1:{self.origin_port}"
        self.listener = await self.server.serve("127.0.0.1", 0, ssl=self._server_ssl)
        self.port = self.listener.sockets[0].getsockname()[1]
        self.host = f"app.test:{self.port}"
        self.server.add_host(self.host, self.identifier)
        scheme = "https" if self._server_ssl else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        kwargs = {
            "local_addr": self.origin,
            "backoff": ExponentialBackoff(initial=0.05, maximum=0.2),
        }
        kwargs.update(self._client_kwargs)
        self.client = Client(
            f"127.0.0.1:{self.port}", self.identifier, ssl=self._client_ssl, **kwargs
        )
        self.client_task = asyncio.ensure_future(self.client.start())
        await self.client.wait_connected(timeout=10)
        await self.wait_server_sees_client()
        return self

    async def wait_server_sees_client(self, timeout: float = 5) -> None:
        async def poll() -> None:
            while not self.server.is_connected(self.identifier):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(poll(), timeout)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close(grace=1)
        await asyncio.wait_for(self.client_task, 10)
        await self.server.close(grace=1)
        await self._runner.cleanup()


async def raw_request(
    port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 10
) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything read until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
