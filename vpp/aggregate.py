"""Aggregation: the dispatch LP over classes of assets the single-bus model cannot tell
apart, with the setpoints split back to each asset.

A county's thousand assets make a thousand-fold LP; most of them differ only in their
numbers. Two reductions make the LP the size of the number of classes:

* **Generators** of the same feeder groups form one aggregate (and one more for those out
  of control this solve). This is *exact*: every generator's curtailment costs the same,
  and for any aggregate limit ``U`` the least curtailment of its members and the most
  they deliver in the low case are ``max(Σmid − U, Σ(mid − m))`` and ``min(U, Σlow')``,
  with ``m = min(mid, hi')``, ``low' = min(low, hi')``, ``hi' = min(high, rated)``; the
  aggregate model gives exactly these when its forecasts are ``Σlow'``, ``Σm`` and
  ``Σhi'`` and the constant ``Σ(mid − m)`` is added to its curtailment. The split fills
  the members in three stages (to ``low'``, to ``m``, to ``hi'``), each in proportion to
  what the stage gives them, which reaches both optima at once.
* **Batteries** of one class (same efficiencies, SOC bounds, power-to-energy ratios and
  groups) whose SOCs lie within a tolerance of each other form one pool: the sum of the
  members' constraints. At one SOC the pool is exact (split in proportion to capacity,
  every member's plan is the pool's, scaled); within the tolerance it is a relaxation (its
  energy moves freely between members). The split gives each step's pool power to the
  members in proportion to what each can still store or give, within its power and
  energy, so their SOCs drift together. Where the members cannot take what the pool
  planned, the generation that would then go over a group's limit or the cap is curtailed
  instead. Batteries the model can tell apart (other SOCs) stay apart.
  ``tests/vpp/test_aggregate.py`` checks the objective against the full LP and the
  split's physics.

Flexible loads pass through as they are. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from vpp.dispatch import (
    BatteryModel,
    Dispatcher,
    DispatchInputs,
    Fleet,
    GeneratorModel,
    GroupLimit,
    Schedule,
    Weights,
    check_assets,
)

FREE = ":free"  # the aggregate of a class's generators out of control this solve
SOC_TOLERANCE = 0.005  # batteries of a class this close in SOC are pooled


@dataclass(frozen=True)
class Aggregation:
    """The fleet's classes: the generator aggregates and the battery classes."""

    fleet: Fleet  # the real one
    generators: dict[str, tuple[GeneratorModel, ...]]  # aggregate id -> the class's members
    generator_models: tuple[GeneratorModel, ...]
    batteries: tuple[tuple[BatteryModel, ...], ...]  # the battery classes
    member_of: dict[str, tuple[str, ...]]  # a generator or flexible load -> its aggregates


def _groups_of(fleet: Fleet) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = defaultdict(list)
    for grp in fleet.groups:
        for a in grp.assets:
            out[a].append(grp.id)
    return {a: tuple(sorted(g)) for a, g in out.items()}


def _battery_class(b: BatteryModel, groups: tuple[str, ...]) -> tuple[object, ...]:
    r = 9  # digits: ratios equal to a part in 1e9 are the same class
    return (round(b.charge_efficiency, r), round(b.discharge_efficiency, r),
            round(b.soc_min, r), round(b.soc_max, r),
            round(b.max_charge_w / b.capacity_wh, r),
            round(b.max_discharge_w / b.capacity_wh, r), groups)


def aggregate_fleet(fleet: Fleet) -> Aggregation:
    """Classes of the fleet's generators and batteries."""
    groups = _groups_of(fleet)
    gen_classes: dict[tuple[str, ...], list[GeneratorModel]] = defaultdict(list)
    for g in fleet.generators:
        gen_classes[groups.get(g.id, ())].append(g)
    bat_classes: dict[tuple[object, ...], list[BatteryModel]] = defaultdict(list)
    for b in fleet.batteries:
        bat_classes[_battery_class(b, groups.get(b.id, ()))].append(b)
    gens: dict[str, tuple[GeneratorModel, ...]] = {}
    models: list[GeneratorModel] = []
    member_of: dict[str, list[str]] = defaultdict(list)
    for k, members in enumerate(gen_classes.values()):
        rated = sum(g.rated_power_w for g in members)
        for agg_id in (f"generators{k}", f"generators{k}{FREE}"):
            gens[agg_id] = tuple(members)
            models.append(GeneratorModel(id=agg_id, kind="aggregate", rated_power_w=rated))
            for g in members:
                member_of[g.id].append(agg_id)
    for x in fleet.flex_loads:
        member_of[x.id].append(x.id)
    return Aggregation(fleet=fleet, generators=gens, generator_models=tuple(models),
                       batteries=tuple(tuple(c) for c in bat_classes.values()),
                       member_of={k: tuple(v) for k, v in member_of.items()})


