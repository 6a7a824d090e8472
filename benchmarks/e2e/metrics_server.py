"""A ytun server for the end-to-end benchmark, with or without the Prometheus metrics:
``--ytun-server`` and ``--peer-server`` both start it, the peer with ``--metrics``, so one
run measures what the metrics cost (the access log is off in both).

    python -m benchmarks.e2e.metrics_server --listen 127.0.0.1:8000 \\
        --host bench.local:8000=SECRET [--metrics]

With ``--metrics`` the server is observed by :class:`ytun.control.metrics.TunnelMetrics`
and its ``/metrics`` is scraped every ``--scrape-interval`` seconds (1 s: harsher than
any Prometheus setup), so the scrape's own cost is in the figure too.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import urllib.request

from ytun import Server
from ytun.control import web
from ytun.control.metrics import add_metrics_routes
from ytun.tunnel.addr import split_host_port


async def main(args: argparse.Namespace) -> None:
    server = Server(access_log=None)
    host, _, identifier = args.host.partition("=")
    server.add_host(host, identifier)
    address, port = split_host_port(args.listen)
    await server.serve(address, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    scraper = None
    if args.metrics:
        router = web.Router()
        add_metrics_routes(router, server)
        admin = await web.serve(router, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{admin.sockets[0].getsockname()[1]}/metrics"
        if args.scrape_interval > 0:
            scraper = asyncio.ensure_future(scrape_forever(url, args.scrape_interval))
    await stop.wait()
    if scraper is not None:
        scraper.cancel()
    await server.close(grace=1)


async def scrape_forever(url: str, interval: float) -> None:
    def scrape() -> None:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()

    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(scrape)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--host", required=True, help="HOST=IDENTIFIER")
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--log-level", default="warning")  # accepted like ytun server's
    import uvloop

    uvloop.run(main(parser.parse_args()))
