"""`computenet control` and `computenet gateway --control`: bad input is one line naming the flag, exit 2;
a database that cannot be reached is exit 1 — never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from computenet.cli.dburl import database_url
from computenet.cli.main import main
from computenet.pools.processes import free_port


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--store", "mysql://u@127.0.0.1/db"], "--store: mysql is not supported; give sqlite+aiosqlite:///"),
        (["--store", "not a url"], "--store: 'not a url' is not a database URL"),
        (
            ["--leader-elect", "--leader-elect-renew-deadline", "9"],
            "retry period < renew deadline < lease duration, got 1.5s < 9s < 8s",
        ),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["control", "--state-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_negative_duration_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["control", "--leader-elect-lease-duration", "-1"]) == 2
    assert (
        "--leader-elect-lease-duration: must be a number of seconds > 0, got '-1'" in capsys.readouterr().err
    )


def test_an_unreachable_database_exits_1_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+asyncpg://cn:s3cret@127.0.0.1:{free_port()}/computenet"
    assert _run(["control", "--state-dir", str(tmp_path), "--store", url, "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --store: cannot use postgresql+asyncpg://cn:***@127.0.0.1")
    assert "s3cret" not in err and "Traceback" not in err


def test_gateway_control_must_be_an_http_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["gateway", "--control", "computenet-control:8081"]) == 2
    assert "--control must be the control API's http:// or https:// URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p%40ss@db:5432/cn", "postgresql+asyncpg://u:p%40ss@db:5432/cn"),
        ("sqlite:///state/cn.db", "sqlite+aiosqlite:///state/cn.db"),
        ("postgresql+asyncpg://u@db/cn", "postgresql+asyncpg://u@db/cn"),
    ],
)
def test_database_urls_written_the_usual_way_get_the_async_driver(given: str, used: str) -> None:
    assert database_url("--store", given, example="computenet.db", must_exist=False) == used