def pools(agg: Aggregation, inputs: DispatchInputs,
          soc_tolerance: float = SOC_TOLERANCE) -> dict[str, tuple[BatteryModel, ...]]:
    """This solve's battery pools: a class's batteries in service, by SOC, each pool within
    ``soc_tolerance`` of its lowest member (the model cannot tell them apart); at least one
    per class, empty when none is in service."""
    out: dict[str, tuple[BatteryModel, ...]] = {}
    for k, members in enumerate(agg.batteries):
        live = sorted((b for b in members if b.id not in inputs.batteries_out),
                      key=lambda b: (_clipped_soc(b, inputs.soc[b.id]), b.id))
        runs: list[list[BatteryModel]] = []
        for b in live:
            soc = _clipped_soc(b, inputs.soc[b.id])
            if not runs or soc - _clipped_soc(runs[-1][0], inputs.soc[runs[-1][0].id]) \
                    > soc_tolerance:
                runs.append([])
            runs[-1].append(b)
        # a class with none in service keeps an empty pool: the model is not rebuilt (a
        # rebuild mid-run holds the interpreter for a while) when its batteries trip
        out.update({f"batteries{k}.{j}": tuple(run) for j, run in enumerate(runs or [[]])})
    return out


def reduced_fleet(agg: Aggregation, pool_ids: Sequence[str]) -> Fleet:
    """The fleet of aggregates with these battery pools (each as large as its class: the
    bound; each solve sets its size)."""
    fleet = agg.fleet
    bats, member_of = [], {k: list(v) for k, v in agg.member_of.items()}
    for pid in pool_ids:
        members = agg.batteries[int(pid.removeprefix("batteries").split(".")[0])]
        bats.append(dataclasses.replace(
            members[0], id=pid, capacity_wh=math.fsum(b.capacity_wh for b in members),
            max_charge_w=sum(b.max_charge_w for b in members),
            max_discharge_w=sum(b.max_discharge_w for b in members)))
        for b in members:
            member_of.setdefault(b.id, []).append(pid)
    groups = tuple(GroupLimit(
        id=grp.id, assets=tuple(dict.fromkeys(
            a for m in grp.assets for a in member_of.get(m, ()))),
        max_export_w=grp.max_export_w, max_import_w=grp.max_import_w) for grp in fleet.groups)
    return Fleet(generators=agg.generator_models, batteries=tuple(bats),
                 flex_loads=fleet.flex_loads, groups=groups)


@dataclass(frozen=True)
class _GenBounds:
    low: np.ndarray  # low' = min(low, hi')
    mid: np.ndarray  # m = min(mid, hi')
    high: np.ndarray  # hi' = min(high, rated)
    excess: np.ndarray  # mid − m: curtailed whatever the limit
    high_full: np.ndarray  # high, not held to the rating


def _gen_bounds(g: GeneratorModel, inputs: DispatchInputs) -> _GenBounds:
    """A generator's forecasts as the dispatch model reads them (ordered, within rating)."""
    lo = np.clip(np.asarray(inputs.gen_low_w[g.id], dtype=float), 0.0, None)
    mid = np.maximum(np.clip(np.asarray(inputs.gen_mid_w[g.id], dtype=float), 0.0, None), lo)
    hi = np.maximum(np.clip(np.asarray(inputs.gen_high_w[g.id], dtype=float), 0.0, None), mid)
    hi_r = np.minimum(hi, g.rated_power_w)
    m = np.minimum(mid, hi_r)
    return _GenBounds(low=np.minimum(lo, hi_r), mid=m, high=hi_r, excess=mid - m, high_full=hi)


def _battery_limits_w(b: BatteryModel, inputs: DispatchInputs) -> tuple[float, float]:
    """(charge, discharge) the battery can do now: its ratings, or less where derated."""
    ch, dis = inputs.battery_limits_w.get(b.id, (b.max_charge_w, b.max_discharge_w))
    return min(max(ch, 0.0), b.max_charge_w), min(max(dis, 0.0), b.max_discharge_w)


def _clipped_soc(b: BatteryModel, soc: float) -> float:
    return min(max(float(soc), b.soc_min), b.soc_max)


