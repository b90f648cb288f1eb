"""Baseline (b): a bare aiohttp handler — read the body, answer 202. The ceiling for R_ingest.

``python -m bench.baselines.bare --port P`` runs one process; the bench starts N of them with
SO_REUSEPORT when it measures N workers. Same event loop (uvloop) and access-log setting
(off) as the gateway.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    """Read the whole body once, answer 202 with no body."""
    await request.read()
    return web.Response(status=202)


def main() -> None:
    """Serve ``POST /{anything}`` on the given port until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    app.router.add_get("/{tail:.*}", handle)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        reuse_port=True,
        access_log=None,
        print=None,
        loop=loop_factory() if loop_factory else None,
    )


if __name__ == "__main__":
    main()
