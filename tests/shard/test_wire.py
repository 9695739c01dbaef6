"""Shard assignment, ``--shard`` values, the shard settings, and the wire format: a real
poll over Modbus TCP encoded, decoded and taken by a remote device; bad payloads refused
with messages that name what is wrong."""

from __future__ import annotations

import base64
import json
import math
import random
import re
import struct
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drivers import Device, Health, ModbusConnection, PollClass, Quality, load_profile
from drivers.device import WriteError, WriteRefusedError, WriteResult
from drivers.remote import (
    EntryError,
    RemoteDevice,
    WireError,
    ack_error,
    ack_ok,
    check_entry,
    parse_ack,
    parse_setpoint,
    parse_telemetry,
    poll_entry,
    remote_device,
    result_of,
    telemetry_message,
)
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit
from vpp.cli import app
from vpp.config import ConfigError, SiteConfig, parse_config
from vpp.devices import ShardSpecError, assign_shards, assignment_digest, parse_shard
from vpp.shardlink import ShardLink

NOW = partial(datetime.now, UTC)


def _many(n_ports: int, per_port: list[int]) -> dict[str, Any]:
    """A site of meters on ``n_ports`` ports with ``per_port[k]`` unit ids behind port k."""
    assets: list[dict[str, Any]] = [{"id": "pcc", "kind": "meter", "profile": "generic-meter",
                                     "port": 9000, "unit_id": 1}]
    for k in range(n_ports):
        for u in range(per_port[k % len(per_port)]):
            assets.append({"id": f"m{k}-{u}", "kind": "meter", "profile": "generic-meter",
                           "host": "10.0.0.1", "port": 10_000 + k, "unit_id": u + 1})
    return {"site": {"id": "s", "latitude": 38.0, "longitude": 106.0},
            "pcc": {"meter": "pcc", "export_cap_w": 1e6, "import_limit_w": 1e6},
            "assets": assets, "mqtt": {"embedded": False}}


def test_shards_keep_gateways_whole_balance_assets_and_ignore_file_order() -> None:
    cfg = parse_config(_many(13, [5, 1, 30, 2]))
    shards = assign_shards(cfg.assets, 4)
    assert sorted(a.id for s in shards for a in s) == sorted(a.id for a in cfg.assets)
    for s in shards:  # every unit id of one endpoint in one shard
        others = [a for t in shards if t is not s for a in t]
        assert not {(a.host, a.port) for a in s} & {(a.host, a.port) for a in others}
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 30, sizes  # within the largest gateway
    shuffled = list(cfg.assets)
    random.Random(3).shuffle(shuffled)
    again = assign_shards(shuffled, 4)
    assert [sorted(a.id for a in s) for s in again] == [sorted(a.id for a in s) for s in shards]
    assert [assignment_digest(s) for s in again] == [assignment_digest(s) for s in shards]
    assert assign_shards(cfg.assets, 1) == [list(cfg.assets)]


@pytest.mark.parametrize(("text", "allowed"), [
    ("0/4", (0, 4)), ("3/4", (3, 4)), ("0/1", (0, 1))])
def test_good_shard_values(text: str, allowed: tuple[int, int]) -> None:
    assert parse_shard(text, configured=allowed[1]) == allowed


@pytest.mark.parametrize(("text", "configured", "says"), [
    ("4/4", 4, r"'4/4' is not allowed: n must be at least 1 and i within 0..n - 1 \(here 0..3\)"),
    ("-1/4", 4, r"'-1/4' is not allowed"),
    ("0/0", None, r"'0/0' is not allowed: n must be at least 1"),
    ("1", 4, r"'1' is not allowed: give i/n, shard i \(0 to n - 1\) of n, e.g. 0/4"),
    ("a/b", 4, r"'a/b' is not allowed: give i/n"),
    ("0/2", 4, r"'0/2' is not allowed: the site's polling.shards is 4; give i/4"),
    ("0/2", 0, r"polling.shards is 0; set polling.shards = 2 in the site file"),
])
def test_bad_shard_values_say_what_is_allowed(text: str, configured: int | None,
                                              says: str) -> None:
    with pytest.raises(ShardSpecError, match=says):
        parse_shard(text, configured=configured)


