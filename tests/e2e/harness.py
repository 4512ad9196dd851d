"""Start `computenet up` as a real subprocess on free 127.0.0.1 ports, and talk to it.

Nothing is faked: the replicas are real `sim` engine processes started by the local pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types import CompletionUsage

from computenet.pools.processes import free_port

STARTUP_TIMEOUT_S = 60.0


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def cli(
    *args: str, url: str | None = None, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    server = ["--server", url] if url else []
    return subprocess.run(
        [sys.executable, "-m", "computenet", *server, *args],
        capture_output=True,
        text=True,
        input=input_text,
        timeout=60,
    )


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def live_processes(matches: Callable[[list[str]], bool]) -> list[int]:
    """Pids of live (not zombie) processes whose /proc/PID/stat fields after the command name
    (0 state, 1 ppid, 2 process group, 3 session) satisfy `matches`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and matches(fields):
                found.append(int(entry.name))
    return found


def processes_in_groups(pgids: set[int]) -> list[int]:
    return live_processes(lambda fields: int(fields[2]) in pgids)


class Up:
    """A running `computenet up` with its own state directory."""

    def __init__(self, state_dir: Path, manifest: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        args = ["up", "--state-dir", str(state_dir), "--port", str(self.port)]
        if manifest:
            args += ["-f", str(manifest)]
        self.log = (state_dir / "up.out").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "computenet", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def api(self, path: str) -> Any:
        resp = self.http.get("/api/v1" + path)
        resp.raise_for_status()
        return resp.json()

    def ready_replicas(self, deployment: str) -> int:
        try:
            return int(self.api(f"/deployments/{deployment}").get("status", {}).get("readyReplicas", 0))
        except httpx.HTTPError:
            return 0

    def wait_ready(self, deployment: str, replicas: int, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"computenet up exited early:\n{self.output()}"
            return self.ready_replicas(deployment) >= replicas

        wait_for(ready, timeout_s, f"{deployment} to have {replicas} ready replicas")

    def replicas(self) -> list[dict[str, Any]]:
        return list(self.api("/replicas")["items"])

    def output(self) -> str:
        self.log.flush()
        return (self.state_dir / "up.out").read_text()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.http.close()
        self.log.close()
        return code

    def __enter__(self) -> Up:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.http.close()
        self.log.close()


def deployment_json(up: Up, name: str) -> dict[str, Any]:
    return json.loads(cli("get", "deployment", name, "-o", "json", url=up.url).stdout)


def streamed_chat(
    client: openai.OpenAI, model: str, content: str, max_tokens: int
) -> tuple[str, CompletionUsage | None]:
    """One streamed chat completion through the SDK, usage asked for: its text and the last chunk's usage."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].usage
