"""The engine-metrics scraper against real sim replicas and scripted endpoints on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiohttp import web

from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.gateway.routing.scrape import EngineScraper
from computenet.gateway.routing.signals import SignalBoard

from ..servers import serve, serve_aiohttp

INTERVAL_S = 0.02


def vllm_text(running: int) -> bytes:
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="m"}} {running}.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    ).encode()


class MetricsServer:
    """A bare keep-alive HTTP/1.1 server answering every request with `body`; counts connections."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.port = 0
        self.connections = 0  # ever opened
        self.open = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Die: stop listening and drop every connection."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()
        await eventually(lambda: self.open == 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self._writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                writer.write(head % len(self.body) + self.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def metrics_server(body: bytes) -> AsyncIterator[MetricsServer]:
    server = MetricsServer(body)
    await server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(AssertionError):  # already stopped by the test
            await server.stop()


@contextlib.asynccontextmanager
async def scraping(board: SignalBoard, timeout_s: float = 1.0) -> AsyncIterator[EngineScraper]:
    scraper = EngineScraper(board, interval_s=INTERVAL_S, timeout_s=timeout_s)
    await scraper.start()
    try:
        yield scraper
    finally:
        await scraper.close()


def running(board: SignalBoard, replica: str) -> float | None:
    """The fresh engine figure the router would see, or None."""
    load = board.engine(replica)
    return None if load is None else load.running


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_sim_load_reaches_the_board() -> None:
    board = SignalBoard()
    config = SimConfig(model="m", max_num_seqs=1, default_max_tokens=20, time_scale=1)
    async with (
        serve(create_sim_app(config)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        scraping(board) as scraper,
    ):
        scraper.track("r0", url, "sim")
        await eventually(lambda: board.engine("r0") is not None)
        body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
        requests = [asyncio.create_task(client.post("/v1/chat/completions", json=body)) for _ in range(3)]

        def one_running_two_waiting() -> bool:
            load = board.engine("r0")
            return load is not None and (load.running, load.waiting) == (1, 2)

        await eventually(one_running_two_waiting)
        assert board.engine("r0").kv_cache_usage > 0  # type: ignore[union-attr]
        assert all(r.status_code == 200 for r in await asyncio.gather(*requests))

        def idle_with_all_tokens_counted() -> bool:
            load = board.engine("r0")
            figures = (0, 0, 0, 3 * 20)
            return load is not None and (
                (load.running, load.waiting, load.kv_cache_usage, load.generation_tokens_total) == figures
            )

        await eventually(idle_with_all_tokens_counted)
        assert board.engine("r0").prefix_cache_queries_total > 0  # type: ignore[union-attr]


async def test_dead_endpoint_goes_stale_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="computenet.gateway.routing.scrape")
    board = SignalBoard(stale_after_s=0.3)
    async with metrics_server(vllm_text(running=3)) as server, scraping(board, timeout_s=0.2) as scraper:
        scraper.track("r0", server.url, "vllm")
        await eventually(lambda: running(board, "r0") == 3)

        await server.stop()
        await eventually(lambda: running(board, "r0") is None)
        assert board.of("r0").scrape_errors >= 2
        assert board.of("r0").engine is not None  # the last figures are kept, just not trusted

        server.body = vllm_text(running=5)
        await server.start()  # back on the same port
        await eventually(lambda: running(board, "r0") == 5)
        assert board.of("r0").scrape_errors == 0

    # Many failed scrapes, one warning; one line when it recovers.
    records = [r for r in caplog.records if "r0" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert "failed" in records[0].getMessage() or "refused" in records[0].getMessage().lower()


async def test_scrapes_reuse_one_connection_and_untrack_releases_it() -> None:
    board = SignalBoard()
    async with metrics_server(vllm_text(running=1)) as server, scraping(board) as scraper:
        scraper.track("r0", server.url, "vllm")
        await eventually(lambda: server.requests >= 5)
        assert server.connections == 1  # keep-alive

        scraper.untrack("r0")
        assert scraper.tracked() == set()
        await eventually(lambda: server.open == 0)  # its connection is closed
        requests = server.requests
        await asyncio.sleep(5 * INTERVAL_S)
        assert server.requests == requests
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("scrape ")]


async def test_close_releases_connections_and_tasks() -> None:
    board = SignalBoard()
    async with metrics_server(vllm_text(running=1)) as server:
        async with scraping(board) as scraper:
            scraper.track("r0", server.url, "vllm")
            scraper.track("r1", server.url, "vllm")
            await eventually(lambda: server.requests >= 4)
        await eventually(lambda: server.open == 0)
        assert scraper.tracked() == {"r0", "r1"}


async def test_slow_endpoint_delays_no_one_and_is_not_scraped_twice_at_once() -> None:
    board = SignalBoard()
    slow_calls = 0
    fast_calls = 0

    async def slow(_request: web.Request) -> web.Response:
        nonlocal slow_calls
        slow_calls += 1
        await asyncio.sleep(30)  # cancelled when the scraper gives up and hangs up
        return web.Response(text="")

    async def fast(_request: web.Request) -> web.Response:
        nonlocal fast_calls
        fast_calls += 1
        return web.Response(body=vllm_text(running=2), content_type="text/plain")

    slow_app, fast_app = web.Application(), web.Application()
    slow_app.router.add_get("/metrics", slow)
    fast_app.router.add_get("/metrics", fast)
    async with (
        serve_aiohttp(slow_app, cancel_on_disconnect=True) as slow_url,
        serve_aiohttp(fast_app) as fast_url,
        scraping(board, timeout_s=2.0) as scraper,
    ):
        scraper.track("slow", slow_url, "vllm")
        scraper.track("fast", fast_url, "vllm")
        await eventually(lambda: slow_calls == 1)
        before = fast_calls
        await eventually(lambda: fast_calls >= before + 10, timeout_s=1.5)
        assert slow_calls == 1  # still in flight: not scraped again meanwhile
        assert board.engine("fast") is not None and board.engine("slow") is None


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b"internal error"), (200, b"<!DOCTYPE html>\n<html><body>login</body></html>\n")],
)
async def test_bad_answers_count_as_scrape_errors(status: int, body: bytes) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    board = SignalBoard()
    async with serve_aiohttp(app) as url, scraping(board) as scraper:
        scraper.track("r0", url, "sglang")
        await eventually(lambda: board.of("r0").scrape_errors >= 3)
        assert board.engine("r0") is None


def test_unknown_engine_is_refused_by_name() -> None:
    scraper = EngineScraper(SignalBoard())
    with pytest.raises(ValueError, match=r"'tgi'.*known engines: sglang, sim, vllm"):
        scraper.track("r0", "http://127.0.0.1:1", "tgi")
    assert scraper.tracked() == set()


async def test_tracking_again_with_a_new_address_moves_the_scrape() -> None:
    board = SignalBoard()
    async with (
        metrics_server(vllm_text(running=1)) as old,
        metrics_server(vllm_text(running=7)) as new,
        scraping(board) as scraper,
    ):
        scraper.track("r0", old.url, "vllm")
        await eventually(lambda: old.requests >= 1)
        scraper.track("r0", new.url, "vllm")
        await eventually(lambda: running(board, "r0") == 7)
        await eventually(lambda: old.open == 0)