@pytest.mark.parametrize(("change", "says"), [
    ({"mqtt": {"enabled": False}}, "polling.shards = 2 needs MQTT"),
    ({"mqtt": {"embedded": True}}, "mqtt.embedded is true, but polling.shards = 2 needs a "
                                   "broker the shards reach"),
    ({"polling": {"shards": 300}}, "polling.shards: 300 is not allowed"),
])
def test_shard_settings_are_checked(change: dict[str, Any], says: str) -> None:
    data = _many(2, [2]) | {"polling": {"shards": 2}} | change
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert any(says in p for p in exc.value.problems), exc.value.problems


def test_sunspec_is_refused_with_shards() -> None:
    data = _many(1, [1]) | {"polling": {"shards": 2}}
    data["assets"].append({"id": "inv", "kind": "pv", "profile": "sunspec", "port": 9001,
                           "rated_power_w": 1e6, "dc_power_w": 1.2e6})
    with pytest.raises(ConfigError, match=r"assets\[2\] \(inv\).profile: asset inv: profile "
                                          r"'sunspec' is not supported with polling.shards"):
        parse_config(data)


class Channel:
    """The transport end a remote device is given: here, a shard that is or is not heard."""

    def __init__(self) -> None:
        self.heard = True

    def alive(self, shard: int) -> bool:
        return self.heard

    async def request(self, shard: int, body: dict[str, Any], *,
                      timeout_s: float) -> dict[str, Any]:
        raise TimeoutError


async def _polled(profile_name: str, values: dict[str, float]) -> Device:
    """A device read once, every class, over real Modbus TCP from the simulator's server."""
    profile = load_profile(profile_name)
    server = ModbusTcpDeviceServer(host="127.0.0.1", port=0, units={
        1: SimUnit(profile, lambda: values, lambda p, v: None)})
    await server.start()
    conn = ModbusConnection(host="127.0.0.1", port=server.port, timeout_s=1.0)
    try:
        dev = Device(asset_id="bess1", profile=profile, connection=conn, unit_id=1, now=NOW)
        for pc in PollClass:
            await dev.poll(pc)
        return dev
    finally:
        conn.close()
        await server.stop()


def _remote(profile_name: str, channel: Channel) -> RemoteDevice:
    return remote_device(asset_id="bess1", profile=load_profile(profile_name), unit_id=1,
                         now=NOW, channel=channel, shard=0)


async def test_a_poll_crosses_the_wire_whole() -> None:
    dev = await _polled("generic-battery", {"active_power_w": -3e6, "soc": 0.61,
                                            "capacity_wh": 5e7})
    entries = [e for pc in PollClass if (e := poll_entry(dev, pc)) is not None]
    tel = parse_telemetry(telemetry_message(2, 7, 1.5, entries))
    assert (tel.shard, tel.seq, tel.sent) == (2, 7, 1.5)
    ch = Channel()
    remote = _remote("generic-battery", ch)
    for e in tel.polls:
        _, pc, ts, health, vals, quals = check_entry(e)
        remote.apply(pc, ts, health, vals, quals)
    for pc in PollClass:
        await remote.poll(pc)
    assert remote.health is Health.ONLINE
    # every point: value, unit and quality; a poll's samples carry its first read's time
    got, sent = dict(remote.latest), dict(dev.latest)
    assert got.keys() == sent.keys()
    for name, s in sent.items():
        r = got[name]
        assert (r.value, r.unit, r.quality) == (s.value, s.unit, s.quality), name
        assert 0 <= (s.ts - r.ts).total_seconds() < 0.5, name
    assert remote.value("soc") == pytest.approx(0.61)
    ch.heard = False  # the shard goes silent: stale, offline, not used
    await remote.poll(PollClass.FAST)
    assert remote.health in (Health.OFFLINE,)
    assert remote.value("soc") is None and remote.latest["soc"].quality is Quality.STALE


async def test_old_fast_values_are_stale_even_from_a_live_shard() -> None:
    dev = await _polled("generic-battery", {"soc": 0.5})
    remote = _remote("generic-battery", Channel())
    _, pc, ts, health, vals, quals = check_entry(poll_entry(dev, PollClass.FAST))
    remote.apply(pc, ts - 10 * remote.max_age_s, health, vals, quals)
    await remote.poll(PollClass.FAST)
    assert remote.value("soc") is None and remote.health is Health.OFFLINE
    _, pc, ts, health, vals, quals = check_entry(poll_entry(dev, PollClass.ONCE))
    remote.apply(pc, ts, health, vals, quals)
    await remote.poll(PollClass.ONCE)  # a fresh nameplate: still offline, fast is stale
    assert remote.health in (Health.OFFLINE,) and remote.value("capacity_wh") is not None


