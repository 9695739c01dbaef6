"""The storage fixture: every storage test runs on SQLite (WAL) and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vpp.storage import Storage


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vpp.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    st = Storage(url)
    try:
        yield st
    finally:
        st.close()
