"""`computenet keys` and `computenet usage` end to end through `main`, against a real control API
served with auth on; and the bootstrap and key-following that `computenet up --auth` uses."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from computenet.api import ApiKey, UsageRecord
from computenet.cli.auth import auth_banner, ensure_admin_key, follow_keys
from computenet.cli.main import main
from computenet.control import create_control_app
from computenet.store import ResourceStore, sqlite_url

from ..records import usage_record
from ..servers import serve
from ..test_control_api import NoReplicas


def _exit_code(argv: list[str]) -> int:
    """`main` exits only on failure; a control-plane command that succeeds returns."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


async def _exit_code_in_thread(argv: list[str]) -> int:
    """The CLI's blocking client runs beside the test's event loop, which serves the control API."""
    return await asyncio.to_thread(_exit_code, argv)


@dataclass
class Plane:
    store: ResourceStore
    url: str
    state_dir: Path  # where `up --auth` wrote admin.key, as the CLI's --state-dir
    admin_key: str

    async def cli(self, *argv: str) -> int:
        return await _exit_code_in_thread([*argv, "--server", self.url, "--state-dir", str(self.state_dir)])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COMPUTENET_API_KEY", "COMPUTENET_SERVER", "COMPUTENET_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    admin_key = await ensure_admin_key(store, tmp_path)
    assert admin_key is not None
    try:
        control = create_control_app(store, NoReplicas(), auth_required=True)
        async with serve(Starlette(routes=[Mount("/api", app=control)])) as url:  # as `up` serves it
            yield Plane(store, url, tmp_path, admin_key)
    finally:
        await store.close()