def reduce_inputs(agg: Aggregation, inputs: DispatchInputs,
                  battery_pools: dict[str, tuple[BatteryModel, ...]]) -> DispatchInputs:
    """The aggregates' inputs. What a generator's forecast has above its rating is left
    out: it is curtailed whatever the plan (:meth:`AggregateDispatcher.split` counts it)."""
    T = len(inputs.export_cap_w)
    lows, mids, highs = {}, {}, {}
    uncontrolled: set[str] = set()
    for agg_id, members in agg.generators.items():
        free = agg_id.endswith(FREE)
        mine = [g for g in members if (g.id in inputs.generators_uncontrolled) == free]
        lo, mid, hi = np.zeros(T), np.zeros(T), np.zeros(T)
        for g in mine:
            bounds = _gen_bounds(g, inputs)
            lo += bounds.low
            mid += bounds.mid
            hi += bounds.high
        lows[agg_id], mids[agg_id], highs[agg_id] = lo, mid, hi
        if free and mine:
            uncontrolled.add(agg_id)
    soc, limits, capacity = {}, {}, {}
    for pid, pool in battery_pools.items():
        capacity[pid] = math.fsum(b.capacity_wh for b in pool)
        soc[pid] = (math.fsum(_clipped_soc(b, inputs.soc[b.id]) * b.capacity_wh for b in pool)
                    / capacity[pid]) if pool else 0.5
        rated = [_battery_limits_w(b, inputs) for b in pool]
        limits[pid] = (math.fsum(c for c, _ in rated), math.fsum(d for _, d in rated))
    return dataclasses.replace(
        inputs, gen_low_w=lows, gen_mid_w=mids, gen_high_w=highs, soc=soc,
        batteries_out=frozenset(), battery_limits_w=limits, battery_capacity_wh=capacity,
        generators_uncontrolled=frozenset(uncontrolled))


def split_generators(members: Sequence[GeneratorModel], inputs: DispatchInputs,
                     total_w: np.ndarray) -> dict[str, np.ndarray]:
    """Each member's limit from the aggregate's: filled to ``low'``, then to ``m``, then to
    ``hi'``, each stage in proportion to what it gives each member."""
    bounds = [_gen_bounds(g, inputs) for g in members]
    left = np.asarray(total_w, dtype=float).copy()
    out = [np.zeros_like(left) for _ in members]
    for lo_of, hi_of in ((None, "low"), ("low", "mid"), ("mid", "high")):
        room = [getattr(b, hi_of) - (getattr(b, lo_of) if lo_of else 0.0) for b in bounds]
        total = sum(room, np.zeros_like(left))
        take = np.clip(np.minimum(left, total), 0.0, None)
        share = np.divide(take, total, out=np.zeros_like(take), where=total > 0)
        for i, r in enumerate(room):
            out[i] += share * r
        left -= take
    return {g.id: o for g, o in zip(members, out, strict=True)}


