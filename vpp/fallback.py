"""When the optimiser gives no plan: the last good plan, then a rule-based plan.

The chain, in order (``Schedule.source`` says which one is in force):

1. ``optimal``: the solve of this round;
2. ``last-good``: the last usable plan, while it still covers the present. Its steps are
   anchored in absolute time, so "shifted in time" is reading it at the step that holds
   now; its tail ages out of the horizon;
3. ``rule-based``: :func:`rule_based_plan` below, from the same forecasts. It keeps the cap
   in the dangerous case on its own: each step's batteries charge what generation at its
   high quantile would put over the cap (as far as their power and SOC allow), and the
   generators' limits cut the rest in proportion to what each could give. It wastes more
   than the optimum (no look-ahead: a battery full by noon cannot help at two), which is
   why it is the last resort.

Under every plan the real-time loop (:mod:`vpp.enforce`) keeps the measured export under
the cap; a plan only says where batteries should be and what limits to expect.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import numpy as np

from vpp.dispatch import DispatchInputs, Fleet, Schedule, SolveStatus

OPTIMAL, LAST_GOOD, RULE_BASED = "optimal", "last-good", "rule-based"


def last_good(plan: Schedule | None, now: datetime) -> Schedule | None:
    """The last usable plan, re-labelled, if it still holds a step for ``now``."""
    if plan is None or not plan.status.usable or plan.step_at(now) is None:
        return None
    return plan if plan.source == LAST_GOOD else replace(plan, source=LAST_GOOD)


def rule_based_plan(fleet: Fleet, inputs: DispatchInputs, *, step_s: int,
                    created_at: datetime, reason: str) -> Schedule:
    """A plan that keeps the cap from the forecasts by rules alone (module docstring)."""
    T = len(inputs.export_cap_w)
    dt_h = step_s / 3600.0
    cap = np.asarray(inputs.export_cap_w, dtype=float)
    high = {g.id: np.minimum(np.maximum.reduce([inputs.gen_high_w[g.id], inputs.gen_mid_w[g.id],
                                                inputs.gen_low_w[g.id]]), g.rated_power_w)
            for g in fleet.generators}
    # flexible loads: their energy spread evenly over each window
    flex = {x.id: np.zeros(T) for x in fleet.flex_loads}
    for x in fleet.flex_loads:
        if x.id in inputs.flex_out:
            continue
        for w in inputs.flex_windows.get(x.id, ()):
            flex[x.id][w.first:w.end] += min(x.max_w, w.energy_wh / ((w.end - w.first) * dt_h))
        flex[x.id] = np.minimum(flex[x.id], x.max_w)
    draw = sum(flex.values(), np.zeros(T))
    base = sum(high.values(), np.zeros(T)) - np.asarray(inputs.load_low_w) - draw
    excess = np.clip(base - cap, 0.0, None)

    energy = {b.id: min(max(inputs.soc[b.id], b.soc_min), b.soc_max) * b.capacity_wh
              for b in fleet.batteries}
    soc = {b.id: [energy[b.id] / b.capacity_wh] for b in fleet.batteries}
    battery = {b.id: np.zeros(T) for b in fleet.batteries}
    usable = [b for b in fleet.batteries if b.id not in inputs.batteries_out]
    for t in range(T):
        room = {b.id: max(0.0, min(b.max_charge_w, (b.soc_max * b.capacity_wh - energy[b.id])
                                   / (dt_h * b.charge_efficiency))) for b in usable}
        total = sum(room.values())
        take = min(excess[t], total)
        for b in fleet.batteries:
            ch = take * room[b.id] / total if b.id in room and total > 0 else 0.0
            battery[b.id][t] = -ch
            energy[b.id] += dt_h * b.charge_efficiency * ch
            soc[b.id].append(energy[b.id] / b.capacity_wh)
    net_b = sum(battery.values(), np.zeros(T))
    left = np.clip(excess + net_b, 0.0, None)  # what the batteries could not take
    # a generator out of control runs free: its limit stays at its high forecast
    controllable = {g: h for g, h in high.items() if g not in inputs.generators_uncontrolled}
    total_c = sum(controllable.values(), np.zeros(T))
    limits = {}
    for g, h in high.items():
        if g in controllable:
            share = np.divide(h, total_c, out=np.zeros(T), where=total_c > 0)
            limits[g] = np.clip(h - left * share, 0.0, None)
        else:
            limits[g] = h
    mid = {g.id: np.asarray(inputs.gen_mid_w[g.id], dtype=float) for g in fleet.generators}
    curt = {g: np.clip(mid[g] - limits[g], 0.0, None) for g in limits}
    worst = sum(limits.values(), np.zeros(T)) + net_b - draw - np.asarray(inputs.load_low_w)
    expected = sum((np.minimum(limits[g], mid[g]) for g in limits), np.zeros(T)) + net_b \
        - draw - np.asarray(inputs.load_mid_w)
    throughput = sum(float(np.abs(v).sum()) for v in battery.values()) * dt_h
    return Schedule(
        created_at=created_at, start=inputs.start, step_s=step_s, status=SolveStatus.OPTIMAL,
        solver="rules", solve_time_s=0.0, objective=float("nan"), battery_w=battery,
        soc={k: np.asarray(v) for k, v in soc.items()}, gen_limit_w=limits,
        expected_curtailment_w=curt, flex_w=flex, export_worst_w=worst,
        export_expected_w=expected, export_cap_w=cap,
        import_limit_w=np.asarray(inputs.import_limit_w, dtype=float),
        terms={"curtailment": float(sum(c.sum() for c in curt.values())) * dt_h,
               "battery_throughput_wh": throughput},
        source=RULE_BASED, inputs=inputs, message=reason)
