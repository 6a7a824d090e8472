"""koding/tunnel wire constants and the JSON control messages on stream 1."""

from __future__ import annotations

import json
import re
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

#: A control message can never legitimately be this large...
MAX_CONTROL_MESSAGE = 64 * 1024
#: ...nor nested this deeply (a ControlMessage is one flat object).
MAX_CONTROL_DEPTH = 32


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
    """Splits a byte stream into JSON objects, however they are split or packed.

    Keys are matched case-insensitively and unknown keys are ignored, as Go's decoder does.
    Each object is delimited by a scan of its brackets and strings first (so a split
    anywhere, even inside a literal or an escape, only waits for more bytes), and parsed
    only when complete, within ``MAX_CONTROL_MESSAGE`` bytes and ``MAX_CONTROL_DEPTH``
    levels of nesting.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._pending = b""
        self._start = -1  # where the object being delimited begins in _buffer, -1: none
        self._scanned = 0  # how far it was scanned
        self._depth = 0
        self._in_string = False

    def feed(self, data: bytes) -> list[ControlMessage]:
        """Messages completed by ``data``; raises ``ValueError`` on anything but objects."""
        text = self._pending + data
        try:
            chunk = text.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(text) - 3 or exc.reason != "unexpected end of data":
                raise ValueError("control stream is not UTF-8") from exc
            chunk, self._pending = text[: exc.start].decode("utf-8"), text[exc.start :]
        self._buffer += chunk
        messages = []
        while (end := self._object_end()) is not None:
            raw, self._buffer = self._buffer[self._start : end], self._buffer[end:]
            self._start = -1
            messages.append(_message(raw))
        return messages

    def _object_end(self) -> int | None:
        """Offset just past the next complete object in the buffer, or None for now."""
        buffer = self._buffer
        if self._start < 0:
            first = _NOT_SPACE.search(buffer)
            if first is None:
                self._buffer = ""
                return None
            if buffer[first.start()] != "{":
                raise ValueError("control message is not a JSON object")
            self._buffer = buffer = buffer[first.start() :]
            self._start, self._scanned, self._depth, self._in_string = 0, 0, 0, False
        position = self._scanned
        while True:
            if self._in_string:
                match = _STRING_STOP.search(buffer, position)
                if match is None:
                    position = len(buffer)
                    break
                if match.group() == "\\":
                    if match.end() >= len(buffer):
                        position = match.start()  # the escaped character is not here yet
                        break
                    position = match.end() + 1
                    continue
                self._in_string = False
                position = match.end()
                continue
            match = _STRUCTURE.search(buffer, position)
            if match is None:
                position = len(buffer)
                break
            position = match.end()
            token = match.group()
            if token == '"':
                self._in_string = True
            elif token in "{[":
                self._depth += 1
                if self._depth > MAX_CONTROL_DEPTH:
                    raise ValueError("control message nested too deeply")
            else:
                self._depth -= 1
                if self._depth == 0:
                    if position - self._start > MAX_CONTROL_MESSAGE:
                        raise ValueError("control message too large")
                    return position
        self._scanned = position
        if len(buffer) - self._start > MAX_CONTROL_MESSAGE:
            raise ValueError("control message too large")
        return None


_NOT_SPACE = re.compile(r"[^ \t\r\n]")
_STRUCTURE = re.compile(r'[{}\[\]"]')
_STRING_STOP = re.compile(r'["\\]')


def _message(raw: str) -> ControlMessage:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError("malformed control message") from None
    if not isinstance(value, dict):
        raise ValueError("control message is not a JSON object")
    fields = {key.lower(): item for key, item in value.items()}
    return ControlMessage(
        _int(fields.get("action")),
        _int(fields.get("transportprotocol")),
        _int(fields.get("localport")),
    )


def _int(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"control message field is not an integer: {value!r}")
    return value