def _pack(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode()


def test_packed_values_carry_missing_as_nan_and_json_lists_are_taken_too() -> None:
    *_, vals, _ = check_entry(_entry(values=_pack(1.5, math.nan, -2.0, 0.0), quals="gmgb"))
    assert list(vals) == [1.5, None, -2.0, 0.0]
    *_, vals, _ = check_entry(_entry(values=[1.5, None, -2, 0.0], quals="gmgb"))
    assert list(vals) == [1.5, None, -2, 0.0]


def _entry(**change: Any) -> list[Any]:
    e = {"asset": "bess1", "class": "fast", "ts": 1.0, "health": "online",
         "values": [1.0, 2.0, 0.5, 0.0], "quals": ""} | change
    return list(e.values())


@pytest.mark.parametrize(("entry", "says"), [
    ("x", "a list of 6 is expected"),
    (_entry(asset=3), "asset 3 is not a string"),
    (_entry(**{"class": "often"}), "class 'often' is not allowed; allowed: ['fast', 'once', "
                                   "'slow']"),
    (_entry(ts="noon"), "ts 'noon' is not a POSIX time"),
    (_entry(health="fine"), "health 'fine' is not allowed"),
    (_entry(values=[1.0, "2"]), "values must be packed (base64 float64) or a list of "
                                "numbers and nulls"),
    (_entry(values=[True]), "values must be packed"),
    (_entry(values={"a": 1}), "values must be packed"),
    (_entry(values="@@@@"), "values '@@@@'... are not base64"),
    (_entry(values=_pack(1.0)[:-4]), "6 bytes of values, not a whole number of float64"),
    (_entry(values=_pack(1.0, math.nan)), "a value said good is no finite number"),
    (_entry(values=_pack(1.0, math.inf)), "a value said good is no finite number"),
    (_entry(quals="gg"), "2 qualities for 4 values"),
    (_entry(quals="ggxg"), "qualities 'ggxg' must be '' or one of"),
])
def test_bad_entries_are_refused(entry: Any, says: str) -> None:
    with pytest.raises(EntryError, match=re.escape(says)):
        check_entry(entry)


async def test_entries_that_do_not_fit_the_profile_are_refused() -> None:
    remote = _remote("generic-battery", Channel())
    with pytest.raises(EntryError, match="3 fast values, profile generic-battery has 4 fast "
                                         "points"):
        remote.apply(PollClass.FAST, 1.0, Health.ONLINE, [1.0, 2.0, 3.0], "")
    with pytest.raises(EntryError, match="a null value said good"):
        remote.apply(PollClass.FAST, 1.0, Health.ONLINE, [1.0, None, 3.0, 4.0], "")
    assert not remote.latest  # a refused entry changes nothing
    names = remote.wire_points(PollClass.FAST)
    remote.apply(PollClass.FAST, NOW().timestamp(), Health.DEGRADED, [1.0, None, 3.0, 4.0],
                 "gmgb")
    assert remote.value(names[0]) == 1.0 and remote.value(names[2]) == 3.0
    assert remote.latest[names[1]].quality is Quality.MISSING
    assert remote.value(names[3]) is None and remote.latest[names[3]].value == 4.0  # bad
    await remote.poll(PollClass.FAST)
    assert remote.health is Health.DEGRADED  # as the shard said


@pytest.mark.parametrize(("payload", "says"), [
    (b"{not json", "telemetry: not JSON"),
    (b'{"schema": 1, "shard": 0, "seq": 1, "sent": NaN, "polls": []}',
     "telemetry: not JSON (NaN is no JSON number)"),
    (b"[1, 2]", "telemetry: a JSON object is expected, got list"),
    (b'{"schema": 2, "polls": []}', "schema 2 is not allowed; this side speaks schema 1"),
    (b'{"schema": 1, "shard": 0, "seq": 1, "sent": 1.0}', "polls = None is not allowed: a "
                                                          "list is expected"),
    (b'{"schema": 1, "shard": "0", "seq": 1, "sent": 1, "polls": []}',
     "shard = '0' is not allowed: a int is expected"),
])
def test_bad_telemetry_messages_are_refused(payload: bytes, says: str) -> None:
    with pytest.raises(WireError, match=re.escape(says)):
        parse_telemetry(payload)


def _setpoint(**change: Any) -> bytes:
    body = {"schema": 1, "id": "r1", "asset": "bess1", "point": "power_setpoint_w",
            "value": 1e6, "verify": True, "deadline_s": 0.5, "expires_at": 2e9} | change
    return json.dumps(body).encode()


def test_setpoints_and_acks_round_trip_and_bad_ones_are_refused() -> None:
    req = parse_setpoint(_setpoint())
    assert (req.asset, req.point, req.value, req.verify) == ("bess1", "power_setpoint_w",
                                                             1e6, True)
    for bad, says in ((_setpoint(value="high"), "value = 'high' is not allowed: a int or "
                                                "float is expected"),
                      (b'{"schema": 1, "id": "r", "value": NaN}', "setpoint: not JSON "
                                                                  "(NaN is no JSON number)"),
                      (_setpoint(value=float("inf")), "(Infinity is no JSON number)"),
                      (_setpoint(asset=7), "asset = 7 is not allowed: a str is expected"),
                      (_setpoint(deadline_s=0), "deadline_s 0.0 is not allowed: (0, 600] s"),
                      (_setpoint(verify=1), "verify = 1 is not allowed: a bool is expected"),
                      (_setpoint(id=None), "id = None is not allowed")):
        with pytest.raises(WireError, match=re.escape(says)):
            parse_setpoint(bad)
    ok = parse_ack(ack_ok("r1", WriteResult("power_setpoint_w", 3e9, 2.1e9, True, 2)))
    assert result_of(ok, "bess1.power_setpoint_w") == WriteResult("power_setpoint_w", 3e9,
                                                                  2.1e9, True, 2)
    for error, raised in (("refused", WriteRefusedError), ("read_only", PermissionError),
                          ("unknown_point", KeyError), ("failed", WriteError),
                          ("expired", WriteError), ("busy", WriteError)):
        with pytest.raises(raised):
            result_of(parse_ack(ack_error("r2", error, "why")), "bess1.soc")
    with pytest.raises(WireError, match="error 'oops' is not allowed"):
        parse_ack(b'{"schema": 1, "id": "r3", "ok": false, "error": "oops"}')
    with pytest.raises(WireError, match="written = None is not allowed"):
        parse_ack(b'{"schema": 1, "id": "r3", "ok": true, "requested": 1}')


def _shard_site() -> SiteConfig:
    return parse_config(_many(4, [2]) | {"polling": {"shards": 2}})


def test_the_link_takes_only_a_shard_own_assets() -> None:
    cfg = _shard_site()
    link = ShardLink(cfg, clock=type("C", (), {"speed": 1.0, "now": staticmethod(NOW)})())
    devices = link.devices(None)
    first = link.assignment[0][0].id
    other = link.assignment[1][0].id
    names = devices[first].wire_points(PollClass.FAST)  # type: ignore[attr-defined]
    entry = [first, "fast", NOW().timestamp(), "online", [float(i) for i in range(len(names))],
             ""]
    payload = telemetry_message(0, 1, 0.0, [entry, [other, *entry[1:]]])
    base = f"vpp/{cfg.site.id}/shard"
    link.handle(f"{base}/0/telemetry", payload)
    assert (link.entries, link.bad_entries) == (1, 1)  # the other shard's asset refused
    assert [devices[first].value(n) for n in names] == entry[4]
    assert devices[other].value(names[0]) is None
    with pytest.raises(WireError, match="telemetry of shard 0 on shard 1's topic"):
        link.handle(f"{base}/1/telemetry", payload)
    with pytest.raises(WireError, match=re.escape("shard '7' is not one of this site's 0..1")):
        link.handle(f"{base}/7/telemetry", payload)
    with pytest.raises(WireError, match="state must be online or offline"):
        link.handle(f"{base}/0/status", b'{"state": "fine"}')


@pytest.mark.parametrize(("shard", "says"), [
    ("2/2", "--shard '2/2' is not allowed: n must be at least 1 and i within 0..n - 1 "
            "(here 0..1)"),
    ("0/3", "--shard '0/3' is not allowed: the site's polling.shards is 2; give i/2"),
    ("one", "--shard 'one' is not allowed: give i/n"),
])
def test_vpp_poll_refuses_a_bad_shard(tmp_path: Path, shard: str, says: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text("""
[site]
id = "s"
latitude = 38.0
longitude = 106.0
[pcc]
meter = "pcc"
export_cap_w = 1e6
import_limit_w = 1e6
[[assets]]
id = "pcc"
kind = "meter"
profile = "generic-meter"
[polling]
shards = 2
[mqtt]
embedded = false
""", encoding="utf-8")
    res = CliRunner().invoke(app, ["poll", "--shard", shard, "--config", str(site)])
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split())
