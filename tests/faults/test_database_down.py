"""PostgreSQL unreachable for a while (the network to it cut): the controller keeps the cap,
writes wait in order and are retried, and nothing is lost once it is back."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.e2e.test_chain import midday
from tests.faults.proxy import TcpProxy
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions
from vpp.storage import interval_means, telemetry

pytestmark = pytest.mark.e2e

SPEED = 10.0
OUTAGE_WALL_S = 8.0  # 80 simulated seconds


async def test_writes_wait_for_the_database_and_none_is_lost(demo_config: SiteConfig,
                                                             fresh_postgres_url: str) -> None:
    url = sa.make_url(fresh_postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    via = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    cfg = midday(demo_config)
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={
        "url": via, "telemetry_interval_s": 5.0})})
    demo = Demo(cfg, DemoOptions(speed=SPEED, ephemeral_ports=True))
    try:
        async with demo:
            ctrl = demo.controller
            for _ in range(200):
                if ctrl.state.schedule is not None:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            down_at = ctrl.clock.now()
            await proxy.cut()
            await asyncio.sleep(OUTAGE_WALL_S)
            up_at = ctrl.clock.now()
            await proxy.mend()
            await asyncio.sleep(3.0)  # the waiting writes go in
            end = ctrl.clock.now()
            retries = ctrl.storage.retries
            errors = ctrl.metrics.storage_errors._value.get()
    finally:
        await proxy.close()
    # read what was stored, straight from PostgreSQL (not through the proxy)
    engine = sa.create_engine(fresh_postgres_url)
    try:
        with engine.connect() as c:
            ts = [r[0] for r in c.execute(
                sa.select(telemetry.c.ts).where((telemetry.c.asset_id == "pcc")
                                                & (telemetry.c.point == "export_w"))
                .order_by(telemetry.c.ts)).all()]
            means = c.execute(sa.select(sa.func.count()).select_from(interval_means)).scalar()
    finally:
        engine.dispose()
    assert retries > 0  # the outage was real: writes had to wait
    assert errors == 0  # and none was given up
    # the PCC meter's export was stored through the outage: no gap longer than a few
    # storage intervals anywhere between before the cut and after the mend
    inside = [t for t in ts if down_at - timedelta(seconds=30) <= t <= end]
    assert inside, ts[-5:]
    assert inside[0] <= down_at and inside[-1] >= up_at
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(inside)]
    assert max(gaps) <= 4 * cfg.storage.telemetry_interval_s, gaps
    assert means is not None
    assert demo.report()["cap_violation_s"] == 0
