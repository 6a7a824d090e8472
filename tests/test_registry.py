"""Routing tables: ``MemoryRegistry`` (virtual hosts, matched case-insensitively, exact
``host:port`` before bare ``host``; TCP routes by port or by local IP, the IP route first;
labels that never give away an identifier) and the host/port text helpers
``split_host_port`` and ``parse_addr`` (IPv6 brackets, missing or invalid ports).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ytun.tunnel.addr import parse_addr, split_host_port
from ytun.tunnel.registry import MemoryRegistry, Registry

# -- virtual hosts -----------------------------------------------------------------------


def test_memory_registry_is_a_registry() -> None:
    assert isinstance(MemoryRegistry(), Registry)


def test_an_unknown_host_has_no_identifier() -> None:
    registry = MemoryRegistry()
    assert registry.lookup_host("app.example.com") is None
    assert registry.lookup_host("app.example.com:8080") is None


def test_a_bare_host_matches_with_and_without_a_port() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "secret-1")
    assert registry.lookup_host("app.example.com") == "secret-1"
    assert registry.lookup_host("app.example.com:8080") == "secret-1"


def test_a_host_with_a_port_matches_only_that_port() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com:8080", "secret-1")
    assert registry.lookup_host("app.example.com:8080") == "secret-1"
    assert registry.lookup_host("app.example.com:9090") is None
    assert registry.lookup_host("app.example.com") is None


def test_the_exact_host_and_port_beats_the_bare_host() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "bare")
    registry.add_host("app.example.com:8080", "exact")
    assert registry.lookup_host("app.example.com:8080") == "exact"
    assert registry.lookup_host("app.example.com:9090") == "bare"
    assert registry.lookup_host("app.example.com") == "bare"


@pytest.mark.parametrize(
    ("registered", "asked"),
    [
        ("APP.Example.COM", "app.example.com"),
        ("app.example.com", "APP.EXAMPLE.COM"),
        ("App.Example.Com:8080", "aPP.eXAMPLE.cOM:8080"),
        ("app.example.com", "App.Example.Com:443"),
    ],
)
def test_hosts_match_case_insensitively(registered: str, asked: str) -> None:
    registry = MemoryRegistry()
    registry.add_host(registered, "secret-1")
    assert registry.lookup_host(asked) == "secret-1"


def test_adding_a_host_again_replaces_its_identifier() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "old")
    registry.add_host("APP.example.com", "new")
    assert registry.lookup_host("app.example.com") == "new"
    assert not registry.has_host("old")


def test_deleting_a_host_removes_it_in_any_case() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "secret-1")
    registry.delete_host("App.Example.Com")
    assert registry.lookup_host("app.example.com") is None
    assert not registry.has_host("secret-1")


def test_deleting_an_unknown_host_is_harmless() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "secret-1")
    registry.delete_host("other.example.com")
    assert registry.lookup_host("app.example.com") == "secret-1"


def test_deleting_the_exact_host_falls_back_to_the_bare_host() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "bare")
    registry.add_host("app.example.com:8080", "exact")
    registry.delete_host("app.example.com:8080")
    assert registry.lookup_host("app.example.com:8080") == "bare"


def test_has_host_while_any_host_maps_to_the_identifier() -> None:
    registry = MemoryRegistry()
    assert not registry.has_host("secret-1")
    registry.add_host("a.example.com", "secret-1")
    registry.add_host("b.example.com", "secret-1")
    assert registry.has_host("secret-1")
    registry.delete_host("a.example.com")
    assert registry.has_host("secret-1")
    registry.delete_host("b.example.com")
    assert not registry.has_host("secret-1")


def test_identifiers_are_case_sensitive() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "Secret")
    assert registry.has_host("Secret")
    assert not registry.has_host("secret")


@pytest.mark.parametrize(("host", "identifier"), [("", "secret-1"), ("app", ""), ("", "")])
def test_an_empty_host_or_identifier_is_refused(host: str, identifier: str) -> None:
    registry = MemoryRegistry()
    with pytest.raises(ValueError):
        registry.add_host(host, identifier)
    assert not registry.has_host(identifier)
    assert registry.lookup_host(host) is None


def test_a_host_with_a_superscript_digit_port_falls_back_to_the_bare_host() -> None:
    # front.py decodes the Host header as latin-1, so b"app.example.com:\xb2" arrives as this.
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "secret-1")
    assert registry.lookup_host("app.example.com:\u00b2") == "secret-1"


# -- labels ------------------------------------------------------------------------------


def test_label_names_a_host_of_the_client() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "secret-1")
    assert registry.label("secret-1") == "app.example.com"


def test_label_of_an_unregistered_client_does_not_echo_the_identifier() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "secret-1")
    label = registry.label("secret-2")
    assert "secret-2" not in label
    assert "secret-1" not in label


def test_label_after_the_last_host_is_deleted_does_not_echo_the_identifier() -> None:
    registry = MemoryRegistry()
    registry.add_host("app.example.com", "secret-1")
    registry.delete_host("app.example.com")
    assert "secret-1" not in registry.label("secret-1")


@settings(
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "200")), deadline=None, database=None
)
@given(
    hosts=st.dictionaries(
        st.from_regex(r"[a-z0-9]{1,8}\.example\.com", fullmatch=True),
        st.sampled_from(["alpha-secret", "beta-secret", "gamma-secret"]),
        max_size=6,
    ),
    asked=st.sampled_from(["alpha-secret", "beta-secret", "gamma-secret", "delta-secret"]),
)
def test_label_never_contains_an_identifier(hosts: dict[str, str], asked: str) -> None:
    registry = MemoryRegistry()
    for host, identifier in hosts.items():
        registry.add_host(host, identifier)
    label = registry.label(asked)
    assert label
    assert not any(secret in label for secret in [asked, *hosts.values()])
    if asked in hosts.values():
        assert hosts[label] == asked


# -- TCP routes --------------------------------------------------------------------------


def test_a_port_route_matches_any_local_ip() -> None:
    registry = MemoryRegistry()
    registry.add_addr(5000, "tcp-secret")
    assert registry.lookup_addr("127.0.0.1", 5000) == "tcp-secret"
    assert registry.lookup_addr("10.1.2.3", 5000) == "tcp-secret"
    assert registry.lookup_addr("127.0.0.1", 5001) is None


def test_an_ip_route_matches_any_port_on_that_ip() -> None:
    registry = MemoryRegistry()
    registry.add_addr(0, "ip-secret", ip="10.1.2.3")
    assert registry.lookup_addr("10.1.2.3", 5000) == "ip-secret"
    assert registry.lookup_addr("10.1.2.3", 6000) == "ip-secret"
    assert registry.lookup_addr("10.1.2.4", 5000) is None


def test_an_ip_route_beats_a_port_route() -> None:
    registry = MemoryRegistry()
    registry.add_addr(5000, "port-secret")
    registry.add_addr(5000, "ip-secret", ip="10.1.2.3")
    assert registry.lookup_addr("10.1.2.3", 5000) == "ip-secret"
    assert registry.lookup_addr("127.0.0.1", 5000) == "port-secret"


def test_deleting_an_ip_route_falls_back_to_the_port_route() -> None:
    registry = MemoryRegistry()
    registry.add_addr(5000, "port-secret")
    registry.add_addr(5000, "ip-secret", ip="10.1.2.3")
    registry.delete_addr(5000, ip="10.1.2.3")
    assert registry.lookup_addr("10.1.2.3", 5000) == "port-secret"


def test_deleting_a_port_route_leaves_ip_routes() -> None:
    registry = MemoryRegistry()
    registry.add_addr(5000, "port-secret")
    registry.add_addr(5000, "ip-secret", ip="10.1.2.3")
    registry.delete_addr(5000)
    assert registry.lookup_addr("127.0.0.1", 5000) is None
    assert registry.lookup_addr("10.1.2.3", 5000) == "ip-secret"


def test_deleting_unknown_tcp_routes_is_harmless() -> None:
    registry = MemoryRegistry()
    registry.delete_addr(5000)
    registry.delete_addr(5000, ip="10.1.2.3")
    assert registry.lookup_addr("10.1.2.3", 5000) is None


def test_tcp_routes_and_virtual_hosts_are_separate() -> None:
    registry = MemoryRegistry()
    registry.add_addr(5000, "tcp-secret")
    assert not registry.has_host("tcp-secret")
    assert registry.lookup_host("127.0.0.1:5000") is None


def test_an_ipv6_ip_route_matches() -> None:
    registry = MemoryRegistry()
    registry.add_addr(0, "v6-secret", ip="::1")
    assert registry.lookup_addr("::1", 5000) == "v6-secret"


# -- split_host_port and parse_addr ------------------------------------------------------


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
