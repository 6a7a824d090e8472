"""Watching one tunnel stream: finds each request and its answer in copies of the bytes
that pass, with ytun's own HTTP/1 splitters, and records them in an :class:`ExchangeLog`.

It keeps heads and the first ``body_limit`` bytes of each body, follows keep-alive
(several requests per stream), chunked bodies and interim (1xx) answers. At a protocol
switch (101) it records the answer and stops watching the stream; so it does after bytes
it cannot read as HTTP, or more unanswered requests than :data:`MAX_UNANSWERED`. Stopping
only ends the recording: the bytes themselves are passed on by the pipe, untouched.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..tunnel.http1 import HttpError, RequestHead
from ..tunnel.split import (
    END,
    NEED_DATA,
    PAUSED,
    Body,
    Head,
    RequestSplitter,
    ResponseHead,
    ResponseSplitter,
)
from .exchange import Exchange, Message
from .log import ExchangeLog

#: Requests sent ahead of their answers (pipelining) that one stream may hold.
MAX_UNANSWERED = 32


class StreamCapture:
    """The observer of one stream (see :class:`ytun.tunnel.tap.StreamObserver`)."""

    def __init__(self, log: ExchangeLog, *, replay_of: int | None = None) -> None:
        self._log = log
        self._limit = log.body_limit
        self._replay_of = replay_of
        self._requests = RequestSplitter()
        self._responses = ResponseSplitter()
        self._reading: Exchange | None = None  # the request whose body is arriving
        self._unanswered: deque[Exchange] = deque()  # sent, final answer not begun
        self._answering: Exchange | None = None  # the answer whose body is arriving
        self._address: Any = None
        self.stopped = False
        self.exchanges: list[Exchange] = []  # this stream's (a replay reads its own)

    @property
    def waiting(self) -> bool:
        """A request has been seen whose answer has not ended."""
        return not self.stopped and bool(self._unanswered or self._answering)

    # -- StreamObserver ---------------------------------------------------------------------

    def local_connected(self, address: Any) -> None:
        self._address = address
        for exchange in self.exchanges:
            exchange.local_address = address

    def request_data(self, data: bytes) -> None:
        if self.stopped or self._requests.paused:
            return  # after an upgrade request, nothing is read until its answer
        splitter = self._requests
        splitter.receive(data)
        try:
            whole = splitter.whole_message()  # the common case, in one step
            if whole is not None:
                self._request_head(whole)
                if self._reading is not None:
                    _keep_bytes(self._reading.request, _body_of_whole(splitter), self._limit)
                    self._reading.request.complete = True
                    self._reading = None
            while not self.stopped:
                event = splitter.next_event()
                if event is NEED_DATA or event is PAUSED:
                    return
                if isinstance(event, Head):
                    self._request_head(event)
                elif isinstance(event, Body):
                    if self._reading is not None:
                        _keep(self._reading.request, event, self._limit)
                elif event is END and self._reading is not None:
                    self._reading.request.complete = True
                    self._reading = None
        except HttpError as exc:
            self.stop(f"not HTTP: {exc}")

    def response_data(self, data: bytes) -> None:
        if self.stopped:
            return
        splitter = self._responses
        splitter.receive(data)
        try:
            self._read_responses()
        except HttpError as exc:
            self.stop(f"not an HTTP answer: {exc}")

    def response_eof(self) -> None:
        if self.stopped:
            return
        try:
            if self._responses.receive_eof():  # that ends a body delimited by the close
                self._read_responses()
                self._response_end()
        except HttpError as exc:
            self.stop(f"not an HTTP answer: {exc}")

    def closed(self) -> None:
        if self._address is None:  # the client answered 503 itself, or the stream ended first
            self.stop("no local service was reached")
        else:
            self.stop("the stream ended before the answer did")

    # -- requests ---------------------------------------------------------------------------

    def _request_head(self, event: Head) -> None:
        head = event.head
        assert isinstance(head, RequestHead)
        if len(self._unanswered) >= MAX_UNANSWERED:
            self.stop("too many requests sent ahead of their answers")
            return
        exchange = Exchange(
            request=Message(head=event.raw, chunked=head.chunked),
            method=head.method.decode("latin-1"),
            target=head.target.decode("latin-1"),
            upgrade=head.upgrade or head.method == b"CONNECT",
            local_address=self._address,
            replay_of=self._replay_of,
        )
        self._responses.expect(head)
        self._unanswered.append(exchange)
        self._reading = exchange
        self.exchanges.append(exchange)
        self._log.add(exchange)

    # -- answers ----------------------------------------------------------------------------

    def _read_responses(self) -> None:
        splitter = self._responses
        whole = splitter.whole_message()  # the common case, in one step
        if whole is not None:
            self._response_head(whole)
            if self._answering is not None and self._answering.response is not None:
                _keep_bytes(self._answering.response, _body_of_whole(splitter), self._limit)
            self._response_end()
        while not self.stopped:
            event = splitter.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            if isinstance(event, Head):
                self._response_head(event)
            elif isinstance(event, Body):
                if self._answering is not None and self._answering.response is not None:
                    _keep(self._answering.response, event, self._limit)
            elif event is END:
                self._response_end()
            else:  # Raw: bytes after a protocol switch, which stopped the capture already
                return

    def _response_head(self, event: Head) -> None:
        head = event.head
        assert isinstance(head, ResponseHead)
        if head.status < 200 and not head.switched:
            return  # interim (100 Continue, 103): the final answer follows
        exchange = self._unanswered.popleft()
        exchange.status = head.status
        exchange.response = Message(head=event.raw, chunked=head.chunked)
        status_line = event.raw.split(b"\r\n", 1)[0].decode("latin-1")
        exchange.reason = status_line[13:]
        if head.switched:
            exchange.response.complete = True
            exchange.finish("upgraded")
            self._log.changed(exchange)
            self.stop("", record=False)
            return
        self._answering = exchange

    def _response_end(self) -> None:
        exchange = self._answering
        if exchange is None:
            return
        self._answering = None
        assert exchange.response is not None
        exchange.response.complete = True
        exchange.finish("complete")
        self._log.changed(exchange)
        if exchange.upgrade:
            # An upgrade answered without switching: the requests after it were not read
            # (the splitter waited for this answer), so this stream is not followed further.
            self.stop("", record=False)

    # -- the end --------------------------------------------------------------------------

    def stop(self, reason: str, *, record: bool = True) -> None:
        """Stop watching; exchanges still open are recorded as incomplete with ``reason``."""
        if self.stopped:
            return
        self.stopped = True
        if record:
            open_ones = ([self._answering] if self._answering else []) + list(self._unanswered)
            for exchange in open_ones:
                exchange.finish("incomplete", reason)
                self._log.changed(exchange)
        self._answering = None
        self._unanswered.clear()
        self._reading = None
        # drop the splitters' buffers: a stopped capture holds no bytes
        self._requests = RequestSplitter()
        self._responses = ResponseSplitter()


def _body_of_whole(splitter: RequestSplitter | ResponseSplitter) -> memoryview:
    """The body of the message :meth:`whole_message` just took from the start of the
    buffer (framing included; empty for a message without one)."""
    received = splitter.received
    return memoryview(received)[received.find(b"\r\n\r\n") + 4 : splitter.position]


def _keep_bytes(message: Message, body: memoryview, limit: int) -> None:
    room = limit - len(message.body)
    if room > 0:
        message.body += body[:room]
    message.size += len(body)


def _keep(message: Message, span: Body, limit: int) -> None:
    """Count the span and copy only what still fits under ``limit``."""
    room = limit - len(message.body)
    if room > 0:
        message.body += span.buffer[span.start : min(span.stop, span.start + room)]
    message.size += len(span)
