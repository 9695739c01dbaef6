"""Devices polled by another process, a poller shard: what it sends and how it is seen.

A shard (``vpp poll --shard i/n``) polls its devices with the ordinary ``Device`` and sends
every poll on; the controller sees each of those devices as a :class:`RemoteDevice`: a
``Device`` whose newest values come from the shard's messages instead of its own reads, and
whose writes are requests the shard carries out (through the same write guard) and answers.
The transport is not this module's: it takes a :class:`ShardChannel` (``vpp.shardlink``
gives one over MQTT).

The wire format (JSON objects, ``"schema": 1``):

* **telemetry** ``{"schema", "shard", "seq", "sent", "polled", "polls": [entry, ...]}``
  (``polled``, optional: the shard's polls so far), one entry
  per poll of one device: ``[asset, class, ts, health, values, qualities]``. ``class`` is
  ``fast``, ``slow`` or ``once``; ``ts`` the read time (POSIX seconds of the shard's clock:
  the first read of the poll); ``health`` ``online``, ``degraded`` or ``offline``;
  ``values`` one per point of the class, in the order of the device's read blocks
  (holding registers, then input registers, each by address:
  ``RemoteDevice.wire_points``): packed, the base64 of little-endian float64s with NaN for
  none (what a shard sends: a tenth of the CPU of JSON numbers to make and read), or a JSON
  list of numbers and ``null``; ``qualities`` ``""`` when all are
  good, else one letter per point (``g`` good, ``s`` stale, ``b`` bad, ``m`` missing).
* **setpoint request** ``{"schema", "id", "asset", "point", "value", "verify",
  "deadline_s", "expires_at"}``: ``expires_at`` (POSIX seconds) is when the controller stops
  waiting; a shard never writes a request after it.
* **ack** ``{"schema", "id", "ok": true, "point", "requested", "written", "clamped",
  "attempts"}``, or ``{"schema", "id", "ok": false, "error", "message"}`` with ``error``
  one of :data:`ACK_ERRORS`.

A message that does not follow it raises :class:`WireError`, naming what is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from drivers.connection import DeviceError, ModbusConnection
from drivers.device import (
    Device,
    Health,
    Latest,
    WriteError,
    WriteRefusedError,
    WriteResult,
)
from drivers.profile import PollClass, Profile
from drivers.samples import SampleQueue
from drivers.telemetry import Quality

SCHEMA = 1
# newest fast values older than this many fast intervals are stale (the shard is late)
STALE_AFTER_INTERVALS = 3
QUALITY_CODE = {Quality.GOOD: "g", Quality.STALE: "s", Quality.BAD: "b",
                Quality.MISSING: "m"}
_CODE_QUALITY = {v: k for k, v in QUALITY_CODE.items()}
_CLASSES = {pc.value: pc for pc in PollClass}
_HEALTH = {h.value: h for h in Health}
# what an ack's error may be: write guard refusals, then what went wrong on the way
ACK_ERRORS = ("refused", "read_only", "unknown_point", "unknown_asset", "failed", "expired",
              "busy", "bad_request")


class WireError(ValueError):
    """A message that is not what the shard wire format says; the text names the field."""


class ShardChannel(Protocol):
    """How a remote device reaches its shard."""

    def alive(self, shard: int) -> bool:
        """Whether the shard is heard from (online, its messages arriving)."""
        ...

    async def request(self, shard: int, body: dict[str, Any], *,
                      timeout_s: float) -> dict[str, Any]:
        """Send a setpoint request; its ack (raises ``TimeoutError`` after ``timeout_s``)."""
        ...


class RemoteConnection(ModbusConnection):
    """The ``connection`` of a remote device: there is none from this process, and any
    request through it fails at once, saying which shard polls the device."""

    def __init__(self, shard: int) -> None:
        super().__init__(host=f"shard-{shard}", port=0)
        self.shard = shard

    def submit(self, unit_id: int, function: int, address: int, frame: bytearray,
               expect: int, deliver: Callable[[bytes | None, DeviceError | None], None],
               ) -> None:
        asyncio.get_running_loop().call_soon(deliver, None, DeviceError(
            f"unit {unit_id} is polled by shard {self.shard}: no Modbus connection from "
            "this process"))


# -- telemetry ----------------------------------------------------------------------------


def poll_entry(dev: Device, poll_class: PollClass) -> list[Any] | None:
    """The telemetry entry of a device's newest read of a poll class (None: never read)."""
    codecs = dev._blocks[poll_class]
    if not codecs:
        return None
    if len(codecs) == 1:  # the common case, one read block: no copies
        rec = dev._last.get(codecs[0])
        if rec is None:
            return None
        if rec[1] is codecs[0].all_good:
            return [dev.asset_id, poll_class.value, rec[2].timestamp(), dev.health.value,
                    base64.b64encode(_packer(len(rec[0])).pack(*rec[0])).decode("ascii"), ""]
    values: list[float | None] = []
    quals: list[Quality] = []
    good = True
    ts: datetime | None = None
    last = dev._last
    for c in codecs:
        rec = last.get(c)
        if rec is None:
            return None
        values.extend(rec[0])
        quals.extend(rec[1])
        good = good and rec[1] is c.all_good
        if ts is None:
            ts = rec[2]
    assert ts is not None
    if good or all(q is Quality.GOOD for q in quals):
        q = ""
        packed = _packer(len(values)).pack(*values)
    else:  # a value that is not good may be no number at all (infinity): sent as missing
        q = "".join([QUALITY_CODE[x] for x in quals])
        packed = _packer(len(values)).pack(*[
            v if v is not None and math.isfinite(v) else math.nan for v in values])
    return [dev.asset_id, poll_class.value, ts.timestamp(), dev.health.value,
            base64.b64encode(packed).decode("ascii"), q]


