"""The real `python -m computenet.engines.sim` process, driven by the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

MODEL = "sim-proc"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_healthy(process: asyncio.subprocess.Process, base_url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url) as client:
        while time.monotonic() < deadline:
            assert process.returncode is None, "sim exited before becoming healthy"
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    pytest.fail(f"sim at {base_url} not healthy within {timeout_s} s")


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    port = _free_port()
    argv = ["-m", "computenet.engines.sim", "--model", MODEL, "--port", str(port), "--time-scale", "20"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(process, base_url)
        yield base_url
    finally:
        if process.returncode is None:
            process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode in (0, -15), stderr.decode()


@pytest.mark.e2e
async def test_openai_sdk_against_sim_process(sim_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="unused", max_retries=0) as client:
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hi!"}]
        plain = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
        assert plain.choices[0].finish_reason == "length"
        assert plain.usage is not None and plain.usage.completion_tokens == 5

        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
        deltas, usage = [], None
        async for chunk in stream:
            deltas += [choice.delta.content or "" for choice in chunk.choices]
            usage = chunk.usage or usage
        assert "".join(deltas) == plain.choices[0].message.content
        assert usage is not None and usage.total_tokens == plain.usage.total_tokens

        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=messages)


@pytest.mark.e2e
async def test_unknown_gpu_exits_2_naming_the_known_ones() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *["-m", "computenet.engines.sim", "--model", MODEL, "--gpu", "Z80"],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "unknown GPU 'Z80'; known: A100-40G" in stderr.decode()


@pytest.mark.e2e
async def test_unusable_kv_events_endpoint_exits_2_without_a_traceback() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *["-m", "computenet.engines.sim", "--model", MODEL, "--port", "0", "--kv-events-endpoint", "bogus"],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "--kv-events-endpoint bogus: cannot bind" in stderr.decode()
    assert "Traceback" not in stderr.decode()
