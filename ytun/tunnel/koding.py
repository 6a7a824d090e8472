"""koding/tunnel wire constants and the JSON control messages on stream 1."""

from __future__ import annotations

import json
from dataclasses import dataclass

CONTROL_PATH = "/_controlPath/"
#: Go canonicalises the header name to this spelling on the wire.
IDENTIFIER_HEADER = "X-Ktunnel-Identifier"
CONNECTED_STATUS = "200 Connected to Tunnel"
#: Bare LF and no headers, exactly as the Go server writes it.
CONNECTED_RESPONSE = b"HTTP/1.1 200 Connected to Tunnel\n\n"
#: The body the Go server sends when no host uses the identifier (its client only reads
#: the status line; ours tells a refused identifier from other failures by it).
REFUSED_BODY = b"no host associated for identifier"
HANDSHAKE_REQUEST = b"controlHandshake"
HANDSHAKE_RESPONSE = b"controlOk"

ACTION_REQUEST_CLIENT_SESSION = 1
HTTP = 1
TCP = 2
WS = 3

#: koding/tunnel's own timers (server waiting for streams, client dialling its local side).
CONTROL_TIMEOUT = 10.0

#: A control message can never legitimately be this large.
MAX_CONTROL_MESSAGE = 64 * 1024


def connect_request(host: str, identifier: str) -> bytes:
    """The CONNECT the Go client sends, byte for byte."""
    return (
        f"CONNECT {CONTROL_PATH} HTTP/1.1\r\nHost: {host}\r\n"
        f"User-Agent: Go-http-client/1.1\r\n{IDENTIFIER_HEADER}: {identifier}\r\n\r\n"
    ).encode("latin-1")


def control_message(protocol: int, local_port: int) -> bytes:
    """One server → client ControlMessage, as Go's json.Encoder writes it."""
    return b'{"action":%d,"transportProtocol":%d,"localPort":%d}\n' % (
        ACTION_REQUEST_CLIENT_SESSION,
        protocol,
        local_port,
    )


@dataclass(frozen=True)
class ControlMessage:
    action: int
    protocol: int
    local_port: int


class ControlDecoder:
    """Splits a byte stream into JSON values, however they are split or packed.

    Keys are matched case-insensitively and unknown keys are ignored, as Go's decoder does.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._pending = b""
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[ControlMessage]:
        """Messages completed by ``data``; raises ``ValueError`` on anything but objects."""
        text = self._pending + data
        try:
            chunk = text.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(text) - 3:
                raise ValueError("control stream is not UTF-8") from exc
            chunk, self._pending = text[: exc.start].decode("utf-8"), text[exc.start :]
        self._buffer += chunk
        messages = []
        while True:
            stripped = self._buffer.lstrip()
            if not stripped:
                self._buffer = ""
                break
            try:
                value, end = self._json.raw_decode(stripped)
            except json.JSONDecodeError:
                if len(stripped) > MAX_CONTROL_MESSAGE:
                    raise ValueError("control message too large") from None
                if _incomplete(stripped):
                    self._buffer = stripped
                    break
                raise ValueError("malformed control message") from None
            self._buffer = stripped[end:]
            if not isinstance(value, dict):
                raise ValueError("control message is not a JSON object")
            fields = {key.lower(): item for key, item in value.items()}
            messages.append(
                ControlMessage(
                    _int(fields.get("action")),
                    _int(fields.get("transportprotocol")),
                    _int(fields.get("localport")),
                )
            )
        return messages


def _int(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"control message field is not an integer: {value!r}")
    return value


def _incomplete(text: str) -> bool:
    """True if more bytes could still turn ``text`` into valid JSON."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return exc.pos >= len(text) or exc.msg.startswith("Unterminated string")
    return False
