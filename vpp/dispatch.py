"""The dispatch model: a receding-horizon LP in cvxpy, built once, re-solved with Parameters.

Decisions per step (15 minutes by default): each generator's output limit ``u`` (the
most it may deliver), each battery's charge and discharge power, each flexible load's
draw. Three forecast scenarios bound the plan:

* the dangerous one for the cap (generation at its high quantile, P90 by default, load at
  its low quantile) must keep export ≤ cap: ``Σu + Σ(dis − ch) − Σflex − load_low ≤ cap``;
* the median one prices curtailment (``c ≥ gen_mid − u``) and is the *expected* export,
  which the ramp limit smooths and a requested profile is tracked with;
* the low one for the import limit: generation at P10 (``w ≤ u``, ``w ≤ gen_low``), load
  at its high quantile.

Every constraint has a name (``Dispatcher.constraints``); every objective term too
(``Schedule.terms``, all in Wh-equivalents): curtailment first (and the batteries' losses,
priced the same; and, at a share of that price, the curtailment were generation to come at
its high quantile, which keeps battery room for forecast error), then battery wear, a soft
end-of-horizon SOC target, the worst-case export peak, the export ramp beyond its limit,
the error against a requested export profile, the expected import (the county's load
served from its own stores first), and large prices on what may not happen
but must never make the problem infeasible: import over its limit, a flexible load's
energy not served by its deadline, and export over the cap when generation cannot be
curtailed (a generator out of control runs free, ``u = gen_high``).

The energy a battery loses going round (``(1 − η_c)`` of a charge, ``(1/η_d − 1)`` of a
discharge) is wasted renewable energy, priced like curtailment in both cases at once
(``battery_losses``, at ``1 + high_case_curtailment_ratio`` times the curtailment weight).
So charging and discharging at once cannot pay while any generation can be curtailed:
charging ``c`` while discharging ``η_c·η_d·c`` absorbs ``(1 − η_c·η_d)·c`` at the PCC and
loses exactly that, at the full price, plus wear on ``(1 + η_c·η_d)·c``; curtailing the
same energy costs at most the price alone. Whatever the efficiencies and the wear weight
(above 0), no plan does it (``tests/vpp/test_dispatch.py`` checks, and
:attr:`Schedule.simultaneous_wh` reports it if one ever did) unless nothing else can keep
the cap.

Device faults change numbers, not the model: a battery out of service gets zero power
limits, a generator out of control a floor at its high forecast. The model is rebuilt
only when the fleet changes.

Pure: no I/O. The controller runs :meth:`Dispatcher.solve` in an executor.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import cvxpy as cp
import numpy as np
import pandas as pd

# prices of what must never happen, far above every configurable weight [per Wh]; higher
# ones leave the interior-point solvers badly scaled (Clarabel reports "unbounded")
IMPORT_SLACK_WEIGHT_PER_WH = 1000.0
CAP_SLACK_WEIGHT_PER_WH = 2000.0
GROUP_SLACK_WEIGHT_PER_WH = 2000.0
FLEX_UNSERVED_WEIGHT_PER_WH = 100.0


class SolveStatus(StrEnum):
    OPTIMAL = "optimal"
    OPTIMAL_INACCURATE = "optimal_inaccurate"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    TIME_LIMIT = "time_limit"
    ERROR = "error"

    @property
    def usable(self) -> bool:
        return self in (SolveStatus.OPTIMAL, SolveStatus.OPTIMAL_INACCURATE)


_CVXPY_STATUS = {
    cp.OPTIMAL: SolveStatus.OPTIMAL,
    cp.OPTIMAL_INACCURATE: SolveStatus.OPTIMAL_INACCURATE,
    cp.INFEASIBLE: SolveStatus.INFEASIBLE,
    cp.INFEASIBLE_INACCURATE: SolveStatus.INFEASIBLE,
    cp.UNBOUNDED: SolveStatus.UNBOUNDED,
    cp.UNBOUNDED_INACCURATE: SolveStatus.UNBOUNDED,
    cp.USER_LIMIT: SolveStatus.TIME_LIMIT,
}


@dataclass(frozen=True, kw_only=True)
class GeneratorModel:
    id: str
    kind: str
    rated_power_w: float


@dataclass(frozen=True, kw_only=True)
class BatteryModel:
    id: str
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_min: float
    soc_max: float
    charge_efficiency: float
    discharge_efficiency: float


@dataclass(frozen=True, kw_only=True)
class FlexLoadModel:
    """A shiftable load: draws 0..``max_w`` [W, positive], and must be given its energy by
    each window's deadline (:class:`FlexWindow`)."""

    id: str
    max_w: float


