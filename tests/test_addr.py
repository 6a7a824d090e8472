"""Host and port text helpers of the tunnel: ``split_host_port`` and ``parse_addr``
(IPv6 brackets, missing or invalid ports)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ytun.tunnel.addr import parse_addr, split_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", ("example.com", 0)),
        ("example.com:8000", ("example.com", 8000)),
        ("example.com:0", ("example.com", 0)),
        ("example.com:65535", ("example.com", 65535)),
        ("example.com:65536", ("example.com", 0)),
        ("example.com:99999999999", ("example.com", 0)),
        ("example.com:", ("example.com", 0)),
        ("example.com:http", ("example.com", 0)),
        ("example.com:-1", ("example.com", 0)),
        ("example.com:80x", ("example.com", 0)),
        ("example.com: 80", ("example.com", 0)),
        ("example.com:0080", ("example.com", 80)),
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        (":8080", ("", 8080)),
        ("", ("", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", 0)),
        ("[::1]:", ("::1", 0)),
        ("[::1]:65536", ("::1", 0)),
        ("[::1]:port", ("::1", 0)),
        ("[fe80::1%eth0]:443", ("fe80::1%eth0", 443)),
        ("::1", ("::1", 0)),
        ("2001:db8::1", ("2001:db8::1", 0)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    "port_text",
    ["\u00b2", "8\u00b3", "1" * 5000, "\u0668\u0660"],
    ids=["superscript-two", "digit-then-superscript", "5000-digits", "arabic-indic-80"],
)
def test_split_host_port_gives_port_zero_for_non_ascii_or_huge_digit_strings(
    port_text: str,
) -> None:
    assert split_host_port(f"app.example.com:{port_text}") == ("app.example.com", 0)


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("example.com", 80, ("example.com", 80)),
        ("example.com", 443, ("example.com", 443)),
        ("example.com:8000", 443, ("example.com", 8000)),
        ("example.com:70000", 443, ("example.com", 443)),
        ("example.com:bad", 80, ("example.com", 80)),
        ("[::1]", 80, ("::1", 80)),
        ("[::1]:9000", 80, ("::1", 9000)),
        ("127.0.0.1:0", 80, ("127.0.0.1", 80)),
    ],
)
def test_parse_addr(text: str, default: int, expected: tuple[str, int]) -> None:
    assert parse_addr(text, default) == expected


def test_parse_addr_defaults_to_port_80() -> None:
    assert parse_addr("example.com") == ("example.com", 80)


HOST_NAMES = st.from_regex(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,10})*", fullmatch=True
)
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(lambda address: f"[{address}]")


@settings(
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "200")), deadline=None, database=None
)
@given(name=HOST_NAMES | IPV4 | IPV6, port=st.integers(min_value=1, max_value=65535))
def test_split_host_port_round_trips_valid_names_and_ports(name: str, port: int) -> None:
    expected_name = name[1:-1] if name.startswith("[") else name
    assert split_host_port(f"{name}:{port}") == (expected_name, port)
    assert split_host_port(name) == (expected_name, 0)
    assert parse_addr(name, port) == (expected_name, port)
