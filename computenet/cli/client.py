"""The CLI's client of the control API, and how it finds the server.

Where the server is, first match wins: `--server`, `$COMPUTENET_SERVER`, the
`server.json` that `computenet up` writes into its state directory, then
http://127.0.0.1:8080.

Which key it sends as `Authorization: Bearer` (needed when the server runs with
auth on): `$COMPUTENET_API_KEY`, else the `admin.key` that `computenet up --auth`
writes into its state directory; none when neither is there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"
SERVER_FILE = "server.json"
ADMIN_KEY_FILE = "admin.key"
API_KEY_ENV = "COMPUTENET_API_KEY"


class CliError(Exception):
    """An error to print as it is, then exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def find_server(flag: str | None, env: str | None, state_dir: Path) -> str:
    if flag:
        return flag.rstrip("/")
    if env:
        return env.rstrip("/")
    try:
        return str(json.loads((state_dir / SERVER_FILE).read_text())["url"]).rstrip("/")
    except (OSError, ValueError, KeyError):
        return DEFAULT_SERVER


def find_api_key(env: str | None, state_dir: Path) -> str | None:
    if env and env.strip():
        return env.strip()
    try:
        return (state_dir / ADMIN_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


class ControlClient:
    def __init__(self, server: str, timeout_s: float = 10.0, *, api_key: str | None = None) -> None:
        self.server = server
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.Client(base_url=server + "/api/v1", timeout=timeout_s, headers=headers)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the ComputeNet control API at {self.server} ({exc.__class__.__name__}); "
                "is `computenet up` running? Pass --server URL to use another."
            ) from exc
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def close(self) -> None:
        self._http.close()


def _error_from(resp: httpx.Response) -> CliError:
    try:
        error = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return CliError(f"error: the server answered HTTP {resp.status_code}: {resp.text[:500]}")
    if resp.status_code in (401, 403):
        return CliError(
            f"error: {error.get('message')}\n"
            f"hint: set ${API_KEY_ENV} to an admin key; `computenet up --auth` writes one to "
            f"{ADMIN_KEY_FILE} in its state directory, which the CLI reads when the variable is unset"
        )
    problems = error.get("problems")
    message = "\n".join(f"error: {p}" for p in problems) if problems else f"error: {error.get('message')}"
    return CliError(message, exit_code=2 if resp.status_code in (400, 422) else 1)
