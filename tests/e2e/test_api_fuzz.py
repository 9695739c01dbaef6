"""Schemathesis, an independent tool, fuzzes the running API from its own OpenAPI document:
no request it makes, valid or not, may get a server error."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_chain import midday
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions

pytestmark = pytest.mark.e2e


async def test_schemathesis_finds_no_server_error(demo_config: SiteConfig,
                                                  tmp_path: Path) -> None:
    tool = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert tool is not None, "schemathesis is a dev dependency"
    demo = Demo(midday(demo_config), DemoOptions(speed=60.0, ephemeral_ports=True))
    async with demo:
        svc = demo.services
        assert svc is not None
        assert svc.api is not None
        token = await svc.issue_token("admin", "schemathesis")
        async with httpx.AsyncClient(base_url=svc.api.url, timeout=10) as http:
            for _ in range(240):  # a plan in force: the schedule endpoints have data
                if (await http.get("/api/v1/health")).json().get("dispatch") is not None:
                    break
                await asyncio.sleep(0.25)
        proc = await asyncio.create_subprocess_exec(
            tool, "run", f"{svc.api.url}/api/v1/openapi.json",
            "--checks", "not_a_server_error", "--max-examples", "15", "--seed", "7",
            "--generation-database", "none", "--request-timeout", "20",
            "-H", f"Authorization: Bearer {token}", "--no-color",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        print(text[-4000:])
        assert proc.returncode == 0, text[-6000:]
        m = re.search(r"(\d+) generated, (\d+) passed", text)
        assert m is not None, text[-2000:]
        assert m[1] == m[2], text[-2000:]
        assert int(m[1]) > 300  # every operation, many inputs each
