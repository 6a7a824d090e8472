"""Shared fixtures: every async test runs on uvloop and on the stock asyncio loop, and
``codec`` / ``impl`` select the compiled frame codec or its pure-Python twin."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType

import pytest

from ytun import _frames_py
from ytun.yamux import codec as frames
from ytun.yamux import session as session_module

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


def _implementations() -> list[ModuleType]:
    return frames.available()


def _impl_id(module: ModuleType) -> str:
    return "py" if module is _frames_py else "c"


@pytest.fixture(params=_implementations(), ids=_impl_id)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """One frame-codec implementation (compiled ``c`` or pure-Python ``py``)."""
    return request.param


@pytest.fixture(params=_implementations(), ids=_impl_id)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Run the yamux session on one codec implementation for the duration of a test."""
    monkeypatch.setattr(session_module, "codec", request.param)
    yield request.param
