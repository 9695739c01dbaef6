"""From the site configuration and what the devices say to the dispatch model's terms.

Pure: the fleet the model is built for, and the flexible loads' energy windows.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from vpp.aggregate import AggregateDispatcher
from vpp.config import LoadAsset, SiteConfig
from vpp.dispatch import (
    BatteryModel,
    Dispatcher,
    Fleet,
    FlexLoadModel,
    FlexWindow,
    GeneratorModel,
    GroupLimit,
    Weights,
)


def fleet_of(config: SiteConfig) -> Fleet:
    gens = [*config.of_kind("pv"), *config.of_kind("wind")]
    return Fleet(
        generators=tuple(GeneratorModel(id=g.id, kind=g.kind, rated_power_w=g.rated_power_w)
                         for g in gens),
        batteries=tuple(BatteryModel(
            id=b.id, capacity_wh=b.capacity_wh, max_charge_w=b.max_charge_w,
            max_discharge_w=b.max_discharge_w, soc_min=b.soc_min, soc_max=b.soc_max,
            charge_efficiency=b.charge_efficiency,
            discharge_efficiency=b.discharge_efficiency) for b in config.of_kind("battery")),
        flex_loads=tuple(FlexLoadModel(id=x.id, max_w=x.flexible.max_w)
                         for x in config.flexible_loads() if x.flexible is not None),
        groups=tuple(GroupLimit(id=g.id, assets=g.assets, max_export_w=g.max_export_w,
                                max_import_w=g.max_import_w) for g in config.dispatch.groups))


def dispatcher_for(config: SiteConfig) -> Dispatcher | AggregateDispatcher:
    """The site's dispatch LP: over its aggregates (the default), or asset by asset."""
    d = config.dispatch
    ramp = None if d.export_ramp_limit_ratio is None else \
        d.export_ramp_limit_ratio * config.pcc.export_cap_w
    weights = Weights(
        curtailment_per_wh=d.curtailment_weight_per_wh,
        battery_wear_per_wh=d.battery_wear_weight_per_wh, soc_target=d.soc_target,
        soc_target_per_wh=d.soc_target_weight_per_wh,
        export_peak_per_w=d.export_peak_weight_per_w,
        export_ramp_per_wh=d.export_ramp_weight_per_wh, tracking_per_wh=d.tracking_weight_per_wh,
        import_per_wh=d.import_weight_per_wh,
        high_case_curtailment_ratio=d.high_case_curtailment_ratio)
    steps = round(d.horizon_h * 3600 / d.step_s)
    if d.aggregate:
        return AggregateDispatcher(fleet_of(config), steps=steps, step_s=d.step_s,
                                   weights=weights, export_ramp_w_per_step=ramp,
                                   soc_tolerance=d.aggregate_soc_tolerance)
    return Dispatcher(fleet_of(config), steps=steps, step_s=d.step_s, weights=weights,
                      export_ramp_w_per_step=ramp)


def flex_windows(asset: LoadAsset, *, start: datetime, steps: int, step_s: int, tz: str,
                 due_today_wh: float | None) -> tuple[FlexWindow, ...]:
    """The energy windows of a flexible load over a plan from ``start``: what it still
    needs today by today's deadline (``due_today_wh``, as the device reports it; None: not
    known, nothing planned for today), then its daily energy by each later deadline that
    falls inside the plan. A deadline beyond the plan's end is left to later plans."""
    flex = asset.flexible
    if flex is None:
        return ()
    zone = ZoneInfo(tz)
    local = start.astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    out: list[FlexWindow] = []
    day = 0
    while True:
        day_start = (midnight + timedelta(days=day)).astimezone(start.tzinfo)
        deadline = day_start + timedelta(hours=flex.deadline_h)
        first = max(0, math.ceil((day_start - start).total_seconds() / step_s))
        end = math.floor((deadline - start).total_seconds() / step_s)
        if first >= steps or end > steps:
            break
        energy = (due_today_wh if day == 0 else flex.daily_energy_wh)
        if end > first and energy is not None and energy > 0:
            out.append(FlexWindow(first=first, end=end, energy_wh=float(energy)))
        day += 1
    return tuple(out)
