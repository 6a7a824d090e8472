"""A small web app for ``ytun demo``: it answers every request with a page about itself."""

from __future__ import annotations

import asyncio
import html

import httptools

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ytun demo</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Hello through the tunnel</h1>
<p>This page comes from a private web app on <code>{origin}</code>. You reached it through
<code>{host}</code>: the ytun server routed your request by its Host header to the ytun client,
over one yamux connection, and the client passed it to the app.</p>
<p>Request number {count} seen by the app.</p>
</body></html>
"""


class DemoApp(asyncio.Protocol):
    requests = 0

    def __init__(self, origin: str) -> None:
        self._origin = origin
        self._parser = httptools.HttpRequestParser(self)
        self._host = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self._host = value

    def on_message_complete(self) -> None:
        DemoApp.requests += 1
        body = PAGE.format(
            origin=self._origin,
            count=DemoApp.requests,
            host=html.escape(self._host.decode("latin-1")),
        ).encode()
        keep_alive = self._parser.should_keep_alive()
        self._transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + (b"" if keep_alive else b"Connection: close\r\n")
            + b"\r\n"
            + body
        )
        if not keep_alive:
            self._transport.close()  # type: ignore[union-attr]


async def start_demo_app(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    origin = ["?"]
    server = await loop.create_server(lambda: DemoApp(origin[0]), host, port)
    address = server.sockets[0].getsockname()
    origin[0] = f"{address[0]}:{address[1]}"
    return server
