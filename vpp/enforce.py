"""Real-time export-cap enforcement: one pure step per control interval.

The schedule is the plan; this loop corrects forecast error from the measured PCC export.
Its one promise: after its commands, the export cannot rise above the target
``cap × (1 − margin)`` even if every generator jumped at once to what it could physically
give (its *potential*: nameplate for wind, the clear-sky envelope for PV). It keeps that
promise by handing out *headroom*: a generator's limit is at most its measured output plus
its share of the room left under the target. Cloud edges and gusts then hit the limits,
not the cap, and the loop's interval does not matter for safety.

Priorities, as DESIGN.md sets them:

1. over the target: absorb the excess with battery charging headroom, then curtail
   generation in proportion to what each plant gives;
2. a generator pinned at its limit (curtailing) while a battery can charge more: charge
   more, so the next step can release the limit; release is gradual by construction
   (limits rise by the room measured, no more);
3. otherwise return the batteries to the planned setpoint with the room that is left
   after the generators' headroom.

Batteries taper their charge and discharge as the SOC nears its bounds, so a battery
never stops abruptly at a bound (which would throw its power onto the PCC at once).
Flexible loads take part as one-way stores: they may draw more to absorb an excess (as far
as the energy they still need allows, tapered the same way, since a load that finishes
stops drawing at once), and return to their planned draw with the room that is left.

Generators with a ramp rate are honoured both ways: a limit rises by at most the rate ×
the control interval per step (release is gradual), and a cut is counted as taking effect
only as fast as the rate allows, so the part a slow plant cannot shed this step is cut
from the faster ones.

If the PCC measurement is lost, the loop fails safe: no limit is raised, no battery
discharge increases, generation is held at or below what it was, and whatever a battery
must give back (its charge tapering near full) is cut from generation.

An asset whose own reading cannot be trusted is *held*: nothing is written to it, and a
held generator's possible rise up to its limit is reserved out of the room the others get.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum


class EnforceMode(StrEnum):
    NORMAL = "normal"  # no generator limited below its potential, batteries on plan
    HEADROOM = "headroom"  # limits hold generators near their output (room is short)
    ABSORBING = "absorbing"  # batteries charging beyond plan to avoid curtailment
    CURTAILING = "curtailing"  # export over target: generation cut
    PCC_LOST = "pcc_lost"  # no trustworthy PCC measurement: fail safe


@dataclass(frozen=True, kw_only=True)
class GeneratorNow:
    id: str
    output_w: float  # measured [W]
    potential_w: float  # the most it could physically give now [W]
    rated_power_w: float
    limit_w: float  # limit in force (read back from the device) [W]
    controllable: bool = True  # False: its reading is not trustworthy; hold it, reserve its rise
    max_step_w: float = math.inf  # the most its output may change in one control step [W]


@dataclass(frozen=True, kw_only=True)
class BatteryNow:
    id: str
    power_w: float  # measured, + discharge [W]
    soc: float
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_min: float
    soc_max: float
    planned_w: float  # the schedule's setpoint for this step [W]
    controllable: bool = True  # False: its reading is not trustworthy; hold it, do not count on it


@dataclass(frozen=True, kw_only=True)
class FlexNow:
    id: str
    draw_w: float  # measured, positive when drawing [W]
    max_w: float
    due_wh: float  # energy it still needs today
    planned_draw_w: float  # the schedule's draw for this step [W]
    controllable: bool = True

    def as_store(self) -> BatteryNow:
        """The load as a battery that can only charge, and only as much as it needs."""
        return BatteryNow(id=self.id, power_w=-self.draw_w, soc=0.0,
                          capacity_wh=max(self.due_wh, 0.0), max_charge_w=self.max_w,
                          max_discharge_w=0.0, soc_min=0.0, soc_max=1.0,
                          planned_w=-self.planned_draw_w, controllable=self.controllable)


@dataclass(frozen=True, kw_only=True)
class EnforceParams:
    margin_ratio: float = 0.03
    soc_taper_s: float = 600.0  # a battery may empty/fill its last margin no faster than this
    binding_tolerance_ratio: float = 0.01  # output ≥ limit − this × rated: the limit binds
    absorb_step_ratio: float = 0.25  # extra charging per step, as a share of max charge


@dataclass(frozen=True, kw_only=True)
class Command:
    """What to write this step."""

    limits_w: dict[str, float]
    battery_w: dict[str, float]  # batteries, + discharge [W]
    mode: EnforceMode
    target_w: float
    room_w: float  # target − measured export [W]
    worst_export_w: float  # export if every generator rose to its limit or potential [W]
    notes: list[str] = field(default_factory=list)
    flex_draw_w: dict[str, float] = field(default_factory=dict)  # flexible loads, + drawing [W]


def _charge_allowed(b: BatteryNow, p: EnforceParams) -> float:
    room_wh = max(0.0, (b.soc_max - b.soc) * b.capacity_wh)
    return min(b.max_charge_w, room_wh * 3600.0 / p.soc_taper_s)


def _discharge_allowed(b: BatteryNow, p: EnforceParams) -> float:
    avail_wh = max(0.0, (b.soc - b.soc_min) * b.capacity_wh)
    return min(b.max_discharge_w, avail_wh * 3600.0 / p.soc_taper_s)


def _spread(total: float, weights: dict[str, float]) -> dict[str, float]:
    s = sum(weights.values())
    if s <= 0:
        return dict.fromkeys(weights, 0.0)
    return {k: total * w / s for k, w in weights.items()}


def _worst_change(g: GeneratorNow, limit_w: float) -> float:
    """The most a generator's output can change under a new limit [W]: a cut below its
    output is certain as far as its ramp allows this step; above it, it may rise to what
    it could physically give."""
    if limit_w < g.output_w:
        return -min(g.output_w - limit_w, g.max_step_w)
    return max(0.0, min(limit_w, g.potential_w) - g.output_w)


def _cut(total: float, generators: list[GeneratorNow]) -> dict[str, float]:
    """Spread a cut over the generators in proportion to their output, none more than its
    ramp allows this step (water-filling: what a slow one cannot shed goes to the others).
    Whatever no one can shed stays with the generators in proportion (the note says so)."""
    cut = dict.fromkeys((g.id for g in generators), 0.0)
    left, free = total, {g.id: g for g in generators if g.output_w > 0}
    while left > 1e-6 and free:
        share = _spread(left, {k: g.output_w for k, g in free.items()})
        done = []
        for k, g in free.items():
            room = min(g.output_w, g.max_step_w) - cut[k]
            take = min(share[k], room)
            cut[k] += take
            left -= take
            if take >= room - 1e-9:
                done.append(k)
        if not done:
            break
        for k in done:
            free.pop(k)
    if left > 1e-6:  # beyond every ramp: ask for it anyway, the limits say where it should go
        extra = _spread(left, {g.id: g.output_w for g in generators})
        cut = {k: v + extra[k] for k, v in cut.items()}
    return cut


def enforce(*, export_w: float | None, cap_w: float, generators: list[GeneratorNow],
            batteries: list[BatteryNow], params: EnforceParams,
            flex_loads: Sequence[FlexNow] = ()) -> Command:
    """One control step: generator limits and battery setpoints from the measured PCC export."""
    flex_ids = {f.id for f in flex_loads}
    cmd = _enforce(export_w=export_w, cap_w=cap_w, generators=generators,
                   batteries=[*batteries, *(f.as_store() for f in flex_loads)], params=params)
    if not flex_ids:
        return cmd
    return replace(cmd, battery_w={k: v for k, v in cmd.battery_w.items() if k not in flex_ids},
                   flex_draw_w={k: max(0.0, -v) for k, v in cmd.battery_w.items()
                                if k in flex_ids})


def _rise_cap(g: GeneratorNow, limit_w: float) -> float:
    """A raised limit rises by at most the generator's ramp per step."""
    if limit_w <= g.limit_w:
        return limit_w
    return min(limit_w, max(g.limit_w, g.output_w) + g.max_step_w)