@dataclass(frozen=True, kw_only=True)
class GroupLimit:
    """A feeder or transformer: the net power its assets put through it is limited."""

    id: str
    assets: tuple[str, ...]
    max_export_w: float  # out of the group into the county bus
    max_import_w: float | None = None  # into the group from the bus


@dataclass(frozen=True, kw_only=True)
class Fleet:
    generators: tuple[GeneratorModel, ...]
    batteries: tuple[BatteryModel, ...]
    flex_loads: tuple[FlexLoadModel, ...] = ()
    groups: tuple[GroupLimit, ...] = ()

    @property
    def asset_ids(self) -> list[str]:
        return ([g.id for g in self.generators] + [b.id for b in self.batteries]
                + [x.id for x in self.flex_loads])

    def __post_init__(self) -> None:
        ids = self.asset_ids
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"fleet: asset ids must be unique, repeated: {dup}")
        for g in self.groups:
            unknown = sorted(set(g.assets) - set(ids))
            if unknown:
                raise ValueError(f"group {g.id}: assets {unknown} are not in the fleet "
                                 f"(known: {sorted(ids)})")


@dataclass(frozen=True, kw_only=True)
class Weights:
    curtailment_per_wh: float = 1.0
    battery_wear_per_wh: float = 0.06
    soc_target: float = 0.5
    soc_target_per_wh: float = 0.1
    export_peak_per_w: float = 0.01
    # expected export ramp beyond the limit; 2 × this + tracking < curtailment, or a plan
    # would curtail a step's energy to ease the ramps into and out of it
    export_ramp_per_wh: float = 0.4
    tracking_per_wh: float = 0.05  # |expected export − requested profile|
    # expected import: the county's load served from its own stores first (above the
    # ≈ 0.11 a stored Wh costs to give back, below the ≈ 0.22 a round trip costs)
    import_per_wh: float = 0.2
    # curtailment were generation to come at its high quantile: keeps battery room for
    # forecast error (a share of the curtailment weight; 0: plan for the median alone)
    high_case_curtailment_ratio: float = 0.25


@dataclass(frozen=True, kw_only=True)
class FlexWindow:
    """A flexible load needs ``energy_wh`` drawn in plan steps ``first`` .. ``end − 1``."""

    first: int
    end: int
    energy_wh: float


