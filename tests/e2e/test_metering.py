"""Metering under `computenet up`: every request leaves one usage record, none is lost on a
graceful stop, and `computenet usage` adds up to what the clients were told.

Real processes: `computenet up` (SQLite store), its `sim` replicas, the OpenAI SDK, the CLI.
The usage is read after a *restart*, so the records must have reached the store before
the first `up` exited — the meter writes in batches, off the request path.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import openai
import pytest

from .harness import Up, cli

pytestmark = pytest.mark.e2e


def test_usage_totals_equal_the_sum_of_the_responses_usage_across_a_graceful_restart(tmp_path: Path) -> None:
    expected = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    with Up(tmp_path) as first:
        first.wait_ready("demo-llm", 2)
        client = openai.OpenAI(base_url=first.url + "/v1", api_key="unused", max_retries=0)
        for i in range(12):
            reply = client.chat.completions.create(
                model="demo-llm", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=3 + i
            )
            assert reply.usage is not None
            expected["prompt_tokens"] += reply.usage.prompt_tokens
            expected["completion_tokens"] += reply.usage.completion_tokens
            expected["requests"] += 1
        stream = client.chat.completions.create(
            model="demo-llm",
            messages=[{"role": "user", "content": "stream please"}],
            max_tokens=5,
            stream=True,
        )
        chunks = list(stream)
        usage = chunks[-1].usage  # the gateway asks the backend for it even when the client did not
        assert usage is not None and usage.completion_tokens == 5
        expected["prompt_tokens"] += usage.prompt_tokens
        expected["completion_tokens"] += usage.completion_tokens
        expected["requests"] += 1
        assert first.stop(signal.SIGTERM) == 0  # at once: records still pending must be flushed
    with Up(tmp_path) as second:
        second.wait_ready("demo-llm", 2)
        result = cli("usage", "-o", "json", url=second.url)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        rows = rows["items"] if isinstance(rows, dict) else rows
        got = {
            "prompt_tokens": sum(r["promptTokens"] for r in rows),
            "completion_tokens": sum(r["completionTokens"] for r in rows),
            "requests": sum(r["requests"] for r in rows),
        }
        assert got == expected
        table = cli("usage", url=second.url)
        assert "demo-llm" in table.stdout and "TOTAL" in table.stdout