def water_fill(total: float, weight: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """``x = min(cap, λ·weight)`` with ``Σx = min(total, Σcap)``: shares in proportion to
    the weights, each within its cap, what a capped member cannot take going to the rest."""
    x = np.zeros_like(cap)
    left, free = min(total, float(cap.sum())), (cap > 0) & (weight > 0)
    while left > 1e-9 and free.any():
        share = left * np.where(free, weight, 0.0) / weight[free].sum()
        over = free & (share >= cap - x)
        if not over.any():
            return np.asarray(x + share)
        left -= float((cap - x)[over].sum())
        x[over] = cap[over]
        free &= ~over
    return x


def split_batteries(members: Sequence[BatteryModel], inputs: DispatchInputs,
                    pool_w: np.ndarray, step_s: int) -> tuple[dict[str, np.ndarray],
                                                               dict[str, np.ndarray]]:
    """Each member's power (+ discharge) and SOC (T + 1) from the pool's power. Each step's
    charge goes to the members in proportion to the energy each can still store, its
    discharge in proportion to the energy each can still give, each within what its power
    and energy allow in the step: the SOCs drift together, as the pool assumes."""
    T, dt_h = len(pool_w), step_s / 3600.0
    live = np.array([b.id not in inputs.batteries_out for b in members])
    cap_wh = np.array([b.capacity_wh for b in members])
    e = np.array([_clipped_soc(b, inputs.soc[b.id]) for b in members]) * cap_wh
    e_min = np.array([b.soc_min for b in members]) * cap_wh
    e_max = np.array([b.soc_max for b in members]) * cap_wh
    eta_c = np.array([b.charge_efficiency for b in members])
    eta_d = np.array([b.discharge_efficiency for b in members])
    p_ch = np.array([_battery_limits_w(b, inputs)[0] for b in members]) * live
    p_dis = np.array([_battery_limits_w(b, inputs)[1] for b in members]) * live
    power, soc = np.zeros((len(members), T)), np.zeros((len(members), T + 1))
    soc[:, 0] = e / cap_wh
    for t in range(T):
        p = float(pool_w[t])
        if p > 0:
            give = np.clip(e - e_min, 0.0, None)
            x = water_fill(p, give, np.minimum(p_dis, give * eta_d / dt_h))
            e = e - dt_h * x / eta_d
            power[:, t] = x
        elif p < 0:
            room = np.clip(e_max - e, 0.0, None)
            x = water_fill(-p, room, np.minimum(p_ch, room / (eta_c * dt_h)))
            e = e + dt_h * eta_c * x
            power[:, t] = -x
        soc[:, t + 1] = e / cap_wh
    ids = [b.id for b in members]
    return dict(zip(ids, power, strict=True)), dict(zip(ids, soc, strict=True))


class AggregateDispatcher:
    """The dispatch LP over the fleet's aggregates (see the module docstring); the same
    interface as :class:`vpp.dispatch.Dispatcher`, with plans for every real asset. The
    aggregates' LP is small: it is built for each number of battery pools it meets (a
    few hundredths of a second) and kept for the next solves with that number."""

    def __init__(self, fleet: Fleet, *, steps: int, step_s: int, weights: Weights,
                 export_ramp_w_per_step: float | None = None,
                 soc_tolerance: float = SOC_TOLERANCE) -> None:
        self.fleet = fleet
        self.steps = steps
        self.step_s = step_s
        self.weights = weights
        self.export_ramp_w_per_step = export_ramp_w_per_step
        self.soc_tolerance = soc_tolerance
        self.aggregation = aggregate_fleet(fleet)
        self._inner: dict[tuple[str, ...], Dispatcher] = {}
        self.inner: Dispatcher | None = None  # the last solve's

    def _dispatcher(self, pool_ids: tuple[str, ...]) -> Dispatcher:
        d = self._inner.get(pool_ids)
        if d is None:
            if len(self._inner) >= 8:  # keep the most recent few
                self._inner.pop(next(iter(self._inner)))
            d = self._inner[pool_ids] = Dispatcher(
                reduced_fleet(self.aggregation, pool_ids), steps=self.steps,
                step_s=self.step_s, weights=self.weights,
                export_ramp_w_per_step=self.export_ramp_w_per_step)
        return d

    def solve(self, inputs: DispatchInputs, *, solvers: tuple[str, ...] = ("HIGHS", "CLARABEL"),
              time_limit_s: float = 10.0, created_at: datetime | None = None) -> Schedule:
        check_assets(self.fleet, inputs, self.steps)
        battery_pools = pools(self.aggregation, inputs, self.soc_tolerance)
        self.inner = self._dispatcher(tuple(battery_pools))
        reduced = reduce_inputs(self.aggregation, inputs, battery_pools)
        sch = self.inner.solve(reduced, solvers=solvers, time_limit_s=time_limit_s,
                               created_at=created_at)
        if not sch.status.usable:
            return dataclasses.replace(sch, inputs=inputs)
        return self.split(inputs, sch, battery_pools)

    def _cut_for_misses(self, sch: Schedule, battery: dict[str, np.ndarray],
                        battery_pools: dict[str, tuple[BatteryModel, ...]]
                        ) -> dict[str, np.ndarray]:
        """The aggregates' limits, lowered where the members could not charge what their
        pool planned and the plan would then break a group's limit or the cap: by what it
        takes, from the group's own controllable aggregates, then from all of them."""
        T, agg = self.steps, self.aggregation
        limits = {a: np.asarray(v, dtype=float).copy() for a, v in sch.gen_limit_w.items()}
        controlled = [a for a in agg.generators if not a.endswith(FREE)]
        miss = {pid: sum((battery[b.id] for b in pool), np.zeros(T)) - sch.battery_w[pid]
                for pid, pool in battery_pools.items()}

        def take(need: np.ndarray, ids: list[str]) -> None:
            room = sum((limits[a] for a in ids), np.zeros(T))
            got = np.minimum(np.clip(need, 0.0, None), room)
            for a in ids:
                limits[a] -= np.divide(got * limits[a], room, out=np.zeros(T), where=room > 0)

        if not any(np.any(m > 1e-6) for m in miss.values()):
            return limits
        groups = self.inner.fleet.groups if self.inner is not None else ()
        for grp in groups:
            ids = set(grp.assets)
            out = (sum((limits[a] for a in limits if a in ids), np.zeros(T))
                   + sum((sch.battery_w[p] + miss[p] for p in miss if p in ids), np.zeros(T))
                   - sum((sch.flex_w[x] for x in sch.flex_w if x in ids), np.zeros(T)))
            take(out - grp.max_export_w, [a for a in controlled if a in ids])
        worst = (sch.export_worst_w + sum(miss.values(), np.zeros(T))
                 - sum((sch.gen_limit_w[a] - limits[a] for a in limits), np.zeros(T)))
        take(worst - sch.export_cap_w, controlled)
        return limits

    def split(self, inputs: DispatchInputs, sch: Schedule,
              battery_pools: dict[str, tuple[BatteryModel, ...]]) -> Schedule:
        """The aggregates' plan as a plan for every real asset."""
        agg, T = self.aggregation, self.steps
        battery: dict[str, np.ndarray] = {}
        soc: dict[str, np.ndarray] = {}
        for pid, pool in battery_pools.items():
            p, s = split_batteries(pool, inputs, sch.battery_w[pid], self.step_s)
            battery.update(p)
            soc.update(s)
        for b in self.fleet.batteries:  # out of service: idle
            if b.id not in battery:
                battery[b.id] = np.zeros(T)
                soc[b.id] = np.full(T + 1, _clipped_soc(b, inputs.soc[b.id]))
        moved = sum(battery.values(), np.zeros(T)) - sum(sch.battery_w.values(), np.zeros(T))
        agg_limits = self._cut_for_misses(sch, battery, battery_pools)
        cut = sum((sch.gen_limit_w[a] - agg_limits[a] for a in agg_limits), np.zeros(T))
        limits: dict[str, np.ndarray] = {}
        for agg_id, members in agg.generators.items():
            free = agg_id.endswith(FREE)
            mine = [g for g in members if (g.id in inputs.generators_uncontrolled) == free]
            limits.update(split_generators(mine, inputs, agg_limits[agg_id]))
        curtailment = {g.id: np.clip(_gen_bounds(g, inputs).mid - limits[g.id], 0.0, None)
                       + _gen_bounds(g, inputs).excess for g in self.fleet.generators}
        moved_w = moved - cut  # the net change at the PCC in the dangerous case
        controlled = [a for a in agg.generators if not a.endswith(FREE)]
        mids = {a: np.asarray(reduce_inputs(agg, inputs, battery_pools).gen_mid_w[a])
                for a in agg.generators}
        expected_change = moved + sum((np.minimum(agg_limits[a], mids[a])
                                       - np.minimum(sch.gen_limit_w[a], mids[a])
                                       for a in controlled), np.zeros(T))
        w, dt_h = self.weights, self.step_s / 3600.0
        # the terms of the real assets' plan; the others are the aggregates' own (exact,
        # unless the batteries' split missed its pool's plan: the message says so)
        terms = dict(
            sch.terms,
            curtailment=w.curtailment_per_wh * dt_h * float(
                sum(c.sum() for c in curtailment.values())),
            battery_wear=w.battery_wear_per_wh * dt_h * float(
                sum(np.abs(p).sum() for p in battery.values())),
            curtailment_high_case=w.curtailment_per_wh * w.high_case_curtailment_ratio * dt_h
            * float(sum((_gen_bounds(g, inputs).high_full - limits[g.id]).sum()
                        for g in self.fleet.generators)),
            battery_losses=w.curtailment_per_wh * (1 + w.high_case_curtailment_ratio) * dt_h
            * float(sum(
                ((1 - b.charge_efficiency) * np.clip(-battery[b.id], 0, None)
                 + (1 / b.discharge_efficiency - 1) * np.clip(battery[b.id], 0, None)).sum()
                for b in self.fleet.batteries)),
            export_peak=w.export_peak_per_w * float(np.max(sch.export_worst_w + moved_w)),
            soc_target=w.soc_target_per_wh * sum(
                abs(soc[b.id][-1] - w.soc_target) * b.capacity_wh for b in self.fleet.batteries))
        n_real = len(self.fleet.asset_ids)
        n_agg = len(agg.generator_models) + len(battery_pools) + len(self.fleet.flex_loads)
        notes = [sch.message, f"planned as {n_agg} aggregates of {n_real} assets"]
        if np.abs(moved).max() > 1.0:
            notes.append(f"the batteries' split misses the pool's plan by up to "
                         f"{np.abs(moved).max():.0f} W ({float(cut.sum()) * dt_h:.0f} Wh "
                         "curtailed instead)")
        return dataclasses.replace(
            sch, objective=sum(terms.values()), terms=terms, battery_w=battery, soc=soc,
            gen_limit_w=limits, expected_curtailment_w=curtailment, inputs=inputs,
            export_worst_w=sch.export_worst_w + moved_w,
            export_expected_w=sch.export_expected_w + expected_change,
            message="; ".join(filter(None, notes)))
