"""What the controller asks of a device, whatever its register map.

The controller never writes vendor points by name for control: it sets an active-power
limit in W, and this module turns that into what the device takes. A profile with a
writable ``active_power_limit_w`` gets it directly. A SunSpec inverter gets ``WMaxLimPct``
in percent of ``WMax``, with its enable flag set and its reversion timer written with every
limit, so that the limit lapses if the controller stops refreshing it: model 704
(``WMaxLimPctEna``, ``WMaxLimPctRvrtTms``) where the device has it, else model 123
(``WMaxLim_Ena``, ``WMaxLimPct_RvrtTms``).

A battery takes a power setpoint in W (+ discharge): a generic profile's writable
``power_setpoint_w`` (its watchdog zeroes it when heartbeats stop), or SunSpec 704's
``WSet`` in watts mode, enabled by ``WSetEna`` and rewritten with its reversion timer
``WSetRvrtTms``; :func:`make_setpoints_safe` makes a lapsed setpoint 0 W (idle) through
``WSetRvrt`` = 0 with ``WSetEnaRvrt`` = 1, not whatever the device would do on its own.

What a lapsed limit leaves is the device's *fallback limit*: a generic profile's
``fallback_limit_w`` (applied when heartbeats stop), or model 704's reversion values
``WMaxLimPctRvrt`` with ``WMaxLimPctEnaRvrt`` = 1. Model 123 has none: its limit simply
lifts, so a 123-only inverter cannot keep the cap on its own when the controller dies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from drivers.connection import DeviceError
from drivers.device import Device, WriteResult

LIMIT_W = "active_power_limit_w"
LIMIT_PCT = "active_power_limit_pct"
LIMIT_ENABLE = "active_power_limit_enable"
LIMIT_REVERT_S = "active_power_limit_revert_s"
LIMIT_WINDOW_S = "active_power_limit_window_s"
LIMIT_RAMP_S = "active_power_limit_ramp_s"
WMAX_W = "wmax_w"
RATED_W = "rated_power_w"
FALLBACK_W = "fallback_limit_w"
FALLBACK_PCT = "fallback_limit_pct"
FALLBACK_ENABLE = "fallback_limit_enable"
SETPOINT_W = "power_setpoint_w"
SETPOINT_ENABLE = "power_setpoint_enable"
SETPOINT_MODE = "power_setpoint_mode"
SETPOINT_REVERT_S = "power_setpoint_revert_s"
FALLBACK_SETPOINT_W = "fallback_setpoint_w"
FALLBACK_SETPOINT_ENABLE = "fallback_setpoint_enable"
SETPOINT_MODE_WATTS = 1.0  # SunSpec 704 WSetMod: WSet in W, not percent of WMax


log = logging.getLogger(__name__)


class CapabilityError(DeviceError):
    """The device cannot do what was asked (its profile lacks the points)."""


def _alias(dev: Device, house: str) -> str | None:
    a = dev.profile.aliases.get(house)
    return None if a is None else a.point


def _alias_or_refuse(dev: Device, house: str, refusal: str) -> str:
    point = _alias(dev, house)
    if point is None:
        raise CapabilityError(f"{dev.asset_id}: profile {dev.profile.name} {refusal}")
    return point


def _has_point(dev: Device, name: str) -> bool:
    return any(p.name == name for p in dev.profile.points)


def limit_base_w(dev: Device) -> float | None:
    """What 100 % means for a percentage limit [W]: WMax, else the rating."""
    return dev.value(WMAX_W) or dev.value(RATED_W)


def active_power_limit_w(dev: Device) -> float | None:
    """The limit in force as the device reports it [W]; None when unknown."""
    if _has_point(dev, LIMIT_W):
        return dev.value(LIMIT_W)
    pct, base = dev.value(LIMIT_PCT), limit_base_w(dev)
    if pct is None or base is None:
        return None
    enabled = dev.value(LIMIT_ENABLE)
    return base * pct / 100.0 if enabled == 1 else base


async def make_limits_immediate(dev: Device) -> None:
    """Zero a SunSpec device's limit window and ramp times, so a limit acts at once (a
    random window or a ramp would let export run over the cap while read-back passes)."""
    for house in (LIMIT_WINDOW_S, LIMIT_RAMP_S):
        point = _alias(dev, house)
        if point is not None and dev.value(house) != 0:
            try:
                await dev.write(point, 0.0)
            except DeviceError as exc:
                log.warning("%s: cannot zero %s (%s): its limits may act late", dev.asset_id,
                            point, exc)


def _percent_base_w(dev: Device) -> float:
    base = limit_base_w(dev)
    if not base:
        raise CapabilityError(f"{dev.asset_id}: WMax or the rated power has not been read; "
                              "cannot turn W into percent")
    return base


async def _write_percent(dev: Device, point: str, name: str, value_w: float, base_w: float,
                         deadline_s: float | None, verify: bool) -> WriteResult:
    """Write ``value_w`` as percent of ``base_w``; the result is in W, named ``name``."""
    res = await dev.write(point, 100.0 * value_w / base_w, deadline_s=deadline_s,
                          verify=verify)
    return WriteResult(name, value_w, res.written * base_w / 100.0, res.clamped, res.attempts)


async def set_active_power_limit_w(dev: Device, value_w: float, *, revert_s: float,
                                   deadline_s: float | None = None,
                                   verify: bool = True) -> WriteResult:
    """Set the device's active-power limit [W]; the result is in W."""
    if _has_point(dev, LIMIT_W):
        return await dev.write(LIMIT_W, value_w, deadline_s=deadline_s, verify=verify)
    pct_point = _alias_or_refuse(dev, LIMIT_PCT, "cannot set an active-power limit")
    base = _percent_base_w(dev)
    return await _write_timed(
        dev, _alias(dev, LIMIT_REVERT_S), revert_s, _alias(dev, LIMIT_ENABLE),
        lambda: _write_percent(dev, pct_point, LIMIT_W, value_w, base, deadline_s, verify),
        deadline_s, verify)