@functools.cache
def _packer(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}d")


def telemetry_message(shard: int, seq: int, sent: float, entries: list[list[Any]], *,
                      polled: int | None = None) -> bytes:
    """``polled``: the shard's polls so far (what it did, against what arrives)."""
    head: dict[str, Any] = {"schema": SCHEMA, "shard": shard, "seq": seq, "sent": sent}
    if polled is not None:
        head["polled"] = polled
    return json.dumps({**head, "polls": entries}, separators=(",", ":"),
                      allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Telemetry:
    shard: int
    seq: int
    sent: float
    polls: list[list[Any]]  # entries, checked as they are applied (RemoteDevice.apply)
    polled: int | None = None  # the shard's polls so far


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is no JSON number")


def _obj(payload: bytes | str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"{what}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WireError(f"{what}: a JSON object is expected, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise WireError(f"{what}: schema {data.get('schema')!r} is not allowed; this side "
                        f"speaks schema {SCHEMA}")
    return data


def _field(data: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    v = data.get(key)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        raise WireError(f"{what}: {key} = {v!r} is not allowed: a {names} is expected")
    return v


_NUM = (int, float)


def parse_telemetry(payload: bytes | str) -> Telemetry:
    data = _obj(payload, "telemetry")
    polls = _field(data, "polls", (list,), "telemetry")
    polled = data.get("polled")
    return Telemetry(polled=polled if isinstance(polled, int) else None,
                     shard=_field(data, "shard", (int,), "telemetry"),
                     seq=_field(data, "seq", (int,), "telemetry"),
                     sent=float(_field(data, "sent", _NUM, "telemetry")),
                     polls=polls)


_NUMBER_TYPES = frozenset({float, int, type(None)})


def _values(asset: str, values: object, quals: str) -> Sequence[float | None]:
    """An entry's values: packed (base64 of little-endian float64, NaN for none), or a
    JSON list of numbers and nulls."""
    if isinstance(values, str):
        try:
            raw = base64.b64decode(values, validate=True)
        except ValueError:
            raise EntryError(f"telemetry entry {asset}: values {values[:20]!r}... are not "
                             "base64") from None
        if len(raw) % 8:
            raise EntryError(f"telemetry entry {asset}: {len(raw)} bytes of values, not a "
                             "whole number of float64")
        t: tuple[float, ...] = _packer(len(raw) // 8).unpack(raw)
        if not quals:
            if not math.isfinite(math.fsum(t)):  # NaN or infinity said good
                raise EntryError(f"telemetry entry {asset}: a value said good is no finite "
                                 "number")
            return t
        return [None if v != v or v in _INF else v for v in t]
    if not isinstance(values, list) or not _NUMBER_TYPES.issuperset(map(type, values)):
        raise EntryError(f"telemetry entry {asset}: values must be packed (base64 float64) "
                         "or a list of numbers and nulls")
    return values


_INF = (math.inf, -math.inf)


class EntryError(WireError):
    """One telemetry entry that is not what the format says (the others still apply)."""


def check_entry(entry: object) -> tuple[str, PollClass, float, Health,
                                       Sequence[float | None], str]:
    """The fields of a telemetry entry, checked (values only in type: their count is the
    device's to check)."""
    if not isinstance(entry, list) or len(entry) != 6:
        raise EntryError(f"telemetry entry {str(entry)[:80]}: a list of 6 is expected "
                         "[asset, class, ts, health, values, qualities]")
    asset, pc, ts, health, values, quals = entry
    if not isinstance(asset, str):
        raise EntryError(f"telemetry entry: asset {asset!r} is not a string")
    klass = _CLASSES.get(pc) if isinstance(pc, str) else None
    if klass is None:
        raise EntryError(f"telemetry entry {asset}: class {pc!r} is not allowed; allowed: "
                         f"{sorted(_CLASSES)}")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise EntryError(f"telemetry entry {asset}: ts {ts!r} is not a POSIX time")
    h = _HEALTH.get(health) if isinstance(health, str) else None
    if h is None:
        raise EntryError(f"telemetry entry {asset}: health {health!r} is not allowed; "
                         f"allowed: {sorted(_HEALTH)}")
    if not isinstance(quals, str) or (quals and not set(quals) <= _CODE_QUALITY.keys()):
        raise EntryError(f"telemetry entry {asset}: qualities {str(quals)[:40]!r} must be "
                         f"'' or one of {sorted(_CODE_QUALITY)} per value")
    vals = _values(asset, values, quals)
    if quals and len(quals) != len(vals):
        raise EntryError(f"telemetry entry {asset}: {len(quals)} qualities for "
                         f"{len(vals)} values")
    return asset, klass, float(ts), h, vals, quals


# -- setpoints ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetpointRequest:
    id: str
    asset: str
    point: str
    value: float
    verify: bool
    deadline_s: float
    expires_at: float


def setpoint_message(req: SetpointRequest) -> bytes:
    return json.dumps({"schema": SCHEMA, "id": req.id, "asset": req.asset,
                       "point": req.point, "value": req.value, "verify": req.verify,
                       "deadline_s": req.deadline_s, "expires_at": req.expires_at},
                      allow_nan=False).encode()


def parse_setpoint(payload: bytes | str) -> SetpointRequest:
    data = _obj(payload, "setpoint")
    what = f"setpoint {str(data.get('id'))[:40]}"
    value = float(_field(data, "value", _NUM, what))
    deadline = float(_field(data, "deadline_s", _NUM, what))
    if not math.isfinite(value):  # json takes NaN and Infinity: never as a setpoint
        raise WireError(f"{what}: value {value} is not allowed: a finite number is expected")
    if not 0 < deadline <= 600:
        raise WireError(f"{what}: deadline_s {deadline} is not allowed: (0, 600] s")
    return SetpointRequest(id=_field(data, "id", (str,), what),
                           asset=_field(data, "asset", (str,), what),
                           point=_field(data, "point", (str,), what), value=value,
                           verify=_field(data, "verify", (bool,), what), deadline_s=deadline,
                           expires_at=float(_field(data, "expires_at", _NUM, what)))


def ack_ok(req_id: str, res: WriteResult) -> bytes:
    return json.dumps({"schema": SCHEMA, "id": req_id, "ok": True, "point": res.point,
                       "requested": res.requested, "written": res.written,
                       "clamped": res.clamped, "attempts": res.attempts}).encode()


def ack_error(req_id: str, error: str, message: str) -> bytes:
    assert error in ACK_ERRORS, error
    return json.dumps({"schema": SCHEMA, "id": req_id, "ok": False, "error": error,
                       "message": message}).encode()


def parse_ack(payload: bytes | str) -> dict[str, Any]:
    data = _obj(payload, "ack")
    what = f"ack {str(data.get('id'))[:40]}"
    _field(data, "id", (str,), what)
    if _field(data, "ok", (bool,), what):
        for key in ("requested", "written"):
            _field(data, key, _NUM, what)
        _field(data, "clamped", (bool,), what)
        _field(data, "attempts", (int,), what)
        _field(data, "point", (str,), what)
    elif data.get("error") not in ACK_ERRORS:
        raise WireError(f"{what}: error {data.get('error')!r} is not allowed; allowed: "
                        f"{list(ACK_ERRORS)}")
    return data


def result_of(ack: dict[str, Any], where: str) -> WriteResult:
    """The write result an ack reports, or the exception ``Device.write`` would raise."""
    if ack["ok"]:
        return WriteResult(ack["point"], float(ack["requested"]), float(ack["written"]),
                           ack["clamped"], ack["attempts"])
    error, message = ack["error"], str(ack.get("message", ""))
    if error == "refused":
        raise WriteRefusedError(message)
    if error == "read_only":
        raise PermissionError(message)
    if error == "unknown_point":
        raise KeyError(message)
    raise WriteError(f"{where}: {error}: {message}")


# -- the device ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class RemoteDevice(Device):
    """A device a shard polls, as the controller uses it: ``poll`` returns the newest
    values the shard sent (stale, and the device offline, when they are older than
    ``max_age_s`` or the shard is silent), ``value``/``latest``/``health`` as a ``Device``'s,
    ``write`` a request the shard carries out and acknowledges. Received values also go to
    ``sink``. ``connection`` is a :class:`RemoteConnection` (build with
    :func:`remote_device`)."""

    channel: ShardChannel
    shard: int
    max_age_s: float = 3.0
    round_trip_s: float = 1.0  # allowed for the request and its ack, beyond the deadline
    timeout_s: float = 1.0  # the shard's Modbus request timeout (default write deadline)
    _newest: dict[PollClass, datetime] = field(default_factory=dict, init=False)
    _reported: Health = field(default=Health.OFFLINE, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._class_points = {pc: sum(len(c.names) for c in codecs)
                              for pc, codecs in self._blocks.items()}
        self._names = {pc: tuple(self.wire_points(pc)) for pc in self._blocks}

    def wire_points(self, poll_class: PollClass) -> list[str]:
        """The points of a poll class in the order their values travel."""
        return [n for c in self._blocks[poll_class] for n in c.names]

    def apply(self, poll_class: PollClass, ts_s: float, health: Health,
              values: Sequence[float | None], qualities: str) -> None:
        """Take one poll the shard sent (raises :class:`EntryError`, changing nothing, when
        it does not fit the profile)."""
        codecs = self._blocks[poll_class]
        n = self._class_points[poll_class]
        if len(values) != n:
            raise EntryError(f"telemetry entry {self.asset_id}: {len(values)} {poll_class} "
                             f"values, profile {self.profile.name} has {n} {poll_class} points")
        if not qualities and None in values:
            raise EntryError(f"telemetry entry {self.asset_id}: a null value said good")
        ts = datetime.fromtimestamp(ts_s, UTC)
        newest = self._newest.get(poll_class)
        if newest is not None and ts < newest:
            return  # an older poll than one already taken (a retained snapshot)
        self._newest[poll_class] = ts
        self._reported = self.health = health
        at = 0
        sink = self.sink
        for c in codecs:
            k = len(c.names)
            vals = values[at: at + k] if len(codecs) > 1 else values
            quals: Sequence[Quality] = (
                c.all_good if not qualities else
                [_CODE_QUALITY[q] for q in qualities[at: at + k]])
            self._last[c] = (vals, quals, ts)
            if sink is not None:
                sink.put_block(self.asset_id, c.names, c.units, vals, quals, ts)
            at += k

    def _age(self, poll_class: PollClass) -> None:
        """Mark what the shard sent stale when it is too old or the shard is silent. The
        device is online (as the shard reports it) only while its fast values are fresh."""
        alive = self.channel.alive(self.shard)
        fast = self._newest.get(PollClass.FAST)
        if self._blocks[PollClass.FAST]:
            fresh = alive and fast is not None and (
                self.now() - fast).total_seconds() <= self.max_age_s
        else:  # nothing polled fast: alive is all there is to know
            fresh = alive and bool(self._newest)
        self.health = self._reported if fresh else Health.OFFLINE
        if alive and (fresh or poll_class is not PollClass.FAST):
            return
        for c in self._blocks[poll_class]:
            rec = self._last.get(c)
            if rec is not None and Quality.GOOD in rec[1]:
                self._last[c] = (rec[0], [Quality.STALE if q is Quality.GOOD else q
                                          for q in rec[1]], rec[2])

    def start_poll(self, poll_class: PollClass, done: Callable[[Latest | Exception], None],
                   ) -> None:
        asyncio.get_running_loop().call_soon(done, self._latest_of(poll_class))

    async def poll(self, poll_class: PollClass = PollClass.FAST) -> Latest:
        """The newest values of a poll class the shard sent (no read: the shard polls on
        its own schedule); stale when too old, and the device offline then."""
        return self._latest_of(poll_class)

    def _latest_of(self, poll_class: PollClass) -> Latest:
        self._age(poll_class)
        # a class's blocks are all taken at once (apply): all there, or none yet
        return Latest(self, self._names[poll_class] if poll_class in self._newest else ())

    async def write(self, point_name: str, value: float, *, verify: bool = True,
                    deadline_s: float | None = None) -> WriteResult:
        """Have the shard write the point (its ``Device.write``: the write guard, the
        read-back, retries until ``deadline_s``); raises what ``Device.write`` raises, and
        :class:`WriteError` when no ack comes in time."""
        where = f"{self.asset_id}.{point_name}"
        if point_name not in self._by_name:
            raise KeyError(f"{self.asset_id}: profile {self.profile.name} has no point "
                           f"{point_name!r}; nothing written")
        if not math.isfinite(value):
            raise WriteRefusedError(f"{where}: refusing to write {value}: not a finite number; "
                                    "nothing written")
        budget = deadline_s if deadline_s is not None else 3 * self.timeout_s
        wait_s = budget + self.round_trip_s
        body = {"asset": self.asset_id, "point": point_name, "value": float(value),
                "verify": verify, "deadline_s": budget}
        try:
            ack = await self.channel.request(self.shard, body, timeout_s=wait_s)
            res = result_of(ack, where)
        except TimeoutError:
            self.write_failures += 1
            raise WriteError(f"{where} = {value:.1f}: no answer from shard {self.shard} "
                             f"within {wait_s:g} s") from None
        except WriteError:
            self.write_failures += 1
            raise
        self.clamps += res.clamped
        return res


def remote_device(*, asset_id: str, profile: Profile, unit_id: int,
                  now: Callable[[], datetime], channel: ShardChannel, shard: int,
                  sink: SampleQueue | None = None, max_age_s: float = 3.0,
                  timeout_s: float = 1.0) -> RemoteDevice:
    """A :class:`RemoteDevice` on a :class:`RemoteConnection` to its shard."""
    return RemoteDevice(asset_id=asset_id, profile=profile, connection=RemoteConnection(shard),
                        unit_id=unit_id, now=now, sink=sink, channel=channel, shard=shard,
                        max_age_s=max_age_s, timeout_s=timeout_s)


__all__ = [
    "ACK_ERRORS",
    "EntryError",
    "RemoteConnection",
    "RemoteDevice",
    "SetpointRequest",
    "ShardChannel",
    "Telemetry",
    "WireError",
    "ack_error",
    "ack_ok",
    "check_entry",
    "parse_ack",
    "parse_setpoint",
    "parse_telemetry",
    "poll_entry",
    "remote_device",
    "result_of",
    "setpoint_message",
    "telemetry_message",
]
