"""A real PostgreSQL server for tests: initdb into a temp dir, started on a free 127.0.0.1 port, stopped after.

One server per test session (`postgres_server`, initdb takes a second or two); each test gets a fresh,
empty database on it (`postgres_url`), so tests never see each other's rows. Authentication is
`trust` and the server listens on 127.0.0.1 only. Durability is off (fsync, synchronous_commit): a
test server that loses its data in a power cut loses nothing anyone needs, and it is much faster.

PostgreSQL refuses to run as root, and CI runs as root: then initdb and postgres run as an
unprivileged user (`postgres`, which the Debian package creates, or one this helper creates)
through `setpriv`, which execs in place, so the process we signal is the server itself.

The binaries are found on PATH, else under /usr/lib/postgresql/<version>/bin, where Debian's
`postgresql` package puts them. When PostgreSQL is not installed the tests that need it are
skipped, except under CI (the `CI` environment variable is set), where that is a failure: CI
installs it (`.ci/run`).

No pytest here (`benchmarks/failover.py` starts its server with this module too): the fixtures
(`postgres_server`, `postgres_url`, `database_url`) are in tests/conftest.py, and a missing
PostgreSQL raises `NotInstalled`, which the suite turns into a skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from prerequisites import NotInstalled

from computenet.pools.processes import free_port

START_TIMEOUT_S = 30.0
DEBIAN_BIN_DIRS = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"
SUPERUSER = "postgres"  # the database role initdb creates


def postgres_bin_dir(candidates: Sequence[str] = ("initdb",)) -> Path:
    """The directory holding initdb, postgres and createdb; `NotInstalled` when there is none."""
    for candidate in candidates:
        if found := shutil.which(candidate):
            return Path(found).resolve().parent
    versions = sorted(Path("/").glob(DEBIAN_BIN_DIRS.lstrip("/")), key=_version, reverse=True)
    for directory in versions:
        if (directory / "initdb").is_file():
            return directory
    raise NotInstalled(
        "PostgreSQL is not installed (apt-get install postgresql); the PostgreSQL tests need a real one"
    )


def _version(path: Path) -> int:
    name = path.parent.name
    return int(name) if name.isdigit() else 0


def _unprivileged_user() -> str:
    """Who runs the server when we are root: `postgres` if it exists, else a system user made now."""
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
        )
    return SERVER_USER


class PostgresServer:
    """One PostgreSQL server in its own temp dir; `create_database()` hands out fresh databases."""

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="computenet-pg-")
        self.data = Path(self._dir.name) / "data"
        self._process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(_unprivileged_user())
            os.chown(self._dir.name, user.pw_uid, user.pw_gid)
            self._as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[PostgresServer]:
        server = cls()
        try:
            server.start()
            yield server
        finally:
            server.stop()
            server._dir.cleanup()

    def start(self) -> None:
        initdb = [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust"]
        self._run([*initdb, "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"])
        log = Path(self._dir.name) / "postgres.log"
        argv = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1"]
        argv += ["-k", self._dir.name, "-c", "fsync=off", "-c", "synchronous_commit=off"]
        argv += ["-c", "full_page_writes=off", "-c", "max_connections=200"]
        with log.open("wb") as out:
            self._process = subprocess.Popen([*self._as_user, *argv], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"postgres on port {self.port} did not start:\n{tail}")
            time.sleep(0.05)

    def ready(self) -> bool:
        probe = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]
        return subprocess.run(probe, check=False).returncode == 0

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        createdb = [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]
        subprocess.run([*createdb, name], check=True, capture_output=True)
        return self.url(name)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown (rolls back open transactions)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run([*self._as_user, *argv], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
