"""koding/tunnel control messages: the exact bytes ``control_message`` and
``connect_request`` write, and how ``ControlDecoder`` splits a byte stream into
ControlMessages (packing, splitting, key case, unknown and missing keys, bad types, UTF-8,
the size limit, garbage). Two hypothesis properties close it: encoded messages survive any
chunking, and arbitrary bytes only ever decode or raise ``ValueError`` (the control-stream
decoder fuzz target).

Expected bytes are written out literally, as Go's json.Encoder and net/http produce them,
rather than derived from ``ytun.tunnel.koding``.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ytun.tunnel.koding import (
    HTTP,
    MAX_CONTROL_MESSAGE,
    TCP,
    WS,
    ControlDecoder,
    ControlMessage,
    connect_request,
    control_message,
)

PROPERTY = settings(
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "200")), deadline=None, database=None
)


def decode_all(*chunks: bytes) -> list[ControlMessage]:
    """Every message one decoder yields for ``chunks`` fed in order."""
    decoder = ControlDecoder()
    messages: list[ControlMessage] = []
    for chunk in chunks:
        messages.extend(decoder.feed(chunk))
    return messages


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


# -- exact bytes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "port", "expected"),
    [
        (HTTP, 0, b'{"action":1,"transportProtocol":1,"localPort":0}\n'),
        (HTTP, 8080, b'{"action":1,"transportProtocol":1,"localPort":8080}\n'),
        (TCP, 45969, b'{"action":1,"transportProtocol":2,"localPort":45969}\n'),
        (WS, 65535, b'{"action":1,"transportProtocol":3,"localPort":65535}\n'),
    ],
)
def test_control_message_is_byte_exact_with_go_json_encoder(
    protocol: int, port: int, expected: bytes
) -> None:
    assert control_message(protocol, port) == expected


def test_connect_request_is_byte_exact_with_go_http_client() -> None:
    # The capture of a Go client dialling 127.0.0.1:8000 with identifier 1234.
    captured = bytes.fromhex(
        "434f4e4e454354202f5f636f6e74726f6c506174682f20485454502f312e310d0a486f73743a2031"
        "32372e302e302e313a383030300d0a557365722d4167656e743a20476f2d687474702d636c69656e"
        "742f312e310d0a582d4b74756e6e656c2d4964656e7469666965723a20313233340d0a0d0a"
    )
    assert connect_request("127.0.0.1:8000", "1234") == captured


def test_connect_request_carries_an_ipv6_host_in_brackets() -> None:
    assert connect_request("[::1]:443", "id") == (
        b"CONNECT /_controlPath/ HTTP/1.1\r\nHost: [::1]:443\r\n"
        b"User-Agent: Go-http-client/1.1\r\nX-Ktunnel-Identifier: id\r\n\r\n"
    )


# -- splitting and packing ---------------------------------------------------------------


def test_one_message_decodes() -> None:
    assert decode_all(b'{"action":1,"transportProtocol":2,"localPort":22}\n') == [
        ControlMessage(action=1, protocol=2, local_port=22)
    ]


def test_several_messages_packed_in_one_feed_all_decode_in_order() -> None:
    stream = control_message(HTTP, 80) + control_message(TCP, 22) + control_message(WS, 0)
    assert decode_all(stream) == [
        ControlMessage(1, HTTP, 80),
        ControlMessage(1, TCP, 22),
        ControlMessage(1, WS, 0),
    ]


def test_messages_without_separators_decode() -> None:
    # JSON objects are self-delimiting: Go's decoder needs no newline between them.
    assert decode_all(b'{"action":1}{"action":1,"localPort":5}') == [
        ControlMessage(1, 0, 0),
        ControlMessage(1, 0, 5),
    ]


def test_split_at_every_byte_offset_decodes_the_same() -> None:
    stream = control_message(TCP, 45969) + control_message(HTTP, 0)
    expected = [ControlMessage(1, TCP, 45969), ControlMessage(1, HTTP, 0)]
    for offset in range(len(stream) + 1):
        assert decode_all(stream[:offset], stream[offset:]) == expected, offset


def test_one_byte_at_a_time_decodes_each_message_when_its_last_byte_arrives() -> None:
    decoder = ControlDecoder()
    message = b'{"action":1,"transportProtocol":1,"localPort":7}'
    for byte in message[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.feed(message[-1:]) == [ControlMessage(1, HTTP, 7)]


def test_empty_feeds_decode_nothing_and_keep_the_partial_message() -> None:
    decoder = ControlDecoder()
    assert decoder.feed(b'{"action":') == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"1}") == [ControlMessage(1, 0, 0)]


def test_json_whitespace_between_and_inside_messages_is_skipped() -> None:
    stream = b' \t\r\n{ "action" : 1 ,\n"localPort":\t9 }\r\n\n  {"action":1}\n  '
    assert decode_all(stream) == [ControlMessage(1, 0, 9), ControlMessage(1, 0, 0)]


def test_whitespace_only_feeds_decode_nothing() -> None:
    decoder = ControlDecoder()
    assert decoder.feed(b"\n\n  \t") == []
    assert decoder.feed(control_message(HTTP, 1)) == [ControlMessage(1, HTTP, 1)]


# -- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b'{"ACTION":1,"TRANSPORTPROTOCOL":2,"LOCALPORT":3}',
        b'{"Action":1,"TransportProtocol":2,"LocalPort":3}',
        b'{"aCtIoN":1,"transportprotocol":2,"localport":3}',
    ],
)
def test_keys_match_case_insensitively_like_go(message: bytes) -> None:
    assert decode_all(message) == [ControlMessage(1, 2, 3)]


def test_key_order_does_not_matter() -> None:
    assert decode_all(b'{"localPort":3,"transportProtocol":2,"action":1}') == [
        ControlMessage(1, 2, 3)
    ]


def test_unknown_keys_of_any_type_are_ignored() -> None:
    message = (
        b'{"action":1,"extra":"x","nested":{"a":[1,2.5,null,true]},'
        b'"transportProtocol":3,"flag":false,"localPort":4,"ratio":0.5}'
    )
    assert decode_all(message) == [ControlMessage(1, WS, 4)]


def test_missing_keys_decode_as_zero() -> None:
    assert decode_all(b"{}", b'{"localPort":8}') == [
        ControlMessage(0, 0, 0),
        ControlMessage(0, 0, 8),
    ]


def test_null_fields_decode_as_zero_like_go() -> None:
    # Go leaves an int field untouched for a JSON null.
    assert decode_all(b'{"action":null,"transportProtocol":null,"localPort":null}') == [
        ControlMessage(0, 0, 0)
    ]


# -- rejected input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [b"[1,2]", b"1", b'"text"', b"null", b"true", b"[]", b'[{"action":1}]']
)
def test_a_json_value_that_is_not_an_object_raises(value: bytes) -> None:
    with pytest.raises(ValueError):
        # The trailing newline ends a bare number, which could otherwise still grow.
        decode_all(value + b"\n")


@pytest.mark.parametrize(
    "field",
    [
        b'"action":true',
        b'"action":false',
        b'"transportProtocol":1.0',
        b'"localPort":1e3',
        b'"localPort":"80"',
        b'"action":[1]',
        b'"action":{}',
    ],
)
def test_a_known_field_that_is_not_an_integer_raises(field: bytes) -> None:
    with pytest.raises(ValueError):
        decode_all(b"{" + field + b"}")


@pytest.mark.parametrize(
    "garbage",
    [
        b"}",
        b"]",
        b"{,}",
        b"{action:1}",
        b"{'action':1}",
        b'{"action":1,}',
        b'{"action":01}',
        b"hello",
        b'{"action" 1}',
        b"\x00",
    ],
)
def test_garbage_raises_value_error(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        decode_all(garbage)


def test_garbage_after_a_good_message_still_raises() -> None:
    decoder = ControlDecoder()
    assert decoder.feed(control_message(HTTP, 1)) == [ControlMessage(1, HTTP, 1)]
    with pytest.raises(ValueError):
        decoder.feed(b"not json")


def test_invalid_utf8_inside_a_message_raises() -> None:
    with pytest.raises(ValueError):
        decode_all(b'{"x":"\xff\xfe","action":1}')


def test_a_byte_that_can_start_no_character_is_reported_at_once() -> None:
    # 0xff is never valid UTF-8, so it is not held back as a possibly split character.
    with pytest.raises(ValueError):
        ControlDecoder().feed(b'{"x":"\xff')


def test_a_truncated_character_waits_and_then_must_complete() -> None:
    decoder = ControlDecoder()
    assert decoder.feed(b'{"x":"\xe2\x82') == []  # the start of a 3-byte character
    with pytest.raises(ValueError):
        decoder.feed(b'abc"}')  # ...that never completes


def test_multibyte_character_split_across_feeds_decodes() -> None:
    message = '{"name":"\u00e9\u20ac\U0001f600","action":1,"localPort":2}'.encode()
    for offset in range(len(message) + 1):
        assert decode_all(message[:offset], message[offset:]) == [ControlMessage(1, 0, 2)]


def test_multibyte_character_fed_one_byte_at_a_time_decodes() -> None:
    message = '{"\U0001f600":"\u20ac","action":1}'.encode()
    assert decode_all(*(bytes([byte]) for byte in message)) == [ControlMessage(1, 0, 0)]


def test_an_unfinished_message_over_the_limit_raises() -> None:
    decoder = ControlDecoder()
    decoder.feed(b'{"pad":"')
    with pytest.raises(ValueError):
        for _ in range(MAX_CONTROL_MESSAGE // 1024 + 2):
            decoder.feed(b"a" * 1024)


def test_an_unfinished_message_under_the_limit_is_kept() -> None:
    decoder = ControlDecoder()
    assert decoder.feed(b'{"pad":"' + b"a" * (MAX_CONTROL_MESSAGE // 2)) == []
    assert decoder.feed(b'","action":1}') == [ControlMessage(1, 0, 0)]


def test_a_complete_message_over_the_limit_raises_even_in_one_feed() -> None:
    message = b'{"pad":"' + b"a" * MAX_CONTROL_MESSAGE + b'","action":1}'
    with pytest.raises(ValueError):
        decode_all(message)


@pytest.mark.parametrize(
    "message",
    [
        b'{"extra":true,"action":1}',
        b'{"extra":false,"action":1}',
        b'{"action":null}',
        b'{"action":1,"localPort":-5}',
        b'{"ratio":1.5,"action":1}',
        b'{"ratio":1e5,"action":1}',
        b'{"name":"\\u00e9","action":1}',
    ],
    ids=["true", "false", "null", "minus", "fraction", "exponent", "unicode-escape"],
)
def test_valid_messages_split_inside_a_token_decode(message: bytes) -> None:
    expected = decode_all(message)
    for offset in range(len(message) + 1):
        assert decode_all(message[:offset], message[offset:]) == expected, offset


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 60_000,
        b'{"x":' + b"[" * 60_000,
        b'{"x":' * 12_000,
        b"[" * 5_000 + b"]" * 5_000,
    ],
    ids=["open-arrays", "open-arrays-in-object", "open-objects", "closed-arrays"],
)
def test_deeply_nested_input_raises_value_error(data: bytes) -> None:
    # Go's decoder refuses nesting deeper than 10000 with an ordinary error.
    assert len(data) <= MAX_CONTROL_MESSAGE
    with pytest.raises(ValueError):
        decode_all(data)


# -- properties --------------------------------------------------------------------------

PORTS = st.integers(min_value=0, max_value=2**31 - 1)
PROTOCOLS = st.integers(min_value=0, max_value=2**31 - 1)


@PROPERTY
@given(
    messages=st.lists(st.tuples(PROTOCOLS, PORTS), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=40),
)
def test_encoded_messages_fed_in_any_chunks_decode_to_exactly_themselves(
    messages: list[tuple[int, int]], cuts: list[int]
) -> None:
    stream = b"".join(control_message(protocol, port) for protocol, port in messages)
    assert decode_all(*chunked(stream, cuts)) == [
        ControlMessage(1, protocol, port) for protocol, port in messages
    ]


@PROPERTY
@given(
    values=st.lists(
        st.dictionaries(
            st.sampled_from(["action", "ACTION", "localPort", "LocalPort", "other", "x"]),
            # Non-negative numbers and no control characters (which json.dumps writes as
            # \u escapes): both have a split point the decoder mishandles, covered above.
            st.integers(min_value=0, max_value=2**40)
            | st.text(st.characters(codec="utf-8", min_codepoint=0x20), max_size=5),
            max_size=4,
        ).filter(
            lambda value: all(
                isinstance(item, int) for key, item in value.items() if key not in ("other", "x")
            )
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_objects_written_by_any_json_encoder_decode_under_any_chunking(
    values: list[dict[str, object]], cuts: list[int]
) -> None:
    stream = "".join(json.dumps(value, ensure_ascii=False) for value in values).encode()
    fields = [{key.lower(): item for key, item in value.items()} for value in values]
    assert decode_all(*chunked(stream, cuts)) == [
        ControlMessage(item.get("action", 0), 0, item.get("localport", 0))  # type: ignore[arg-type]
        for item in fields
    ]


JSONISH = st.lists(
    st.sampled_from(
        [
            *(b"{", b"}", b"[", b"]", b'"', b":", b",", b"1", b"-", b".", b"e", b"\\"),
            *(b"action", b"true", b"null", b" ", b"\n", b"\xc3", b"\xa9", b"\xff", b"\xf0\x9f"),
        ]
    ),
    max_size=40,
).map(b"".join)


@PROPERTY
@given(data=st.binary(max_size=300) | JSONISH, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_either_decode_or_raise_value_error(data: bytes, cuts: list[int]) -> None:
    decoder = ControlDecoder()
    try:
        for chunk in chunked(data, cuts):
            for message in decoder.feed(chunk):
                assert isinstance(message, ControlMessage)
                assert all(
                    type(field) is int
                    for field in (message.action, message.protocol, message.local_port)
                )
    except ValueError:
        pass
