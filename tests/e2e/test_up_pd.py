"""End to end: `computenet up -f computenet/examples/pd.yaml`, a prefill/decode deployment of real sim
processes, served in two legs by the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import computenet

from .harness import Up, streamed_chat

pytestmark = pytest.mark.e2e

EXAMPLE = Path(computenet.__file__).parent / "examples" / "pd.yaml"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with Up(tmp_path_factory.mktemp("pd-state"), manifest=EXAMPLE) as running:
        running.wait_ready("pd-llm", 3)
        yield running


def sim_stats(up: Up, replica: str) -> dict[str, Any]:
    url = next(r["url"] for r in up.replicas() if r["name"] == replica)
    stats: dict[str, Any] = httpx.get(url + "/sim/stats", timeout=5).json()
    return stats


def test_the_example_is_served_prefill_then_decode(up: Up) -> None:
    body = {
        "model": "pd-llm",
        "messages": [{"role": "user", "content": "Explain PD. " * 30}],
        "max_tokens": 6,
    }
    response = up.http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 6
    assert response.headers["x-computenet-prefill-replica"] == "pd-llm-prefill-0"
    decode = response.headers["x-computenet-replica"]
    assert decode in {"pd-llm-decode-0", "pd-llm-decode-1"}
    decoded = sim_stats(up, decode)
    assert decoded["kv_transfer"]["transfers"] >= 1
    assert decoded["prompt_tokens_by_source"]["external_kv_transfer"] > 0


def test_streaming_through_the_openai_sdk(up: Up) -> None:
    client = openai.OpenAI(base_url=up.url + "/v1", api_key="not-needed", max_retries=0)
    text, usage = streamed_chat(client, "pd-llm", "Count to four", max_tokens=4)
    assert len(text.split()) == 4
    assert usage is not None and usage.completion_tokens == 4


def test_every_replica_publishes_kv_events_and_its_side(up: Up) -> None:
    replicas = {r["name"]: r for r in up.replicas()}
    assert {r["role"] for r in replicas.values()} == {"prefill", "decode"}
    for replica in replicas.values():
        assert replica["kvEvents"].startswith("tcp://127.0.0.1:")
        assert replica["kvEventsReplay"].startswith("tcp://127.0.0.1:")
    log = (up.state_dir / "logs" / "pd-llm-decode-0.log").read_text()
    assert "starting (restart 0)" in log
