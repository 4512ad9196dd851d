"""Responses that stop generating the moment the client goes away.

Shared by the `sim` engine (to free its slot) and the gateway (to drop the upstream
request), which is why it lives beside the engines rather than inside `sim`.

A client that disconnects must free its engine slot at once, not after the
remaining tokens have been paced out: the work runs in a task raced against
`http.disconnect` on the ASGI receive channel, whatever the server's ASGI
version, and the event generator is closed on every way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


async def run_until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work`, cancelling it if the client disconnects first; True when it completed.

    An exception from `work` propagates unchanged.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _stop(watch_task)
        await _stop(work_task)
    if work_task.cancelled():
        return False
    work_task.result()
    return True


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` of pre-encoded events, cancelled when the client goes."""

    def __init__(self, events: AsyncGenerator[bytes, None], headers: Mapping[str, str] | None = None) -> None:
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await run_until_disconnect(receive, self._send_all(send))
        finally:
            await self._events.aclose()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return  # ASGI 2.4 servers report a gone client by failing the send


class DeferredJSONResponse(Response):
    """JSON computed while the response is being sent, abandoned if the client disconnects first."""

    def __init__(self, produce: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        super().__init__(media_type="application/json")
        self._produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        produced: list[dict[str, Any]] = []

        async def work() -> None:
            produced.append(await self._produce())

        if await run_until_disconnect(receive, work()):
            await JSONResponse(produced[0])(scope, receive, send)
