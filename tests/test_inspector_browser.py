"""The inspector's page in a real browser: headless Chromium, driven over the DevTools
protocol (a WebSocket, with aiohttp's client), against a real tunnel. The page lists a
request made through the tunnel, adds one made while it is open (server-sent events),
shows its headers with secrets masked, and its replay button reaches the origin again.

Needs Debian's ``chromium`` (``.ci/run`` installs it); without it the test is skipped
with that reason. Chromium runs with ``--no-sandbox`` (CI runs as root), a fresh profile
in a temporary directory, and no network but loopback; it is stopped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pathlib
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tunnel_helpers import Tunnel

from ytun.inspector import Inspector

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

BROWSER_START = 40  # seconds for Chromium to open its DevTools port
PAGE_WAIT = 20  # seconds for something to appear on the page
TIMEOUT = aiohttp.ClientTimeout(total=20)


class DevTools:
    """The smallest DevTools protocol client: one page, commands answered in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._ws.send_json({"id": message_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive(), PAGE_WAIT)
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools connection ended: {message}")
            data = json.loads(message.data)
            if data.get("id") == message_id:
                if "error" in data:
                    raise AssertionError(f"{method} failed: {data['error']}")
                return data["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, expression: str) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + PAGE_WAIT
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                html = await self.evaluate("document.body.innerHTML")
                raise AssertionError(f"never true on the page: {expression}\n{html[:3000]}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def chromium(profile: pathlib.Path) -> AsyncIterator[int]:
    """Headless Chromium with a fresh profile; yields its DevTools port."""
    assert CHROMIUM is not None
    log = (profile.parent / "chromium.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",  # Chromium picks a free port and writes it down
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--metrics-recording-only",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its helper processes share its group, stopped with it
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = asyncio.get_running_loop().time() + BROWSER_START
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                log.flush()
                output = (profile.parent / "chromium.log").read_text(errors="replace")
                raise AssertionError(f"Chromium did not start:\n{output[-3000:]}")
            await asyncio.sleep(0.1)
        yield int(port_file.read_text().split()[0])
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        log.close()


def counting_origin() -> tuple[web.Application, Counter[str]]:
    hits: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(text=f"hit {hits[request.path]} of {request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app, hits


async def wait_for(predicate, timeout: float = PAGE_WAIT) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_the_page_lists_live_masks_and_replays(tmp_path: pathlib.Path) -> None:
    app, hits = counting_origin()
    inspector = Inspector()
    await inspector.start("127.0.0.1", 0)
    profile = tmp_path / "profile"
    profile.mkdir()
    try:
        async with (
            Tunnel(app=app, client_kwargs={"inspector": inspector}) as tunnel,
            aiohttp.ClientSession(timeout=TIMEOUT) as http,
        ):

            async def through_tunnel(path: str) -> str:
                async with http.get(
                    f"{tunnel.url}{path}",
                    headers={"Host": tunnel.host, "Authorization": "Bearer browser-SECRET"},
                ) as response:
                    assert response.status == 200
                    return await response.text()

            assert await through_tunnel("/before") == "hit 1 of /before"
            async with chromium(profile) as devtools_port:
                async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
                    targets = await response.json()
                page = next(t for t in targets if t.get("type") == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    browser = DevTools(ws)
                    await browser.call("Page.navigate", url=inspector.url)
                    row = "document.querySelector('#rows tr[data-path=\"{}\"]')"
                    # a request made before the page was opened
                    await browser.wait_until(f"{row.format('/before')} !== null")
                    await browser.wait_until(
                        "document.getElementById('live').textContent === 'live'"
                    )
                    # one made while it is open arrives by the live feed
                    assert await through_tunnel("/during") == "hit 1 of /during"
                    status = await browser.wait_until(
                        f"{row.format('/during')}?.querySelector('.status').textContent === '200'"
                        f" && {row.format('/during')}.querySelector('.status').textContent"
                    )
                    assert status == "200"
                    # its details: headers shown, the secret masked
                    await browser.evaluate(f"{row.format('/during')}.click()")
                    headers = await browser.wait_until(
                        "document.getElementById('request-headers').textContent"
                    )
                    assert "Authorization" in headers and "••••" in headers
                    html = await browser.evaluate("document.documentElement.outerHTML")
                    assert "browser-SECRET" not in html
                    # replay: the origin sees the request a second time
                    await browser.evaluate(
                        f"{row.format('/before')}.querySelector('button.replay').click()"
                    )
                    await wait_for(lambda: hits["/before"] == 2)
                    replay_of = await browser.wait_until(
                        "document.querySelector('#rows tr[data-replay-of]')?.dataset.replayOf"
                    )
                    assert replay_of == str(inspector.log.newest_first()[-1].id)
                    # the message moves from "Replaying #N…" to the replay's own number
                    assert "is #" in await browser.wait_until(
                        "(t => t.includes('is #') && t)"
                        "(document.getElementById('message').textContent)"
                    )
    finally:
        await inspector.close()
    assert hits == {"/before": 2, "/during": 1}