def _enforce(*, export_w: float | None, cap_w: float, generators: list[GeneratorNow],
             batteries: list[BatteryNow], params: EnforceParams) -> Command:
    target = cap_w * (1.0 - params.margin_ratio)
    held_gens = [g for g in generators if not g.controllable]
    held_bats = [b for b in batteries if not b.controllable]
    generators = [g for g in generators if g.controllable]
    batteries = [b for b in batteries if b.controllable]
    lo = {b.id: -_charge_allowed(b, params) for b in batteries}
    hi = {b.id: _discharge_allowed(b, params) for b in batteries}
    head = {g.id: max(0.0, min(g.potential_w, g.rated_power_w) - g.output_w) for g in generators}
    # a held generator may still rise to its limit, and a held battery that charges may stop
    # at any moment (full, tripped): that room is not the others' to take
    reserved = sum(max(0.0, min(g.limit_w, g.potential_w, g.rated_power_w) - g.output_w)
                   for g in held_gens) + sum(max(0.0, -b.power_w) for b in held_bats)
    held = {g.id: g.limit_w for g in held_gens}
    held_b = {b.id: b.power_w for b in held_bats}
    notes: list[str] = [f"{a} held: its reading is not usable" for a in [*held, *held_b]]

    if export_w is None:
        # fail safe: hold generation at or below its output, never discharge more; what the
        # batteries must give back (charging tapers near full) comes off generation
        hold = {g.id: min(g.limit_w, g.output_w) for g in generators}
        bats = {b.id: max(min(b.planned_w, b.power_w), lo[b.id]) for b in batteries}
        rise = sum(max(0.0, bats[b.id] - b.power_w) for b in batteries)
        if rise > 0:
            cut = _spread(rise, {g.id: g.output_w for g in generators})
            hold = {k: max(0.0, v - cut[k]) for k, v in hold.items()}
        return Command(limits_w={**hold, **held}, battery_w={**bats, **held_b},
                       mode=EnforceMode.PCC_LOST,
                       target_w=target, room_w=float("nan"), worst_export_w=float("nan"),
                       notes=["PCC measurement lost: holding generation, no extra discharge"])

    room = target - export_w - reserved
    b_now = {b.id: b.power_w for b in batteries}
    spare_charge = {b.id: max(0.0, b_now[b.id] - lo[b.id]) for b in batteries}
    binding = [g for g in generators
               if g.limit_w < min(g.potential_w, g.rated_power_w) - 1.0
               and g.output_w >= g.limit_w - params.binding_tolerance_ratio * g.rated_power_w]

    if room < 0:
        # 1. over target: batteries absorb first
        absorb = min(-room, sum(spare_charge.values()))
        share = _spread(absorb, spare_charge)
        bats = {k: b_now[k] - share[k] for k in b_now}
        mode = EnforceMode.ABSORBING
    elif binding and sum(spare_charge.values()) > 0:
        # 2. a generator is curtailing: charge more so its limit can rise
        wanted = sum(min(head[g.id], g.max_step_w) for g in binding)
        step = min(sum(spare_charge.values()), wanted,
                   params.absorb_step_ratio * sum(b.max_charge_w for b in batteries))
        share = _spread(step, spare_charge)
        bats = {k: b_now[k] - share[k] for k in b_now}
        mode = EnforceMode.ABSORBING
    else:
        # 3. back towards the plan, with the room the generators' headroom leaves
        free = room - sum(head.values())
        bats = {}
        for b in batteries:
            planned = min(max(b.planned_w, lo[b.id]), hi[b.id])
            if planned <= b_now[b.id]:
                bats[b.id] = planned  # less export than now: always safe
            else:
                rise = min(planned - b_now[b.id], max(0.0, free))
                free -= rise
                bats[b.id] = b_now[b.id] + rise
        mode = EnforceMode.NORMAL
    # a battery outside what its SOC allows is brought back first; whatever that (or any
    # other battery change) does to export is what the generators' limits must absorb
    bats = {k: min(max(v, lo[k]), hi[k]) for k, v in bats.items()}
    room_g = room - sum(bats[k] - b_now[k] for k in bats)
    # more charging asked of a battery may spare a cut, but raises no limit before it is
    # measured: a battery that lags its setpoint (or is just back) would hand the
    # generators room it has not made
    room_raise = min(room_g, room - sum(max(0.0, bats[k] - b_now[k]) for k in bats))

    # generators: headroom from the room left, or a cut when there is none
    limits: dict[str, float] = {}
    total_head = sum(head.values())
    if room_raise >= total_head:
        limits = {g.id: _rise_cap(g, g.rated_power_w) for g in generators}
    elif room_g >= 0:
        share = _spread(max(0.0, room_raise), head)
        limits = {g.id: _rise_cap(g, min(g.rated_power_w, g.output_w + share[g.id]))
                  for g in generators}
        if mode is EnforceMode.NORMAL:
            mode = EnforceMode.HEADROOM
    else:
        cut = _cut(-room_g, generators)
        limits = {g.id: max(0.0, g.output_w - cut[g.id]) for g in generators}
        if sum(g.output_w for g in generators) < -room_g:
            notes.append("generation cannot shed the whole excess")
        mode = EnforceMode.CURTAILING
    worst = export_w + reserved + sum(bats[k] - b_now[k] for k in bats) + sum(
        _worst_change(g, limits[g.id]) for g in generators)
    return Command(limits_w={**limits, **held}, battery_w={**bats, **held_b}, mode=mode,
                   target_w=target, room_w=room, worst_export_w=worst, notes=notes)
