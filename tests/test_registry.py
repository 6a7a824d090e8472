"""Routing tables, the same contract on every registry (``MemoryRegistry`` and
``SqliteRegistry``): virtual hosts matched case-insensitively, exact ``host:port`` before
bare ``host``, then the wildcard-domain rule; TCP routes by port or by local IP, the IP
route first; identifiers stored only as salted digests (client keys); labels and route
listings that never give away an identifier or a key; refusals with typed errors."""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ytun import HostTakenError, InvalidHostError, MemoryRegistry, Registry, SqliteRegistry
from ytun.registry import UNREGISTERED, Route

Factory = Callable[[], Registry]


@pytest.fixture(params=["memory", "sqlite"])
def make_registry(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Factory]:
    """Builds fresh registries of one kind (each SQLite one in its own file)."""
    made: list[Registry] = []

    def make() -> Registry:
        if request.param == "memory":
            registry: Registry = MemoryRegistry()
        else:
            registry = SqliteRegistry(tmp_path / f"state-{len(made)}.db")
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(make_registry: Factory) -> Registry:
    return make_registry()


# -- client keys -------------------------------------------------------------------------


def test_registries_are_registries(registry: Registry) -> None:
    assert isinstance(registry, Registry)


def test_a_key_is_a_hex_sha256_digest_not_the_identifier(registry: Registry) -> None:
    key = registry.key_for("secret-1")
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert "secret-1" not in key
    assert key == registry.key_for("secret-1")
    assert key != registry.key_for("secret-2")


def test_keys_are_salted_per_registry(make_registry: Factory) -> None:
    assert make_registry().key_for("secret-1") != make_registry().key_for("secret-1")


def test_owner_is_the_key_of_an_identifier_with_a_route(registry: Registry) -> None:
    assert registry.owner("secret-1") is None
    registry.add_host("app.example.com", "secret-1")
    assert registry.owner("secret-1") == registry.key_for("secret-1")
    assert registry.owner("secret-2") is None
    assert registry.owner("") is None


def test_a_tcp_route_alone_lets_an_identifier_connect(registry: Registry) -> None:
    registry.add_addr(5000, "tcp-secret")
    assert registry.owner("tcp-secret") == registry.key_for("tcp-secret")
    assert not registry.has_host(registry.key_for("tcp-secret"))


def test_identifiers_are_case_sensitive(registry: Registry) -> None:
    registry.add_host("app.example.com", "Secret")
    assert registry.owner("Secret") is not None
    assert registry.owner("secret") is None