async def _write_timed(dev: Device, revert: str | None, revert_s: float, enable: str | None,
                       main: Callable[[], Awaitable[WriteResult]], deadline_s: float | None,
                       verify: bool) -> WriteResult:
    """A SunSpec control the way 704/123 take it: its reversion timer, then the value
    (``main``), then its enable flag, written every time: on some devices that write arms
    the reversion timer."""
    if revert is not None:
        await dev.write(revert, revert_s, deadline_s=deadline_s, verify=verify)
    res = await main()
    if enable is not None:
        await dev.write(enable, 1.0, deadline_s=deadline_s, verify=verify)
    return res


async def set_battery_power_w(dev: Device, value_w: float, *, revert_s: float,
                              deadline_s: float | None = None,
                              verify: bool = True) -> WriteResult:
    """Set a battery's power [W, + discharge, - charge]; the result is in W."""
    if _has_point(dev, SETPOINT_W):
        return await dev.write(SETPOINT_W, value_w, deadline_s=deadline_s, verify=verify)
    point = _alias_or_refuse(dev, SETPOINT_W, "takes no power setpoint")
    mode, revert, enable = (_alias(dev, n) for n in (SETPOINT_MODE, SETPOINT_REVERT_S,
                                                     SETPOINT_ENABLE))
    if mode is not None and dev.value(SETPOINT_MODE) != SETPOINT_MODE_WATTS:
        await dev.write(mode, SETPOINT_MODE_WATTS, deadline_s=deadline_s, verify=verify)
    res = await _write_timed(
        dev, revert, revert_s, enable,
        lambda: dev.write(point, value_w, deadline_s=deadline_s, verify=verify),
        deadline_s, verify)
    return WriteResult(SETPOINT_W, res.requested, res.written, res.clamped, res.attempts)


async def make_setpoints_safe(dev: Device) -> None:
    """Have a SunSpec battery idle (0 W) when its setpoint lapses, and take setpoints in W.
    A generic profile needs nothing: its watchdog zeroes the setpoint."""
    for house, value in ((SETPOINT_MODE, SETPOINT_MODE_WATTS), (FALLBACK_SETPOINT_W, 0.0),
                         (FALLBACK_SETPOINT_ENABLE, 1.0)):
        point = _alias(dev, house)
        if point is not None and dev.value(house) != value:
            try:
                await dev.write(point, value)
            except DeviceError as exc:
                log.warning("%s: cannot set %s to %g (%s): a lapsed setpoint may not idle",
                            dev.asset_id, point, value, exc)


def has_fallback_limit(dev: Device) -> bool:
    """Whether the device applies a limit of its own when the controller goes silent."""
    return _has_point(dev, FALLBACK_W) or _alias(dev, FALLBACK_PCT) is not None


def fallback_limit_w(dev: Device) -> float | None:
    """The fallback limit the device holds [W]; None when unknown or not enabled."""
    if _has_point(dev, FALLBACK_W):
        return dev.value(FALLBACK_W)
    pct, base = dev.value(FALLBACK_PCT), limit_base_w(dev)
    if pct is None or base is None or dev.value(FALLBACK_ENABLE) != 1:
        return None
    return base * pct / 100.0


async def set_fallback_limit_w(dev: Device, value_w: float, *, deadline_s: float | None = None,
                               verify: bool = True) -> WriteResult:
    """Set the limit the device falls back to on its own [W]; the result is in W."""
    if _has_point(dev, FALLBACK_W):
        return await dev.write(FALLBACK_W, value_w, deadline_s=deadline_s, verify=verify)
    pct_point, enable = _alias(dev, FALLBACK_PCT), _alias(dev, FALLBACK_ENABLE)
    if pct_point is None or enable is None:
        raise CapabilityError(f"{dev.asset_id}: profile {dev.profile.name} has no fallback "
                              "limit")
    base = _percent_base_w(dev)
    res = await _write_percent(dev, pct_point, FALLBACK_W, value_w, base, deadline_s, verify)
    await dev.write(enable, 1.0, deadline_s=deadline_s, verify=verify)
    return res


def in_fault(dev: Device) -> bool:
    """Whether the device reports itself in fault (its profile's ``fault`` point)."""
    flag = dev.profile.fault
    if flag is None:
        return False
    v = dev.value(flag.point)
    return v is not None and round(v) in flag.values