async def test_create_list_revoke(plane: Plane, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["keys", "create", "--tenant", "acme", "--models", "llm, embed", "--expires", "30d"]
    assert await plane.cli(*argv, "--rpm", "60", "--budget-usd", "2.5", "--budget-period", "day") == 0
    out, err = capsys.readouterr()
    text = out.strip()
    assert len(out.splitlines()) == 1 and text.startswith("cn-") and "not shown again" in err
    (key,) = [k for k in await plane.store.keys.list() if not k.admin]
    assert key.matches(text) and key.models == ("llm", "embed") and key.tenant == "acme"
    assert key.limits.requests_per_minute == 60 and key.limits.budget_usd == 2.5
    assert key.expires_at == pytest.approx(time.time() + 30 * 86400, abs=10)

    assert await plane.cli("keys", "list", "-o", "json") == 0
    listed = capsys.readouterr().out
    assert text not in listed and key.secret_sha256 not in listed
    assert {k["keyId"] for k in json.loads(listed)} == {key.key_id, plane.admin_key[3:15]}

    assert await plane.cli("keys", "revoke", key.key_id) == 0
    assert capsys.readouterr().out == f"apikey/{key.key_id} revoked\n"
    assert await plane.cli("keys", "list") == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[key.key_id][1:5] == ["acme", "llm,embed", "data-plane", "revoked"]
    assert rows[plane.admin_key[3:15]][1:5] == ["admin", "<all>", "admin", "active"]
    assert await plane.cli("keys", "revoke", "nope") == 1
    assert "not found" in capsys.readouterr().err


async def test_the_cli_key_comes_from_the_environment_first(
    plane: Plane, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data_plane = await plane.store.keys.create("acme")
    monkeypatch.setenv("COMPUTENET_API_KEY", data_plane)
    assert await plane.cli("keys", "list") == 1
    err = capsys.readouterr().err
    assert "data-plane key" in err and "COMPUTENET_API_KEY" in err
    _, admin = await plane.store.keys.create("ops", admin=True)
    monkeypatch.setenv("COMPUTENET_API_KEY", admin)
    (plane.state_dir / "admin.key").unlink()
    assert await plane.cli("keys", "list") == 0


async def test_without_a_key_the_error_names_the_variable(
    plane: Plane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = await _exit_code_in_thread(
        ["usage", "--server", plane.url, "--state-dir", str(tmp_path / "other")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "Authorization: Bearer" in err and "$COMPUTENET_API_KEY" in err and "Traceback" not in err


async def test_usage_reports_totals_per_tenant_model_and_day(
    plane: Plane, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    await plane.store.usage.write_usage(
        [
            _record("a", now, "acme", cost_usd=1.25, latency_s=1.0),
            _record("b", now, "acme", status=500, latency_s=3.0),
            _record("c", now, "beta", model="embed"),
            _record("d", now - 30 * 86400, "acme"),
        ]
    )
    assert await plane.cli("usage", "--since", "7d") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "TENANT", "MODEL", "DAY", "REQUESTS", "ERRORS", "PROMPT", "CACHED", "COMPLETION", "COST_USD", "MEAN_LATENCY_S",
    ]  # fmt: skip
    assert [line.split()[:5] for line in lines[1:3]] == [
        ["acme", "llm", time.strftime("%Y-%m-%d", time.gmtime(now)), "2", "1"],
        ["beta", "embed", time.strftime("%Y-%m-%d", time.gmtime(now)), "1", "0"],
    ]
    assert lines[3].split() == ["TOTAL", "3", "1", "30", "6", "15", "2.2500", "1.500"]

    assert await plane.cli("usage", "--tenant", "acme", "-o", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["tenant"], r["requests"]) for r in rows] == [("acme", "1"), ("acme", "2")]
    assert float(rows[1]["cost_usd"]) == 1.75 and rows[1]["prompt_tokens"] == "20"

    assert await plane.cli("usage", "--until", "7d", "-o", "json") == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert (only["tenant"], only["requests"], only["meanLatencySeconds"]) == ("acme", 1, 0.5)
    assert await plane.cli("usage", "--tenant", "nobody") == 0
    assert capsys.readouterr().out == "No usage found.\n"


async def test_usage_reads_a_standalone_gateways_database_without_a_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `computenet gateway --usage-db URL` wrote, read back with no control API running."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    store = await ResourceStore.open(url)
    now = time.time()
    try:
        await store.usage.write_usage([_record("a", now, "acme"), _record("b", now, "beta")])
    finally:
        await store.close()
    argv = ["usage", "--usage-db", url, "--tenant", "acme", "-o", "json", "--server", "http://127.0.0.1:9"]
    assert await _exit_code_in_thread(argv) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert (only["tenant"], only["requests"], only["costUsd"]) == ("acme", 1, 0.5)


async def test_a_usage_db_from_a_newer_computenet_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.db"
    await (await ResourceStore.open(f"sqlite+aiosqlite:///{path}")).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE computenet_schema SET version = 999")
    assert await asyncio.to_thread(_exit_code, ["usage", "--usage-db", f"sqlite+aiosqlite:///{path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --usage-db: ") and "schema version 999" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("usage.db", "is not a database URL; give sqlite+aiosqlite:///usage.db"),
        ("sqlite+aiosqlite:///nowhere/usage.db", "no database file at 'nowhere/usage.db'"),
        ("mysql://u@127.0.0.1:9/usage", "mysql is not supported; give sqlite+aiosqlite:///usage.db"),
        ("postgresql+nodriver://u@127.0.0.1:9/usage", "postgresql+nodriver"),
    ],
)
def test_a_bad_usage_db_exits_2_and_creates_nothing(
    url: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["usage", "--usage-db", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --usage-db: ") and needle in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["keys", "create", "--tenant", "t", "--rpm", "0"], "--rpm must be a positive integer, got '0'"),
        (
            ["keys", "create", "--tenant", "t", "--budget-usd", "lots"],
            "--budget-usd must be a positive number",
        ),
        (["keys", "create", "--tenant", "t", "--expires", "soon"], "--expires must be a duration like 30d"),
        (["keys", "create", "--tenant", "t", "--expires", "2001-01-01"], "--expires must be in the future"),
        (["keys", "create", "--tenant", "t", "--models", " , "], "--models must name at least one model"),
        (["usage", "--since", "last week"], "--since must be a duration like 7d"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_before_any_request(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit_code([*argv, "--server", "http://127.0.0.1:9"]) == 2  # nothing listens there
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


async def test_a_value_the_server_rejects_exits_2_naming_the_field(
    plane: Plane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await plane.cli("keys", "create", "--tenant", "bad tenant!") == 2
    assert capsys.readouterr().err.startswith("error: tenant: must be a name like a Tenant's")


async def test_bootstrap_writes_an_owner_only_admin_key_once(tmp_path: Path) -> None:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    try:
        text = await ensure_admin_key(store, tmp_path)
        assert text is not None
        key_file = tmp_path / "admin.key"
        assert _mode_and_text(key_file) == (0o600, text)
        (key,) = await store.keys.list_active()
        assert key.admin and key.matches(text)
        assert await ensure_admin_key(store, tmp_path) is None  # an active admin key exists
        await store.keys.revoke(key.key_id)
        again = await ensure_admin_key(store, tmp_path)
        assert again is not None and again != text and _mode_and_text(key_file) == (0o600, again)
    finally:
        await store.close()
    assert "shown only this once" in auth_banner(True, again, tmp_path) and again in auth_banner(
        True, again, tmp_path
    )
    assert "auth: on" in auth_banner(True, None, tmp_path) and "auth: off" in auth_banner(
        False, None, tmp_path
    )


async def test_follow_keys_hands_over_every_change(tmp_path: Path) -> None:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    tables: list[set[str]] = []
    changed = asyncio.Event()

    def apply(keys: list[ApiKey]) -> None:
        tables.append({k.key_id for k in keys})
        changed.set()

    task = asyncio.create_task(follow_keys(store, apply))
    try:
        await asyncio.wait_for(changed.wait(), 5)
        assert tables == [set()]
        changed.clear()
        key, _ = await store.keys.create("acme")
        await asyncio.wait_for(changed.wait(), 5)
        assert tables[-1] == {key.key_id}
        changed.clear()
        await store.keys.revoke(key.key_id)
        await asyncio.wait_for(changed.wait(), 5)
        assert tables[-1] == set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


def _mode_and_text(path: Path) -> tuple[int, str]:
    return stat.S_IMODE(path.stat().st_mode), path.read_text().strip()


def _record(
    request_id: str,
    started_at: float,
    tenant: str,
    *,
    model: str = "llm",
    status: int = 200,
    cost_usd: float = 0.5,
    latency_s: float = 0.5,
) -> UsageRecord:
    return usage_record(
        request_id,
        started_at=started_at,
        tenant=tenant,
        model=model,
        status=status,
        cost_usd=cost_usd,
        latency_s=latency_s,
        cached_tokens=2,
    )
