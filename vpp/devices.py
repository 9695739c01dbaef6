"""A site's devices as the drivers read them, and which poller shard polls which.

``build_devices`` is the one place a site's assets become ``Device`` objects on shared
``ModbusConnection`` s: the controller uses it when it polls itself, a shard
(``vpp poll --shard i/n``) for its own share of the assets.

Shard assignment (:func:`assign_shards`): assets are grouped by endpoint (host, port), since
every unit id behind one gateway shares its connection and must be polled by one process;
endpoints are taken in sorted order, each to the shard with the fewest assets so far (the
lowest shard index on a tie). The rule depends only on the assets' endpoints, so every
process that reads the same site file finds the same shards; :func:`assignment_digest`
lets them check that they do.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from drivers import Device, ModbusConnection, Profile, SampleQueue, load_profile
from vpp.config import SUNSPEC, Asset, SiteConfig

# a request timeout shorter than this [wall s] would fire while the loop is merely busy
MIN_WALL_TIMEOUT_S = 0.1


class _Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...


Endpoint = tuple[str, int]


def build_devices(config: SiteConfig, assets: Sequence[Asset], *, clock: _Clock,
                  sink: SampleQueue | None) -> tuple[dict[Endpoint, ModbusConnection],
                                                     dict[str, Device]]:
    """A ``Device`` per asset, one ``ModbusConnection`` per host:port shared by its devices.

    Timeouts and backoff are in the clock's seconds: at ×600 a 1 s wall timeout would leave
    the PCC meter unread for 10 simulated minutes. A SunSpec asset gets an empty profile,
    filled in by discovery."""
    connections: dict[Endpoint, ModbusConnection] = {}
    devices: dict[str, Device] = {}
    limiter = asyncio.Semaphore(config.polling.max_connections)
    now: Callable[[], datetime] = clock.now
    for a in assets:
        key = (a.host, a.port)
        if key not in connections:
            connections[key] = ModbusConnection(
                host=a.host, port=a.port,
                timeout_s=max(MIN_WALL_TIMEOUT_S, config.polling.timeout_s / clock.speed),
                backoff_max_s=max(0.05, config.polling.backoff_max_s / clock.speed),
                limiter=limiter)
        profile = (Profile(name=SUNSPEC, kind=a.kind, points=()) if a.profile == SUNSPEC
                   else load_profile(a.profile))
        devices[a.id] = Device(asset_id=a.id, profile=profile, connection=connections[key],
                               unit_id=a.unit_id, now=now, sink=sink)
    return connections, devices


class ShardSpecError(ValueError):
    """A ``--shard`` value that is not ``i/n`` with 0 <= i < n."""


def parse_shard(text: str, *, configured: int | None = None) -> tuple[int, int]:
    """``"i/n"`` as (i, n): shard i (from 0) of n. With ``configured`` (the site's
    ``polling.shards``), n must equal it."""
    i_s, sep, n_s = text.partition("/")
    try:
        if not sep:
            raise ValueError
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ShardSpecError(f"--shard {text!r} is not allowed: give i/n, shard i (0 to "
                             "n - 1) of n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ShardSpecError(f"--shard {text!r} is not allowed: n must be at least 1 and i "
                             f"within 0..n - 1 (here 0..{max(0, n - 1)})")
    if configured is not None and n != configured:
        fix = (f"set polling.shards = {n} in the site file (0 there: the controller polls "
               "every device itself)" if configured == 0 else f"give i/{configured}")
        raise ShardSpecError(f"--shard {text!r} is not allowed: the site's polling.shards is "
                             f"{configured}; {fix}")
    return i, n


def assign_shards(assets: Sequence[Asset], shards: int) -> list[list[Asset]]:
    """The assets of each shard (the module's rule: whole endpoints, sorted, each to the
    shard with the fewest assets so far); within a shard in the site file's order."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    by_endpoint: dict[Endpoint, list[Asset]] = {}
    for a in assets:
        by_endpoint.setdefault((a.host, a.port), []).append(a)
    load = [0] * shards
    shard_of: dict[Endpoint, int] = {}
    for ep in sorted(by_endpoint):
        k = min(range(shards), key=lambda j: (load[j], j))
        shard_of[ep] = k
        load[k] += len(by_endpoint[ep])
    out: list[list[Asset]] = [[] for _ in range(shards)]
    for a in assets:
        out[shard_of[(a.host, a.port)]].append(a)
    return out


def assignment_digest(assets: Sequence[Asset]) -> str:
    """A short fingerprint of a shard's assets (ids and endpoints), to check that the
    controller and the shard read the same site."""
    text = "\n".join(sorted(f"{a.id} {a.host}:{a.port}/{a.unit_id} {a.profile}"
                            for a in assets))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
