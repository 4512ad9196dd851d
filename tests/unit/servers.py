"""Serve an ASGI app on a free 127.0.0.1 port inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from aiohttp import web

from computenet.pools.processes import free_port


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serve_aiohttp(
    app: web.Application, *, cancel_on_disconnect: bool = False, shutdown_timeout_s: float = 60.0
) -> AsyncIterator[str]:
    """An aiohttp app on a free 127.0.0.1 port: the quickest way to script an upstream's behaviour.

    `cancel_on_disconnect` stops a handler as soon as its client goes away, as vLLM's server does;
    `shutdown_timeout_s` bounds how long open requests (long watches, say) may hold up the exit.
    """
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=cancel_on_disconnect,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