def test_owner_is_gone_with_the_last_route(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    registry.add_addr(5000, "secret-1")
    registry.delete_host("app.example.com")
    assert registry.owner("secret-1") is not None
    registry.delete_addr(5000)
    assert registry.owner("secret-1") is None


# -- virtual hosts -----------------------------------------------------------------------


def test_unknown_host_is_none(registry: Registry) -> None:
    assert registry.lookup_host("app.example.com") is None
    assert registry.lookup_host("app.example.com:8080") is None


def test_bare_host_matches_any_port(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    key = registry.key_for("secret-1")
    assert registry.lookup_host("app.example.com") == key
    assert registry.lookup_host("app.example.com:8080") == key


def test_host_with_port_matches_only_that_port(registry: Registry) -> None:
    registry.add_host("app.example.com:8080", "secret-1")
    assert registry.lookup_host("app.example.com:8080") == registry.key_for("secret-1")
    assert registry.lookup_host("app.example.com:9090") is None
    assert registry.lookup_host("app.example.com") is None


def test_exact_host_port_wins_over_bare_host(registry: Registry) -> None:
    registry.add_host("app.example.com", "bare")
    registry.add_host("app.example.com:8080", "exact")
    assert registry.lookup_host("app.example.com:8080") == registry.key_for("exact")
    assert registry.lookup_host("app.example.com:9090") == registry.key_for("bare")
    assert registry.lookup_host("app.example.com") == registry.key_for("bare")


@pytest.mark.parametrize(
    ("registered", "asked"),
    [
        ("app.example.com", "APP.Example.COM"),
        ("APP.Example.COM", "app.example.com"),
        ("App.Example.Com:8080", "app.EXAMPLE.com:8080"),
    ],
)
def test_hosts_are_case_insensitive(registry: Registry, registered: str, asked: str) -> None:
    registry.add_host(registered, "secret-1")
    assert registry.lookup_host(asked) == registry.key_for("secret-1")


def test_add_host_returns_the_stored_form(registry: Registry) -> None:
    assert registry.add_host("App.Example.COM:08080", "secret-1") == "app.example.com:8080"
    assert [route.name for route in registry.hosts()] == ["app.example.com:8080"]


def test_adding_a_host_again_replaces_its_owner(registry: Registry) -> None:
    registry.add_host("app.example.com", "old")
    registry.add_host("APP.example.com", "new")
    assert registry.lookup_host("app.example.com") == registry.key_for("new")
    assert not registry.has_host(registry.key_for("old"))
    assert registry.owner("old") is None


def test_without_replace_another_owner_is_refused(registry: Registry) -> None:
    registry.add_host("app.example.com", "first")
    with pytest.raises(HostTakenError) as caught:
        registry.add_host("App.example.com", "second", replace=False)
    assert "first" not in str(caught.value) and "second" not in str(caught.value)
    assert registry.lookup_host("app.example.com") == registry.key_for("first")
    assert registry.owner("second") is None


def test_without_replace_the_same_owner_is_fine(registry: Registry) -> None:
    registry.add_host("app.example.com", "first")
    registry.add_host("app.example.com", "first", replace=False)
    assert registry.lookup_host("app.example.com") == registry.key_for("first")


def test_delete_host_is_case_insensitive_and_says_if_it_was_there(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    registry.add_host("app.example.com:8080", "secret-1")
    assert registry.delete_host("App.Example.Com:08080") is True  # the stored form
    assert registry.delete_host("App.Example.Com") is True
    assert registry.lookup_host("app.example.com") is None
    assert not registry.has_host(registry.key_for("secret-1"))
    assert registry.delete_host("app.example.com") is False


def test_deleting_an_unknown_host_keeps_the_others(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    assert registry.delete_host("other.example.com") is False
    assert registry.delete_host("not a host/at all") is False
    assert registry.lookup_host("app.example.com") == registry.key_for("secret-1")


def test_deleting_the_exact_route_falls_back_to_the_bare_one(registry: Registry) -> None:
    registry.add_host("app.example.com", "bare")
    registry.add_host("app.example.com:8080", "exact")
    registry.delete_host("app.example.com:8080")
    assert registry.lookup_host("app.example.com:8080") == registry.key_for("bare")


def test_has_host_tracks_every_host_of_a_key(registry: Registry) -> None:
    key = registry.key_for("secret-1")
    assert not registry.has_host(key)
    registry.add_host("a.example.com", "secret-1")
    registry.add_host("b.example.com", "secret-1")
    assert registry.has_host(key)
    registry.delete_host("a.example.com")
    assert registry.has_host(key)
    registry.delete_host("b.example.com")
    assert not registry.has_host(key)


@pytest.mark.parametrize(("host", "identifier"), [("", "secret-1"), ("app", ""), ("", "")])
def test_an_empty_host_or_identifier_is_refused(
    registry: Registry, host: str, identifier: str
) -> None:
    with pytest.raises(InvalidHostError):
        registry.add_host(host, identifier)
    assert registry.hosts() == []
    assert registry.lookup_host(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "http://app.example.com",
        "app.example.com/path",
        "user@app.example.com",
        "app example.com",
        "app..example.com",
        "-app.example.com",
        "app.example.com:0",
        "app.example.com:http",
        "[::1]:80",
        "app_1.example.com",
    ],
)
def test_a_bad_host_name_is_refused_with_a_reason(registry: Registry, host: str) -> None:
    with pytest.raises(InvalidHostError) as caught:
        registry.add_host(host, "secret-1")
    assert str(caught.value)
    assert "secret-1" not in str(caught.value)
    assert registry.owner("secret-1") is None


def test_a_host_with_a_superscript_digit_port_falls_back_to_the_bare_host(
    registry: Registry,
) -> None:
    # front.py decodes the Host header as latin-1, so b"app.example.com:\xb2" arrives as this.
    registry.add_host("app.example.com", "secret-1")
    assert registry.lookup_host("app.example.com:\u00b2") == registry.key_for("secret-1")


@pytest.mark.parametrize(
    "header", ["", ":", "::::", "[::1]:80", "\x00", "a" * 10_000, "app.example.com:99999999"]
)
def test_lookup_of_any_header_text_never_raises(registry: Registry, header: str) -> None:
    registry.add_host("app.example.com", "secret-1")
    found = registry.lookup_host(header, "example.com")
    assert found is None or found == registry.key_for("secret-1")


# -- the wildcard domain -----------------------------------------------------------------


def test_a_name_under_a_registered_subdomain_routes_to_it(registry: Registry) -> None:
    registry.add_host("foo.example.com", "foo-secret")
    key = registry.key_for("foo-secret")
    assert registry.lookup_host("api.foo.example.com", "example.com") == key
    assert registry.lookup_host("a.b.foo.example.com:8443", "example.com") == key
    # Without the domain only the exact name (and its ports) routes.
    assert registry.lookup_host("api.foo.example.com") is None


def test_the_wildcard_rule_prefers_the_subdomain_with_the_same_port(registry: Registry) -> None:
    registry.add_host("foo.example.com", "bare")
    registry.add_host("foo.example.com:8443", "exact")
    assert registry.lookup_host("x.foo.example.com:8443", "example.com") == registry.key_for(
        "exact"
    )
    assert registry.lookup_host("x.foo.example.com:80", "example.com") == registry.key_for("bare")


def test_a_registered_deeper_name_wins_over_the_wildcard_rule(registry: Registry) -> None:
    registry.add_host("foo.example.com", "foo-secret")
    registry.add_host("api.foo.example.com", "api-secret")
    assert registry.lookup_host("api.foo.example.com", "example.com") == registry.key_for(
        "api-secret"
    )


@pytest.mark.parametrize(
    "asked",
    [
        "bar.example.com",
        "x.bar.example.com",
        "example.com",
        "foo.example.org",
        "x.foo.other.com",
        "fooexample.com",
        "x.fooexample.com",
    ],
)
def test_the_wildcard_rule_routes_nothing_else(registry: Registry, asked: str) -> None:
    registry.add_host("foo.example.com", "foo-secret")
    assert registry.lookup_host(asked, "example.com") is None


# -- labels and listings -----------------------------------------------------------------


def test_label_names_the_first_host_of_the_client(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    registry.add_host("api.example.com", "secret-1")
    assert registry.label(registry.key_for("secret-1")) == "app.example.com"


def test_label_of_a_tcp_only_client_names_its_route(registry: Registry) -> None:
    registry.add_addr(5000, "port-secret")
    registry.add_addr(0, "ip-secret", ip="10.1.2.3")
    assert registry.label(registry.key_for("port-secret")) == "tcp:5000"
    assert registry.label(registry.key_for("ip-secret")) == "tcp:10.1.2.3"


def test_label_of_an_unregistered_client_gives_nothing_away(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    key = registry.key_for("secret-2")
    assert registry.label(key) == UNREGISTERED
    assert key not in registry.label(key)


def test_label_after_the_last_host_is_deleted(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    registry.delete_host("app.example.com")
    assert registry.label(registry.key_for("secret-1")) == UNREGISTERED


def test_routes_are_listed_with_labels_and_nothing_secret(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    registry.add_host("api.example.com:8080", "secret-1")
    registry.add_host("other.example.com", "secret-2")
    registry.add_addr(5000, "secret-2")
    registry.add_addr(0, "secret-3", ip="::1")
    assert registry.hosts() == [
        Route("host", "app.example.com", "app.example.com"),
        Route("host", "api.example.com:8080", "app.example.com"),
        Route("host", "other.example.com", "other.example.com"),
    ]
    assert registry.tcp_routes() == [
        Route("tcp-ip", "::1", "tcp:::1"),
        Route("tcp", ":5000", "other.example.com"),
    ]
    shown = repr(registry.hosts() + registry.tcp_routes())
    for identifier in ("secret-1", "secret-2", "secret-3"):
        assert identifier not in shown
        assert registry.key_for(identifier) not in shown


@settings(
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "100")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    hosts=st.dictionaries(
        st.from_regex(r"[a-z0-9]{1,8}\.example\.com", fullmatch=True),
        st.sampled_from(["alpha-secret", "beta-secret", "gamma-secret"]),
        max_size=6,
    ),
    asked=st.sampled_from(["alpha-secret", "beta-secret", "gamma-secret", "delta-secret"]),
)
def test_label_never_contains_an_identifier_or_a_key(
    make_registry: Factory, hosts: dict[str, str], asked: str
) -> None:
    registry = make_registry()
    for host, identifier in hosts.items():
        registry.add_host(host, identifier)
    label = registry.label(registry.key_for(asked))
    assert label
    secrets = [asked, *hosts.values()]
    assert not any(secret in label for secret in secrets)
    assert not any(registry.key_for(secret) in label for secret in secrets)
    if asked in hosts.values():
        assert hosts[label] == asked
    registry.close()


# -- TCP routes --------------------------------------------------------------------------


def test_port_route_matches_any_local_ip(registry: Registry) -> None:
    registry.add_addr(5000, "tcp-secret")
    key = registry.key_for("tcp-secret")
    assert registry.lookup_addr("127.0.0.1", 5000) == key
    assert registry.lookup_addr("10.1.2.3", 5000) == key
    assert registry.lookup_addr("127.0.0.1", 5001) is None


def test_ip_route_matches_any_port(registry: Registry) -> None:
    registry.add_addr(0, "ip-secret", ip="10.1.2.3")
    key = registry.key_for("ip-secret")
    assert registry.lookup_addr("10.1.2.3", 5000) == key
    assert registry.lookup_addr("10.1.2.3", 6000) == key
    assert registry.lookup_addr("10.1.2.4", 5000) is None


def test_ip_route_wins_over_port_route(registry: Registry) -> None:
    registry.add_addr(5000, "port-secret")
    registry.add_addr(5000, "ip-secret", ip="10.1.2.3")
    assert registry.lookup_addr("10.1.2.3", 5000) == registry.key_for("ip-secret")
    assert registry.lookup_addr("127.0.0.1", 5000) == registry.key_for("port-secret")


def test_deleting_the_ip_route_keeps_the_port_route(registry: Registry) -> None:
    registry.add_addr(5000, "port-secret")
    registry.add_addr(5000, "ip-secret", ip="10.1.2.3")
    assert registry.delete_addr(5000, ip="10.1.2.3") is True
    assert registry.lookup_addr("10.1.2.3", 5000) == registry.key_for("port-secret")


def test_deleting_the_port_route_keeps_the_ip_route(registry: Registry) -> None:
    registry.add_addr(5000, "port-secret")
    registry.add_addr(5000, "ip-secret", ip="10.1.2.3")
    assert registry.delete_addr(5000) is True
    assert registry.lookup_addr("127.0.0.1", 5000) is None
    assert registry.lookup_addr("10.1.2.3", 5000) == registry.key_for("ip-secret")


def test_deleting_unknown_tcp_routes_is_harmless(registry: Registry) -> None:
    assert registry.delete_addr(5000) is False
    assert registry.delete_addr(5000, ip="10.1.2.3") is False
    assert registry.delete_addr(5000, ip="not an ip") is False
    assert registry.lookup_addr("10.1.2.3", 5000) is None


def test_a_tcp_route_given_again_changes_owner(registry: Registry) -> None:
    registry.add_addr(5000, "old")
    registry.add_addr(5000, "new")
    assert registry.lookup_addr("127.0.0.1", 5000) == registry.key_for("new")
    assert registry.owner("old") is None


def test_tcp_routes_are_not_hosts(registry: Registry) -> None:
    registry.add_addr(5000, "tcp-secret")
    assert registry.lookup_host("127.0.0.1:5000") is None


def test_an_ipv6_ip_route_matches_in_its_canonical_form(registry: Registry) -> None:
    registry.add_addr(0, "v6-secret", ip="0:0::1")
    assert registry.lookup_addr("::1", 5000) == registry.key_for("v6-secret")


@pytest.mark.parametrize(
    ("port", "ip"), [(0, None), (65536, None), (-1, None), (5000, "not-an-ip"), (80, "10.1.2")]
)
def test_bad_tcp_routes_are_refused(registry: Registry, port: int, ip: str | None) -> None:
    with pytest.raises(InvalidHostError):
        registry.add_addr(port, "tcp-secret", ip=ip)
    assert registry.tcp_routes() == []


# -- lifetime ----------------------------------------------------------------------------


def test_flush_has_nothing_to_wait_for_on_local_registries(registry: Registry) -> None:
    registry.add_host("app.example.com", "secret-1")
    asyncio.run(registry.flush())
    assert registry.lookup_host("app.example.com") == registry.key_for("secret-1")


def test_close_is_idempotent_and_a_registry_is_a_context_manager(make_registry: Factory) -> None:
    with make_registry() as registry:
        registry.add_host("app.example.com", "secret-1")
    registry.close()
