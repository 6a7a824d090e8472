"""Shared fixtures: every async test runs on uvloop and on the stock asyncio loop, and
``codec`` selects the compiled frame codec or its pure-Python twin; yamux tests pass it to
``Session(codec=...)``.

``--hypothesis-profile=long`` runs the property tests with many more examples, on demand."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType

import pytest
from hypothesis import settings

from ytun.tunnel import http1, split
from ytun.tunnel import scan as http_scan
from ytun.yamux import codec as frames

try:
    import uvloop
except ImportError:  # not on every platform
    uvloop = None


# Exceptions that reached an event loop's handler during the current test.
LOOP_ERRORS: list[dict] = []


def _recording(
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> Callable[[], asyncio.AbstractEventLoop]:
    def make() -> asyncio.AbstractEventLoop:
        loop = factory()
        loop.set_exception_handler(lambda _loop, context: LOOP_ERRORS.append(context))
        return loop

    return make


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories = {"asyncio": _recording(asyncio.new_event_loop)}
    if uvloop is not None:
        factories["uvloop"] = _recording(uvloop.new_event_loop)
    return factories


@pytest.fixture(autouse=True)
def no_loop_errors() -> Iterator[list[dict]]:
    """Any exception that reaches the event loop's handler fails the test. A test that
    expects one takes this fixture and empties the list."""
    LOOP_ERRORS.clear()
    yield LOOP_ERRORS
    errors = list(LOOP_ERRORS)
    LOOP_ERRORS.clear()
    assert not errors, f"unhandled errors in the event loop: {errors}"


LONG_EXAMPLES = 20_000
settings.register_profile("long", max_examples=LONG_EXAMPLES, deadline=None)


def pytest_configure(config: pytest.Config) -> None:
    # Property tests that pin their own settings read their example count from
    # YTUN_FUZZ_EXAMPLES; the long profile raises it for all of them at once.
    if config.getoption("--hypothesis-profile", default=None) == "long":
        os.environ.setdefault("YTUN_FUZZ_EXAMPLES", str(LONG_EXAMPLES))


@pytest.fixture(params=http_scan.available(), ids=http_scan.implementation_name)
def http_scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """One HTTP-scanning implementation (compiled ``c`` or pure-Python ``py``), put in
    place of the selected one for the splitters."""
    module = request.param
    monkeypatch.setattr(split, "plain_head_end", module.plain_head_end)
    monkeypatch.setattr(split, "response_framing", module.response_framing)
    monkeypatch.setattr(http1, "request_fields", module.request_fields)
    return module


@pytest.fixture(params=frames.available(), ids=frames.implementation_name)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """One frame-codec implementation (compiled ``c`` or pure-Python ``py``)."""
    return request.param
