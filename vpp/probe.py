"""``vpp probe``: read a device once and show every decoded point (commissioning)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table as RichTable

from drivers import Device, DeviceError, ModbusConnection, PollClass, Profile, load_profile, sunspec

_URL = re.compile(r"^modbus://(?P<host>[^:/]+)(?::(?P<port>\d+))?(?:/(?P<unit>\d+))?$")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    unit_id: int


def parse_url(url: str) -> Target:
    """``modbus://host[:port][/unit]`` (port 502 and unit 1 by default)."""
    m = _URL.match(url)
    if m is None:
        raise ValueError(f"{url!r} is not a device URL; use modbus://host[:port][/unit], "
                         "e.g. modbus://127.0.0.1:5020/1")
    port = int(m["port"] or 502)
    unit = int(m["unit"] or 1)
    if not 0 < port < 65536 or not 0 <= unit <= 247:
        raise ValueError(f"{url!r}: port must be 1..65535 and unit 0..247")
    return Target(m["host"], port, unit)


def _model_name(model_id: int) -> str:
    try:
        return sunspec.model_def(model_id).name
    except KeyError:
        return "unknown model"


async def probe(url: str, profile_name: str, console: Console, *, timeout_s: float = 2.0) -> int:
    """Read every point once; returns the number of points read good."""
    target = parse_url(url)
    conn = ModbusConnection(host=target.host, port=target.port, timeout_s=timeout_s)
    try:
        strings: dict[str, str] = {}
        if profile_name == "sunspec":
            blocks = await sunspec.discover(conn, target.unit_id)
            models = ", ".join(f"{b.model_id} ({_model_name(b.model_id)}) @{b.address}+{b.length}"
                               for b in blocks)
            console.print(f"SunSpec models found: {models}", highlight=False)
            profile: Profile = sunspec.build_profile(blocks, kind="pv", name="sunspec")
            strings = await sunspec.read_strings(conn, target.unit_id, profile)
        else:
            profile = load_profile(profile_name)
        dev = Device(asset_id="probe", profile=profile, connection=conn,
                     unit_id=target.unit_id, now=lambda: datetime.now(UTC))
        for pc in (PollClass.ONCE, PollClass.SLOW, PollClass.FAST):
            await dev.poll(pc)
        samples = dev.latest
        t = RichTable("point", "value", "unit", "quality", "table", "address", "type",
                      title=f"{url}  profile {profile.name}  health {dev.health.value}")
        for p in sorted(profile.points, key=lambda p: (p.table.value, p.address)):
            s = samples[p.name]
            value = strings.get(p.name) if p.name in strings else (
                "—" if s.value is None else f"{s.value:.6g}")
            quality = "good" if p.name in strings else s.quality.value
            if p.name in dev.unsupported:
                quality = "unsupported"
            t.add_row(p.name, value, p.unit, quality, p.table.value, str(p.address), p.type.value)
        console.print(t)
        return sum(1 for s in samples.values() if s.usable) + len(strings)
    except DeviceError as exc:
        raise DeviceError(f"{url}: {exc}") from exc
    finally:
        conn.close()