@dataclass(frozen=True, kw_only=True)
class DispatchInputs:
    """Numbers for one solve; arrays have one value per step [W]."""

    start: datetime
    gen_low_w: dict[str, np.ndarray]
    gen_mid_w: dict[str, np.ndarray]
    gen_high_w: dict[str, np.ndarray]
    load_low_w: np.ndarray  # demand, positive, flexible loads not included
    load_mid_w: np.ndarray
    load_high_w: np.ndarray
    export_cap_w: np.ndarray
    import_limit_w: np.ndarray
    soc: dict[str, float]
    track_export_w: np.ndarray | None = None  # requested export; NaN where none is asked
    flex_windows: Mapping[str, tuple[FlexWindow, ...]] = field(default_factory=dict)
    batteries_out: frozenset[str] = frozenset()  # out of service: no power
    generators_uncontrolled: frozenset[str] = frozenset()  # run free: no limit holds
    flex_out: frozenset[str] = frozenset()
    # (charge, discharge) a battery can do now [W] where its BMS derates it (at most rated)
    battery_limits_w: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # the energy a battery holds where it is less than its model's (a pool of batteries
    # whose members change from solve to solve: vpp.aggregate)
    battery_capacity_wh: Mapping[str, float] = field(default_factory=dict)
    forecast_issued_at: Mapping[str, datetime] = field(default_factory=dict)  # explain


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A solved plan, or a failed solve (``status`` not usable, arrays empty)."""

    created_at: datetime
    start: datetime
    step_s: int
    status: SolveStatus
    solver: str
    solve_time_s: float
    objective: float = float("nan")
    battery_w: dict[str, np.ndarray] = field(default_factory=dict)  # + discharge
    soc: dict[str, np.ndarray] = field(default_factory=dict)  # at step starts, T + 1
    gen_limit_w: dict[str, np.ndarray] = field(default_factory=dict)
    expected_curtailment_w: dict[str, np.ndarray] = field(default_factory=dict)
    flex_w: dict[str, np.ndarray] = field(default_factory=dict)  # drawn, positive
    export_worst_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    export_expected_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    export_cap_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    import_limit_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    terms: dict[str, float] = field(default_factory=dict)
    simultaneous_wh: float = 0.0  # energy charged and discharged in the same step
    source: str = "optimal"  # optimal | last-good | rule-based (see vpp.fallback)
    inputs: DispatchInputs | None = None
    message: str = ""

    @property
    def steps(self) -> int:
        return len(self.export_worst_w)

    @property
    def index(self) -> pd.DatetimeIndex:
        return pd.date_range(pd.Timestamp(self.start), periods=self.steps,
                             freq=f"{self.step_s}s")

    def step_at(self, t: datetime) -> int | None:
        """Index of the step containing ``t``, or None outside the plan."""
        k = int((t - self.start).total_seconds() // self.step_s)
        return k if 0 <= k < self.steps else None


def check_assets(fleet: Fleet, inputs: DispatchInputs, steps: int) -> None:
    """Every generator has its three forecasts, ``steps`` finite numbers each; every asset
    named out of service is in the fleet. Raises ValueError naming what is wrong."""
    T = steps
    for name, d in (("gen_low_w", inputs.gen_low_w), ("gen_mid_w", inputs.gen_mid_w),
                    ("gen_high_w", inputs.gen_high_w)):
        missing = sorted({g.id for g in fleet.generators} - set(d))
        if missing:
            raise ValueError(f"{name}: no forecast for generators {missing}")
        for g in fleet.generators:
            a = np.asarray(d[g.id], dtype=float)
            if a.shape != (T,):
                raise ValueError(f"{name}[{g.id}]: expected {T} steps, got shape {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name}[{g.id}]: contains NaN or infinite values "
                                 f"(first at step {int(np.argmax(~np.isfinite(a)))})")
    unknown = sorted((inputs.batteries_out | inputs.generators_uncontrolled
                      | inputs.flex_out | set(inputs.battery_limits_w)
                      | set(inputs.battery_capacity_wh))
                     - set(fleet.asset_ids))
    if unknown:
        raise ValueError(f"out-of-service assets {unknown} are not in the fleet")
    for b in fleet.batteries:
        if b.id not in inputs.soc or not math.isfinite(float(inputs.soc[b.id])):
            raise ValueError(f"soc[{b.id}]: {inputs.soc.get(b.id)} is not a number")


@contextlib.contextmanager
def _quiet_stdout_fd() -> Iterator[None]:
    """Silence file descriptor 1 (C libraries print past Python's sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_HIGHS_GREETED = False


def _greet_highs_quietly() -> None:
    """highspy prints a banner when its first solver object is made; make it here, silenced,
    so it does not break a live terminal view later."""
    global _HIGHS_GREETED
    if _HIGHS_GREETED:
        return
    _HIGHS_GREETED = True
    with contextlib.suppress(ImportError, OSError), _quiet_stdout_fd():
        import highspy
        highspy.Highs()  # type: ignore[no-untyped-call]


def _solver_options(solver: str, time_limit_s: float) -> dict[str, object]:
    if solver == "HIGHS":
        return {"time_limit": time_limit_s, "output_flag": False}
    if solver == "CLARABEL":
        # the LP's numbers are W and Wh (1e6-1e8): Clarabel's default static regularisation
        # (1e-8) then moves its "optimal" point by percent of the objective; 1e-12 does not
        return {"time_limit": time_limit_s, "static_regularization_constant": 1e-12}
    return {}


class Dispatcher:
    """The dispatch LP for a fleet, built once; :meth:`solve` only updates numbers."""

    def __init__(self, fleet: Fleet, *, steps: int, step_s: int, weights: Weights,
                 export_ramp_w_per_step: float | None = None) -> None:
        self.fleet = fleet
        self.steps = steps
        self.step_s = step_s
        self.weights = weights
        self.export_ramp_w_per_step = export_ramp_w_per_step
        # the most deadlines a plan can hold per flexible load: one a day, plus a part day
        self.windows = math.ceil(steps * step_s / 86400.0) + 1
        self.constraints: dict[str, cp.Constraint] = {}
        _greet_highs_quietly()
        self._build()
        assert self.problem.is_dcp(dpp=True), "the dispatch LP must stay DPP (fast re-solve)"

    # -- building, one function per concern ---------------------------------------------

    def _add(self, name: str, con: cp.Constraint) -> None:
        self.constraints[name] = con

    def _build(self) -> None:
        T, dt_h, f = self.steps, self.step_s / 3600.0, self.fleet
        self.p_gen = {g.id: {s: cp.Parameter(T, nonneg=True, name=f"gen_{s}[{g.id}]")
                             for s in ("low", "mid", "high")} for g in f.generators}
        self.p_gen_floor = {g.id: cp.Parameter(T, nonneg=True, name=f"gen_floor[{g.id}]")
                            for g in f.generators}
        self.p_load = {s: cp.Parameter(T, nonneg=True, name=f"load_{s}")
                       for s in ("low", "mid", "high")}
        self.p_cap = cp.Parameter(T, nonneg=True, name="export_cap")
        self.p_import = cp.Parameter(T, nonneg=True, name="import_limit")
        self.p_track = cp.Parameter(T, name="track_error_fixed")
        self.p_track_on = cp.Parameter(T, nonneg=True, name="track_on")
        self.p_e0 = {b.id: cp.Parameter(nonneg=True, name=f"energy0[{b.id}]")
                     for b in f.batteries}
        self.p_capacity = {b.id: cp.Parameter(nonneg=True, name=f"capacity[{b.id}]")
                           for b in f.batteries}
        self.p_ch_max = {b.id: cp.Parameter(nonneg=True, name=f"charge_max[{b.id}]")
                         for b in f.batteries}
        self.p_dis_max = {b.id: cp.Parameter(nonneg=True, name=f"discharge_max[{b.id}]")
                          for b in f.batteries}
        K = self.windows
        self.p_flex_mask = {x.id: cp.Parameter((K, T), nonneg=True, name=f"flex_window[{x.id}]")
                            for x in f.flex_loads}
        self.p_flex_need = {x.id: cp.Parameter(K, nonneg=True, name=f"flex_need[{x.id}]")
                            for x in f.flex_loads}
        self.p_flex_max = {x.id: cp.Parameter(nonneg=True, name=f"flex_max[{x.id}]")
                           for x in f.flex_loads}

        def var(shape: int | tuple[int, ...], name: str, **kw: bool) -> cp.Variable:
            return cp.Variable(shape, name=name, **kw)

        self.u = {g.id: var(T, f"limit[{g.id}]", nonneg=True) for g in f.generators}
        self.curt = {g.id: var(T, f"curtail[{g.id}]", nonneg=True) for g in f.generators}
        self.w = {g.id: var(T, f"gen_low_out[{g.id}]", nonneg=True) for g in f.generators}
        self.ch = {b.id: var(T, f"charge[{b.id}]", nonneg=True) for b in f.batteries}
        self.dis = {b.id: var(T, f"discharge[{b.id}]", nonneg=True) for b in f.batteries}
        self.e = {b.id: var(T + 1, f"energy[{b.id}]", nonneg=True) for b in f.batteries}
        self.flex = {x.id: var(T, f"flex[{x.id}]", nonneg=True) for x in f.flex_loads}
        self.flex_short = {x.id: var(K, f"flex_unserved[{x.id}]", nonneg=True)
                           for x in f.flex_loads}
        self.import_slack = var(T, "import_slack", nonneg=True)
        self.cap_slack = var(T, "cap_slack", nonneg=True)
        self.group_slack = {g.id: var(T, f"group_slack[{g.id}]", nonneg=True) for g in f.groups}
        self.ramp_slack = var(max(T - 1, 1), "ramp_slack", nonneg=True)
        self.track_dev = var(T, "track_dev", nonneg=True)
        self.imported = var(T, "expected_import", nonneg=True)
        self.curt_high = var(T, "curtail_high_case", nonneg=True)
        self.peak = var((), "export_peak")
        self.soc_dev = {b.id: var((), f"soc_target_dev[{b.id}]", nonneg=True)
                        for b in f.batteries}

        self._add_generator_constraints()
        self._add_high_case_constraints()
        self._add_battery_constraints(dt_h)
        self._add_flex_constraints(dt_h)
        self._add_export_cap_constraints()
        self._add_import_limit_constraints()
        self._add_group_constraints()
        self._add_ramp_constraints()
        self._add_tracking_constraints()
        self._add_objective(dt_h)

    @staticmethod
    def _total(xs: list[cp.Expression]) -> cp.Expression | float:
        return sum(xs[1:], xs[0]) if xs else 0.0

    def _battery_net(self, ids: set[str] | None = None) -> cp.Expression | float:
        return self._total([self.dis[b.id] - self.ch[b.id] for b in self.fleet.batteries
                            if ids is None or b.id in ids])

    def _flex_draw(self, ids: set[str] | None = None) -> cp.Expression | float:
        return self._total([self.flex[x.id] for x in self.fleet.flex_loads
                            if ids is None or x.id in ids])

    def _add_generator_constraints(self) -> None:
        for g in self.fleet.generators:
            u, p = self.u[g.id], self.p_gen[g.id]
            self._add(f"limit_le_high[{g.id}]", u <= p["high"])
            self._add(f"limit_le_rated[{g.id}]", u <= g.rated_power_w)
            self._add(f"limit_ge_floor[{g.id}]", u >= self.p_gen_floor[g.id])
            self._add(f"curtailment_def[{g.id}]", self.curt[g.id] >= p["mid"] - u)
            self._add(f"low_out_le_limit[{g.id}]", self.w[g.id] <= u)
            self._add(f"low_out_le_low[{g.id}]", self.w[g.id] <= p["low"])

    def _add_high_case_constraints(self) -> None:
        gens = self.fleet.generators
        if gens:
            self._add("curtailment_high_case_def", self.curt_high >= self._total(
                [self.p_gen[g.id]["high"] - self.u[g.id] for g in gens]))

    def _add_battery_constraints(self, dt_h: float) -> None:
        for b in self.fleet.batteries:
            e, ch, dis = self.e[b.id], self.ch[b.id], self.dis[b.id]
            self._add(f"charge_max[{b.id}]", ch <= self.p_ch_max[b.id])
            self._add(f"discharge_max[{b.id}]", dis <= self.p_dis_max[b.id])
            self._add(f"energy_initial[{b.id}]", e[0] == self.p_e0[b.id])
            self._add(f"soc_balance[{b.id}]", e[1:] == e[:-1] + dt_h * (
                b.charge_efficiency * ch - dis / b.discharge_efficiency))
            cap = self.p_capacity[b.id]
            self._add(f"soc_min[{b.id}]", e[1:] >= b.soc_min * cap)
            self._add(f"soc_max[{b.id}]", e[1:] <= b.soc_max * cap)
            target = self.weights.soc_target * cap
            self._add(f"soc_target_dev_hi[{b.id}]", self.soc_dev[b.id] >= e[-1] - target)
            self._add(f"soc_target_dev_lo[{b.id}]", self.soc_dev[b.id] >= target - e[-1])

    def _add_flex_constraints(self, dt_h: float) -> None:
        for x in self.fleet.flex_loads:
            d = self.flex[x.id]
            self._add(f"flex_max[{x.id}]", d <= self.p_flex_max[x.id])
            self._add(f"flex_rated[{x.id}]", d <= x.max_w)
            self._add(f"flex_energy[{x.id}]", dt_h * (self.p_flex_mask[x.id] @ d)
                      + self.flex_short[x.id] >= self.p_flex_need[x.id])

    def _export_worst(self) -> cp.Expression:
        gen = self._total([self.u[g.id] for g in self.fleet.generators])
        return gen + self._battery_net() - self._flex_draw() - self.p_load["low"]

    def _export_expected(self) -> cp.Expression:
        gen = self._total([self.p_gen[g.id]["mid"] - self.curt[g.id]
                           for g in self.fleet.generators])
        return gen + self._battery_net() - self._flex_draw() - self.p_load["mid"]

    def _add_export_cap_constraints(self) -> None:
        worst = self._export_worst()
        self._add("export_cap", worst <= self.p_cap + self.cap_slack)
        self._add("export_peak_def", self.peak >= worst)

    def _add_import_limit_constraints(self) -> None:
        gen = self._total([self.w[g.id] for g in self.fleet.generators])
        low = gen + self._battery_net() - self._flex_draw() - self.p_load["high"]
        self._add("import_limit", low >= -self.p_import - self.import_slack)

    def _add_group_constraints(self) -> None:
        for grp in self.fleet.groups:
            ids = set(grp.assets)
            gens = [self.u[g.id] for g in self.fleet.generators if g.id in ids]
            lows = [self.w[g.id] for g in self.fleet.generators if g.id in ids]
            out = self._total(gens) + self._battery_net(ids) - self._flex_draw(ids)
            self._add(f"group_export[{grp.id}]",
                      out <= grp.max_export_w + self.group_slack[grp.id])
            if grp.max_import_w is not None:
                low = self._total(lows) + self._battery_net(ids) - self._flex_draw(ids)
                self._add(f"group_import[{grp.id}]",
                          low >= -grp.max_import_w - self.group_slack[grp.id])

    def _add_ramp_constraints(self) -> None:
        r = self.export_ramp_w_per_step
        if r is None or self.steps < 2:
            return
        x = self._export_expected()
        self._add("export_ramp_up", x[1:] - x[:-1] <= r + self.ramp_slack)
        self._add("export_ramp_down", x[:-1] - x[1:] <= r + self.ramp_slack)

    def _add_tracking_constraints(self) -> None:
        # err = on ⊙ (expected − requested); its constant part, on ⊙ (Σmid − load_mid −
        # requested), is one Parameter set in _set, so the product stays DPP
        moves = -self._total([self.curt[g.id] for g in self.fleet.generators]) \
            + self._battery_net() - self._flex_draw()
        err = self.p_track + cp.multiply(self.p_track_on, moves)
        self._add("track_dev_hi", self.track_dev >= err)
        self._add("track_dev_lo", self.track_dev >= -err)
        self._add("expected_import_def", self.imported >= -self._export_expected())

    def _add_objective(self, dt_h: float) -> None:
        w = self.weights
        zero = cp.Constant(0.0)

        def total(xs: list[cp.Expression]) -> cp.Expression:
            return sum(xs, zero)

        self.terms: dict[str, cp.Expression] = {
            "curtailment": w.curtailment_per_wh * dt_h * total(
                [cp.sum(c) for c in self.curt.values()]),
            "battery_wear": w.battery_wear_per_wh * dt_h * total(
                [cp.sum(self.ch[b] + self.dis[b]) for b in self.ch]),
            "curtailment_high_case": w.curtailment_per_wh * w.high_case_curtailment_ratio
            * dt_h * cp.sum(self.curt_high),
            "battery_losses": w.curtailment_per_wh * (1 + w.high_case_curtailment_ratio)
            * dt_h * total(
                [cp.sum((1 - b.charge_efficiency) * self.ch[b.id]
                        + (1 / b.discharge_efficiency - 1) * self.dis[b.id])
                 for b in self.fleet.batteries]),
            "soc_target": w.soc_target_per_wh * total(list(self.soc_dev.values())),
            "export_peak": w.export_peak_per_w * self.peak,
            "export_ramp": w.export_ramp_per_wh * dt_h * cp.sum(self.ramp_slack),
            "tracking": w.tracking_per_wh * dt_h * cp.sum(self.track_dev),
            "import_energy": w.import_per_wh * dt_h * cp.sum(self.imported),
            "import_slack": IMPORT_SLACK_WEIGHT_PER_WH * dt_h * cp.sum(self.import_slack),
            "cap_slack": CAP_SLACK_WEIGHT_PER_WH * dt_h * cp.sum(self.cap_slack),
            "group_slack": GROUP_SLACK_WEIGHT_PER_WH * dt_h * total(
                [cp.sum(s) for s in self.group_slack.values()]),
            "flex_unserved": FLEX_UNSERVED_WEIGHT_PER_WH * total(
                [cp.sum(s) for s in self.flex_short.values()]),
        }
        self.problem = cp.Problem(cp.Minimize(total(list(self.terms.values()))),
                                  list(self.constraints.values()))

    # -- solving --------------------------------------------------------------------------

    def _set(self, inputs: DispatchInputs) -> str:
        T = self.steps
        notes = []

        def arr(x: np.ndarray, name: str, *, allow_nan: bool = False) -> np.ndarray:
            a = np.asarray(x, dtype=float)
            if a.shape != (T,):
                raise ValueError(f"{name}: expected {T} steps, got shape {a.shape}")
            bad = ~np.isfinite(a) if not allow_nan else np.isinf(a)
            if np.any(bad):
                raise ValueError(f"{name}: contains NaN or infinite values "
                                 f"(first at step {int(np.argmax(bad))})")
            return np.asarray(np.clip(a, 0.0, None), dtype=float) if not allow_nan else a

        check_assets(self.fleet, inputs, T)
        for g in self.fleet.generators:
            lo = arr(inputs.gen_low_w[g.id], f"gen_low_w[{g.id}]")
            mid = np.maximum(arr(inputs.gen_mid_w[g.id], f"gen_mid_w[{g.id}]"), lo)
            hi = np.maximum(arr(inputs.gen_high_w[g.id], f"gen_high_w[{g.id}]"), mid)
            self.p_gen[g.id]["low"].value = lo
            self.p_gen[g.id]["mid"].value = mid
            self.p_gen[g.id]["high"].value = hi
            free = g.id in inputs.generators_uncontrolled
            self.p_gen_floor[g.id].value = np.minimum(hi, g.rated_power_w) if free else np.zeros(T)
            if free:
                notes.append(f"{g.id}: out of control, planned at its high forecast")
        self.p_load["low"].value = arr(inputs.load_low_w, "load_low_w")
        self.p_load["mid"].value = arr(inputs.load_mid_w, "load_mid_w")
        self.p_load["high"].value = arr(inputs.load_high_w, "load_high_w")
        self.p_cap.value = arr(inputs.export_cap_w, "export_cap_w")
        self.p_import.value = arr(inputs.import_limit_w, "import_limit_w")
        if inputs.track_export_w is None:
            self.p_track.value, self.p_track_on.value = np.zeros(T), np.zeros(T)
        else:
            tr = arr(inputs.track_export_w, "track_export_w", allow_nan=True)
            on = np.isfinite(tr)
            gen_mid = sum((self.p_gen[g.id]["mid"].value for g in self.fleet.generators),
                          np.zeros(T))
            self.p_track.value = np.where(on, gen_mid - self.p_load["mid"].value - np.where(
                on, tr, 0.0), 0.0)
            self.p_track_on.value = on.astype(float)
        for b in self.fleet.batteries:
            soc = float(inputs.soc[b.id])
            clipped = min(max(soc, b.soc_min), b.soc_max)
            if clipped != soc:
                notes.append(f"{b.id}: SOC {soc:.3f} outside [{b.soc_min}, {b.soc_max}], "
                             f"planned from {clipped:.3f}")
            cap = float(inputs.battery_capacity_wh.get(b.id, b.capacity_wh))
            if not 0 <= cap <= b.capacity_wh:
                raise ValueError(f"battery_capacity_wh[{b.id}]: {cap} Wh; allowed 0 to "
                                 f"{b.capacity_wh} (the model's)")
            self.p_capacity[b.id].value = cap
            self.p_e0[b.id].value = clipped * cap
            out = b.id in inputs.batteries_out
            ch_w, dis_w = inputs.battery_limits_w.get(b.id, (b.max_charge_w, b.max_discharge_w))
            self.p_ch_max[b.id].value = 0.0 if out else min(max(ch_w, 0.0), b.max_charge_w)
            self.p_dis_max[b.id].value = 0.0 if out else min(max(dis_w, 0.0), b.max_discharge_w)
            if out:
                notes.append(f"{b.id}: out of service, planned idle")
        for x in self.fleet.flex_loads:
            mask, need = np.zeros((self.windows, T)), np.zeros(self.windows)
            wins = inputs.flex_windows.get(x.id, ())
            if len(wins) > self.windows:
                raise ValueError(f"flex_windows[{x.id}]: at most {self.windows} deadlines fit "
                                 f"a {T}-step plan, got {len(wins)}")
            for i, win in enumerate(wins):
                if not 0 <= win.first < win.end <= T or not win.energy_wh >= 0:
                    raise ValueError(f"flex_windows[{x.id}][{i}]: steps {win.first}..{win.end} "
                                     f"and energy {win.energy_wh} Wh; need 0 ≤ first < end ≤ "
                                     f"{T} and energy ≥ 0")
                mask[i, win.first:win.end] = 1.0
                need[i] = win.energy_wh
            self.p_flex_mask[x.id].value = mask
            self.p_flex_need[x.id].value = need
            self.p_flex_max[x.id].value = 0.0 if x.id in inputs.flex_out else x.max_w
        return "; ".join(notes)

    def solve(self, inputs: DispatchInputs, *, solvers: tuple[str, ...] = ("HIGHS", "CLARABEL"),
              time_limit_s: float = 10.0, created_at: datetime | None = None) -> Schedule:
        """Solve with the first solver in ``solvers`` that succeeds."""
        created = created_at or inputs.start
        note = self._set(inputs)
        t0 = time.perf_counter()
        status, used, message = SolveStatus.ERROR, "", note
        for solver in solvers:
            used = solver
            try:
                self.problem.solve(solver=solver, **_solver_options(solver, time_limit_s))
            except (cp.error.SolverError, ValueError) as exc:
                status, message = SolveStatus.ERROR, f"{solver}: {exc}"
                continue
            status = _CVXPY_STATUS.get(self.problem.status, SolveStatus.ERROR)
            if status.usable:
                break
        elapsed = time.perf_counter() - t0
        if not status.usable:
            return Schedule(created_at=created, start=inputs.start, step_s=self.step_s,
                            status=status, solver=used, solve_time_s=elapsed, inputs=inputs,
                            message=message or f"solver status {self.problem.status}")
        return self._result(inputs, created, status, used, elapsed, note)

    def _result(self, inputs: DispatchInputs, created: datetime, status: SolveStatus,
                solver: str, elapsed: float, note: str) -> Schedule:
        def val(x: cp.Variable) -> np.ndarray:
            return np.asarray(x.value, dtype=float)

        T, dt_h = self.steps, self.step_s / 3600.0
        bats = self.fleet.batteries
        battery = {b.id: val(self.dis[b.id]) - val(self.ch[b.id]) for b in bats}
        both = sum((float(np.minimum(np.clip(val(self.ch[b.id]), 0, None),
                                     np.clip(val(self.dis[b.id]), 0, None)).sum()) * dt_h
                    for b in bats), 0.0)
        limits = {g.id: np.clip(val(self.u[g.id]), 0.0, None) for g in self.fleet.generators}
        curt = {g.id: np.clip(self.p_gen[g.id]["mid"].value - limits[g.id], 0.0, None)
                for g in self.fleet.generators}
        flex = {x.id: np.clip(val(self.flex[x.id]), 0.0, None) for x in self.fleet.flex_loads}
        net = sum(battery.values(), np.zeros(T)) - sum(flex.values(), np.zeros(T))
        expected = sum((np.minimum(limits[g], self.p_gen[g]["mid"].value) for g in limits),
                       np.zeros(T)) + net - self.p_load["mid"].value
        worst = sum(limits.values(), np.zeros(T)) + net - self.p_load["low"].value
        if both > 1.0:
            note = "; ".join(filter(None, [note, f"{both:.0f} Wh charged and discharged "
                                                 "in the same steps"]))
        if float(self.cap_slack.value.max()) > 1.0:
            note = "; ".join(filter(None, [note, "the cap cannot be kept in the dangerous case "
                                                 "(generation out of control)"]))
        return Schedule(
            created_at=created, start=inputs.start, step_s=self.step_s, status=status,
            solver=solver, solve_time_s=elapsed, objective=float(self.problem.value),
            battery_w=battery,
            soc={b.id: val(self.e[b.id]) / max(float(self.p_capacity[b.id].value), 1e-9)
                 for b in bats},
            gen_limit_w=limits, expected_curtailment_w=curt, flex_w=flex,
            export_worst_w=np.asarray(worst), export_expected_w=np.asarray(expected),
            export_cap_w=np.asarray(self.p_cap.value, dtype=float),
            import_limit_w=np.asarray(self.p_import.value, dtype=float),
            terms={k: float(v.value) for k, v in self.terms.items()},
            simultaneous_wh=both, inputs=inputs, message=note,
        )


def schedule_inputs(sch: Schedule) -> dict[str, Any] | None:
    """What a plan was made from: forecast vintages, SOC, caps, what was out of service."""
    inp = sch.inputs
    if inp is None:
        return None
    return {
        "forecast_issued_at": dict(inp.forecast_issued_at), "soc": inp.soc,
        "export_cap_w": inp.export_cap_w, "import_limit_w": inp.import_limit_w,
        "track_export_w": None if inp.track_export_w is None else [
            None if v != v else v for v in inp.track_export_w.tolist()],
        "flex_windows": {k: [asdict(w) for w in v]
                         for k, v in inp.flex_windows.items()},
        "batteries_out": sorted(inp.batteries_out),
        "generators_uncontrolled": sorted(inp.generators_uncontrolled),
        "flex_out": sorted(inp.flex_out),
    }


def schedule_payload(sch: Schedule) -> dict[str, Any]:
    """A schedule as JSON-ready data (used by MQTT, the API and storage)."""
    usable = sch.status.usable and sch.objective == sch.objective
    return {
        "created_at": sch.created_at, "start": sch.start, "step_s": sch.step_s,
        "status": sch.status.value, "source": sch.source, "solver": sch.solver,
        "solve_time_s": sch.solve_time_s, "objective": sch.objective if usable else None,
        "terms": sch.terms, "battery_w": sch.battery_w, "soc": sch.soc,
        "gen_limit_w": sch.gen_limit_w, "expected_curtailment_w": sch.expected_curtailment_w,
        "flex_w": sch.flex_w, "export_worst_w": sch.export_worst_w,
        "export_expected_w": sch.export_expected_w, "export_cap_w": sch.export_cap_w,
        "import_limit_w": sch.import_limit_w, "simultaneous_wh": sch.simultaneous_wh,
        "inputs": schedule_inputs(sch), "message": sch.message,
    }





def schedule_from_row(row: dict[str, Any]) -> Schedule:
    """A stored plan (``Storage.latest_plan``) as a Schedule again, without its inputs."""
    p = row["plan"]

    def arrays(name: str) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=float) for k, v in (p.get(name) or {}).items()}

    def array(name: str) -> np.ndarray:
        return np.asarray(p.get(name) or [], dtype=float)

    obj = row.get("objective")
    return Schedule(
        created_at=row["created_at"], start=row["start"], step_s=int(p["step_s"]),
        status=SolveStatus(row["status"]), solver=row["solver"],
        solve_time_s=float(row["solve_time_s"]),
        objective=float("nan") if obj is None else float(obj),
        battery_w=arrays("battery_w"), soc=arrays("soc"), gen_limit_w=arrays("gen_limit_w"),
        expected_curtailment_w=arrays("expected_curtailment_w"), flex_w=arrays("flex_w"),
        export_worst_w=array("export_worst_w"), export_expected_w=array("export_expected_w"),
        export_cap_w=array("export_cap_w"), import_limit_w=array("import_limit_w"),
        terms={k: float(v) for k, v in (p.get("terms") or {}).items() if v is not None},
        simultaneous_wh=float(p.get("simultaneous_wh") or 0.0),
        source=p.get("source", "optimal"), message=p.get("message", ""))
