"""Host names the registry accepts (``normalize_host``, ``normalize_subdomain``) and the
random subdomains it hands out: RFC 1123 labels, lower-cased, every refusal an
``InvalidHostError`` with a reason, and a Host-header splitter that never raises."""

from __future__ import annotations

import os
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ytun import InvalidHostError
from ytun.registry.names import (
    normalize_host,
    normalize_subdomain,
    random_subdomain,
    split_port,
)

FUZZ = settings(
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "200")), deadline=None, database=None
)

LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join).filter(lambda n: len(n) <= 253)
RFC1123 = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app.example.com", "app.example.com"),
        ("APP.Example.COM", "app.example.com"),
        ("localhost", "localhost"),
        ("app.localhost:8000", "app.localhost:8000"),
        ("app.example.com:08080", "app.example.com:8080"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("123.example.com", "123.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("app.example.com:65535", "app.example.com:65535"),
    ],
)
def test_good_hosts_are_lower_cased(text: str, expected: str) -> None:
    assert normalize_host(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("http://app.example.com", "URL"),
        ("https://app.example.com/x", "URL"),
        ("app.example.com/path", "path"),
        ("app.example.com?x=1", "query"),
        ("app.example.com#top", "fragment"),
        ("user@app.example.com", "userinfo"),
        ("user:pass@app.example.com", "userinfo"),
        ("app example.com", "whitespace"),
        (" app.example.com", "whitespace"),
        ("app.example.com\n", "whitespace"),
        ("app.example.com\x00", "control"),
        ("app..example.com", "empty label"),
        (".app.example.com", "empty label"),
        ("app.example.com.", "empty label"),
        ("-app.example.com", "starts or ends"),
        ("app-.example.com", "starts or ends"),
        ("app_1.example.com", "'_'"),
        ("*.example.com", "'*'"),
        ("bücher.example", "ASCII"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("app.example.com:", "port"),
        ("app.example.com:0", "port"),
        ("app.example.com:65536", "port"),
        ("app.example.com:http", "port"),
        ("app.example.com:80:80", "more than one"),
        ("app.example.com:\u00b2", "port"),
        (":8080", "empty"),
        ("[::1]", "IPv6"),
        ("[::1]:8080", "IPv6"),
        ("::1", "more than one"),
    ],
)
def test_bad_hosts_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidHostError, match=re.escape(reason)):
        normalize_host(text)


def test_invalid_host_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        normalize_host("http://x")


@FUZZ
@given(name=NAME, port=st.none() | st.integers(min_value=1, max_value=65535))
def test_every_rfc1123_name_with_or_without_a_port_is_accepted(name: str, port: int | None) -> None:
    text = name if port is None else f"{name}:{port}"
    assert normalize_host(text) == text.lower()
    assert normalize_host(text.lower()) == text.lower()  # idempotent


@FUZZ
@given(text=st.text(max_size=80))
def test_any_text_is_either_a_clean_host_or_a_typed_refusal(text: str) -> None:
    try:
        host = normalize_host(text)
    except InvalidHostError as exc:
        assert str(exc)
        return
    name, _, port = host.partition(":")
    assert RFC1123.fullmatch(name) and len(name) <= 253
    assert not port or 0 < int(port) <= 65535
    assert normalize_host(host) == host


# -- subdomains --------------------------------------------------------------------------


def test_a_subdomain_is_one_lower_cased_label() -> None:
    assert normalize_subdomain("Foo-1") == "foo-1"


@pytest.mark.parametrize("label", ["", "a.b", "-a", "a-", "a_b", "a" * 64, "é", "a:80", "a/b"])
def test_bad_subdomains_are_refused(label: str) -> None:
    with pytest.raises(InvalidHostError):
        normalize_subdomain(label)


def test_random_subdomains_are_readable_valid_and_distinct() -> None:
    labels = [random_subdomain() for _ in range(500)]
    for label in labels:
        assert len(label) == 8
        assert set(label) <= set(string.ascii_lowercase + string.digits)
        assert label[0] in string.ascii_lowercase
        assert normalize_subdomain(label) == label
    assert len(set(labels)) == len(labels)


# -- splitting Host headers (the lookup path: never raises) -----------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app.example.com", ("app.example.com", 0)),
        ("app.example.com:8000", ("app.example.com", 8000)),
        ("app.example.com:0", ("app.example.com", 0)),
        ("app.example.com:65536", ("app.example.com", 0)),
        ("app.example.com:\u00b2", ("app.example.com", 0)),
        ("app.example.com:", ("app.example.com", 0)),
        ("::1", ("::1", 0)),
        ("", ("", 0)),
    ],
)
def test_split_port(text: str, expected: tuple[str, int]) -> None:
    assert split_port(text) == expected


@FUZZ
@given(text=st.text(max_size=60))
def test_split_port_never_raises(text: str) -> None:
    name, port = split_port(text)
    assert text.startswith(name)
    assert 0 <= port <= 65535
