"""Shared fixtures: a leak check, the demo configuration, and the real services.

Mosquitto (127.0.0.1:1883) and PostgreSQL (127.0.0.1:5432) are used for real. When one is
missing, its tests fail in CI (where .ci/run starts both) and are skipped, with the reason,
on a developer machine without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings

from drivers import shipped_profiles
from vpp.config import SiteConfig, load_config

__all__ = ["shipped_profiles"]

# no example deadline: a time limit per example is a timed assertion, which a busy machine
# fails (speed is the benchmarks' to measure); tests/fuzz has a profile of its own
settings.register_profile("vpp", deadline=None)
settings.load_profile("vpp")

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "deploy" / "examples" / "demo-county.toml"
POSTGRES_ADMIN_URL = os.environ.get("VPP_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


class ManualClock:
    """Simulated time that moves only when a test sets ``t`` [POSIX s], for a served plant
    or a controller whose steps a test calls itself."""

    speed = 1.0

    def __init__(self, t_s: float) -> None:
        self.t = t_s

    def time(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    async def sleep_until(self, t: datetime) -> None:
        raise NotImplementedError("a manual clock is moved by the test, not waited on")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (executors, servers) behind."""
    before = set(threading.enumerate())
    yield
    for _ in range(50):
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()
                 and not t.daemon]
        if not extra:
            return
        threading.Event().wait(0.05)
    pytest.fail(f"test left threads running: {[t.name for t in extra]}")


@pytest.fixture
def demo_config() -> SiteConfig:
    return load_config(DEMO_CONFIG)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def require_service(name: str, port: int) -> None:
    if _port_open(port):
        return
    msg = f"{name} is not running on 127.0.0.1:{port}"
    if os.environ.get("CI"):
        pytest.fail(msg + " (.ci/run starts it)")
    pytest.skip(msg + "; start it to run this test")


def require_tool(name: str, package: str) -> str:
    """The path of a command-line tool the test needs (.ci/run installs ``package``)."""
    path = shutil.which(name)
    if path is not None:
        return path
    msg = f"{name} is not installed (Debian package {package})"
    if os.environ.get("CI"):
        pytest.fail(msg + "; .ci/run installs it")
    pytest.skip(msg + "; install it to run this test")


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool", "prometheus")


@pytest.fixture
def mosquitto() -> tuple[str, int]:
    require_service("Mosquitto", 1883)
    return "127.0.0.1", 1883


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, dropped at the end."""
    with _fresh_postgres() as url:
        yield url


@contextlib.contextmanager
def _fresh_postgres() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped after."""
    require_service("PostgreSQL", 5432)
    import sqlalchemy as sa

    name = f"vpp_empty_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A PostgreSQL database of its own for one test, dropped after it."""
    with _fresh_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with nothing in it, of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite'}"
        return
    with _fresh_postgres() as url:
        yield url
