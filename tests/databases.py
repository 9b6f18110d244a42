"""Database fixtures: a throwaway PostgreSQL cluster per session, and ``storage_url`` running a test on both
SQLite and PostgreSQL. Registered with ``pytest_plugins = ["databases"]`` in conftest.py.

The cluster is real (initdb + pg_ctl from Debian's postgresql package, which .ci/run installs), listens on
a free 127.0.0.1 port with its unix socket in its own temp dir, and is thrown away at the end. PostgreSQL
refuses to run as root, so as root (CI) the server commands run as the ``postgres`` user.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

PG_READY_TIMEOUT_S = 30.0
T = TypeVar("T")


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None  # the newest major version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a thread of its own: sync fixtures may be set up while
    pytest-asyncio owns this thread's event loop, which asyncio.run here would replace."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _try_connect(dsn: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False  # not listening yet, or "the database system is starting up"
    await conn.close()
    return True


async def _execute(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/voice_bridge`` on a fresh cluster (fsync off: it is thrown away)."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does): "
                    "the PostgreSQL half of the storage tests is untested")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as "
                        "(PostgreSQL refuses to run as root)")
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser to start PostgreSQL as the 'postgres' user")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp dir: that is private to root (0700), and the postgres user must reach this.
    base = Path(tempfile.mkdtemp(prefix="voice-bridge-pg-"))
    if as_user:
        os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    data, log = base / "data", base / "server.log"
    port = _free_port()
    admin_dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    started = False
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        options = f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-W", "start"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = True
        deadline = time.monotonic() + PG_READY_TIMEOUT_S
        while not _run(_try_connect(admin_dsn)):
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not accept connections within {PG_READY_TIMEOUT_S:.0f} s:\n"
                            + (log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"))
            time.sleep(0.05)  # polling interval, not a wait for anything in particular
        _run(_execute(admin_dsn, "CREATE DATABASE voice_bridge"))
        yield f"postgresql://postgres@127.0.0.1:{port}/voice_bridge"
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def fresh_postgres_database(postgres_url: str) -> str:
    """A new, empty database on the session cluster (dropped with the cluster)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _run(_execute(postgres_url, f'CREATE DATABASE "{name}"'))
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL to an empty database: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls' / 'voice-bridge.db'}"
    return fresh_postgres_database(request.getfixturevalue("postgres_url"))
