"""``vpp token create|list|revoke`` against the database a site configuration names."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import DEMO_CONFIG
from vpp.auth import Principal, Role, Tokens
from vpp.cli import app
from vpp.storage import Storage


def test_a_token_is_printed_once_listed_without_its_secret_and_revoked(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    text = DEMO_CONFIG.read_text(encoding="utf-8").replace(
        "[storage]\n", f"[storage]\ndata_dir = \"{tmp_path / 'data'}\"\n", 1)
    cfg.write_text(text, encoding="utf-8")
    run = CliRunner().invoke
    made = run(app, ["token", "create", "--role", "grid", "--name", "dispatch", "-c", str(cfg)])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("vpp_")
    st = Storage(f"sqlite:///{tmp_path / 'data' / 'vpp.sqlite'}")
    try:
        who = asyncio.run(Tokens(st).principal(token))
        assert who == Principal("dispatch", Role.GRID)
        listed = run(app, ["token", "list", "-c", str(cfg)])
        assert "dispatch" in listed.stdout and "grid" in listed.stdout
        assert token not in listed.stdout
        twice = run(app, ["token", "create", "--role", "grid", "--name", "dispatch",
                          "-c", str(cfg)])
        assert twice.exit_code == 2
        assert "exists" in twice.output
        bad = run(app, ["token", "create", "--role", "root", "--name", "x", "-c", str(cfg)])
        assert bad.exit_code == 2
        assert "role 'root' is not one of" in bad.output
        gone = run(app, ["token", "revoke", "dispatch", "-c", str(cfg)])
        assert gone.exit_code == 0, gone.output
        assert asyncio.run(Tokens(st).principal(token)) is None
        assert run(app, ["token", "revoke", "dispatch", "-c", str(cfg)]).exit_code == 1
    finally:
        st.close()
