"""The dispatch LP (vpp.dispatch), checked from outside the model.

* Physics: for every solved plan, ``check_physics`` recomputes from the plan's numbers and
  the inputs alone the SOC trajectories, the export in the dangerous, expected and low
  cases, the cap, the import and group limits, the flexible loads' energy, the ramp, and
  every objective term; nothing is read back from cvxpy's variables.
* An independent optimum: ``matrix_lp_objective`` writes the problem statement out as
  columns and rows of its own and solves it with scipy's HiGHS; on small instances, each
  exercising other features, it finds the same objective as the model.
* A re-solve changes numbers only; bad inputs are named; charging and discharging at once
  does not pay at the default weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.sparse import csr_matrix

from vpp.dispatch import (
    CAP_SLACK_WEIGHT_PER_WH,
    FLEX_UNSERVED_WEIGHT_PER_WH,
    GROUP_SLACK_WEIGHT_PER_WH,
    IMPORT_SLACK_WEIGHT_PER_WH,
    BatteryModel,
    Dispatcher,
    DispatchInputs,
    Fleet,
    FlexLoadModel,
    FlexWindow,
    GeneratorModel,
    GroupLimit,
    Schedule,
    SolveStatus,
    Weights,
)

START = datetime(2026, 4, 15, tzinfo=UTC)
PV = GeneratorModel(id="pv", kind="pv", rated_power_w=60e6)
WF = GeneratorModel(id="wf", kind="wind", rated_power_w=30e6)
BAT = BatteryModel(id="b", capacity_wh=50e6, max_charge_w=20e6, max_discharge_w=20e6,
                   soc_min=0.1, soc_max=0.95, charge_efficiency=0.95, discharge_efficiency=0.95)
BAT2 = BatteryModel(id="b2", capacity_wh=8e6, max_charge_w=4e6, max_discharge_w=3e6,
                    soc_min=0.05, soc_max=1.0, charge_efficiency=0.95, discharge_efficiency=0.97)
EV = FlexLoadModel(id="ev", max_w=6e6)
HEAT = FlexLoadModel(id="heat", max_w=2e6)
FEEDER = GroupLimit(id="feeder", assets=("wf", "b2", "heat"), max_export_w=18e6,
                    max_import_w=4e6)
SUBSTATION = GroupLimit(id="substation", assets=("pv", "b", "ev"), max_export_w=45e6)
FLEET = Fleet(generators=(PV, WF), batteries=(BAT,))
FULL_FLEET = Fleet(generators=(PV, WF), batteries=(BAT, BAT2), flex_loads=(EV, HEAT),
                   groups=(FEEDER, SUBSTATION))

W_TOL = 1.0  # [W] what a solved power may miss a limit by (the plans are tens of MW)
NIL = 1e-3  # [Wh-equivalents] an objective term this small is zero


def day_inputs(T: int, *, cap: float = 35e6, soc: float = 0.5, seed: int = 0,
               step_s: int | None = None, start_h: float = 0.0) -> DispatchInputs:
    """A spring day: PV, a random walk of wind, an evening load peak; ``T`` steps over 24 h
    unless ``step_s`` is given. Forecasts for every generator and SOCs for every battery of
    ``FULL_FLEET`` (the model ignores the ones its fleet does not have)."""
    rng = np.random.default_rng(seed)
    h = start_h + np.arange(T) * (24 / T if step_s is None else step_s / 3600)
    pv = 60e6 * np.clip(np.sin((h - 6) / 12 * np.pi), 0, None)
    wind = np.clip(10e6 + 5e6 * rng.standard_normal(T).cumsum() / np.sqrt(T), 0, 30e6)
    load = 20e6 + 8e6 * np.exp(-0.5 * ((h - 19.5) / 2) ** 2)
    return DispatchInputs(
        start=START,
        gen_low_w={"pv": 0.8 * pv, "wf": 0.7 * wind}, gen_mid_w={"pv": pv, "wf": wind},
        gen_high_w={"pv": np.minimum(1.1 * pv, 60e6), "wf": np.minimum(1.3 * wind, 30e6)},
        load_low_w=0.95 * load, load_mid_w=load, load_high_w=1.05 * load,
        export_cap_w=np.full(T, cap), import_limit_w=np.full(T, 60e6),
        soc={"b": soc, "b2": soc})


# -- the inputs as the problem statement reads them ----------------------------------------


@dataclass(frozen=True)
class Clean:
    """Negative powers are 0; the scenarios are ordered (mid = max(mid, low), high =
    max(high, mid)); a generator's limit is at most min(high, rated); the initial SOC is
    held inside its band; a requested export is NaN where none is asked."""

    low: dict[str, np.ndarray]
    mid: dict[str, np.ndarray]
    high: dict[str, np.ndarray]
    top: dict[str, np.ndarray]  # min(high, rated): the highest limit a generator can get
    load_low: np.ndarray
    load_mid: np.ndarray
    load_high: np.ndarray
    cap: np.ndarray
    imp: np.ndarray
    soc0: dict[str, float]
    track: np.ndarray


def clean(fleet: Fleet, inp: DispatchInputs, T: int) -> Clean:
    def pos(a: np.ndarray) -> np.ndarray:
        return np.asarray(np.clip(np.asarray(a, dtype=float), 0.0, None), dtype=float)

    low = {g.id: pos(inp.gen_low_w[g.id]) for g in fleet.generators}
    mid = {g: np.maximum(pos(inp.gen_mid_w[g]), low[g]) for g in low}
    high = {g: np.maximum(pos(inp.gen_high_w[g]), mid[g]) for g in low}
    top = {g.id: np.minimum(high[g.id], g.rated_power_w) for g in fleet.generators}
    track = (np.full(T, np.nan) if inp.track_export_w is None
             else np.asarray(inp.track_export_w, dtype=float))
    return Clean(low=low, mid=mid, high=high, top=top, load_low=pos(inp.load_low_w),
                 load_mid=pos(inp.load_mid_w), load_high=pos(inp.load_high_w),
                 cap=pos(inp.export_cap_w), imp=pos(inp.import_limit_w),
                 soc0={b.id: min(max(inp.soc[b.id], b.soc_min), b.soc_max)
                       for b in fleet.batteries},
                 track=track)


# -- physics recomputed from a plan ------------------------------------------------------


def check_physics(sch: Schedule, d: Dispatcher, *, tol_w: float = W_TOL) -> None:
    """Recompute the plan's physics and objective from its numbers and its inputs; ``tol_w``
    is what a power may miss by (more for an interior-point solver)."""
    assert sch.status.usable, sch.message
    assert sch.inputs is not None
    inp, fleet, w, T = sch.inputs, d.fleet, d.weights, d.steps
    dt_h = d.step_s / 3600.0
    x = clean(fleet, inp, T)
    zeros = np.zeros(T)
    assert sch.steps == T

    # batteries: one direction at a time, within power and SOC limits, SOC from net power
    assert sch.simultaneous_wh == pytest.approx(0.0, abs=max(1.0, tol_w * T * dt_h)), (
        f"simultaneous charge and discharge: {sch.simultaneous_wh:.0f} Wh")
    for b in fleet.batteries:
        net = sch.battery_w[b.id]
        ch, dis = np.clip(-net, 0, None), np.clip(net, 0, None)
        if b.id in inp.batteries_out:
            np.testing.assert_allclose(net, 0.0, atol=tol_w, err_msg=f"{b.id} is out: idle")
        assert np.all(ch <= b.max_charge_w + tol_w) and np.all(dis <= b.max_discharge_w + tol_w)
        soc = [x.soc0[b.id]]
        for t in range(T):
            soc.append(soc[-1] + dt_h * (b.charge_efficiency * ch[t]
                                         - dis[t] / b.discharge_efficiency) / b.capacity_wh)
        np.testing.assert_allclose(sch.soc[b.id], soc, atol=1e-6, err_msg=f"SOC of {b.id}")
        assert np.all(np.asarray(soc[1:]) >= b.soc_min - 1e-6)
        assert np.all(np.asarray(soc[1:]) <= b.soc_max + 1e-6)

    # generators: 0 ≤ limit ≤ min(high, rated); out of control: at min(high, rated)
    for g in fleet.generators:
        lim = sch.gen_limit_w[g.id]
        assert np.all(lim >= -tol_w) and np.all(lim <= x.top[g.id] + tol_w)
        if g.id in inp.generators_uncontrolled:
            np.testing.assert_allclose(lim, x.top[g.id], atol=tol_w,
                                       err_msg=f"{g.id} runs free at its high forecast")
        np.testing.assert_allclose(sch.expected_curtailment_w[g.id],
                                   np.clip(x.mid[g.id] - lim, 0, None), atol=tol_w)

    # flexible loads: 0 ≤ draw ≤ max_w, none when out; each window's energy by its deadline
    unserved_wh = 0.0
    served: list[tuple[str, float, float]] = []
    for f in fleet.flex_loads:
        draw = sch.flex_w[f.id]
        assert np.all(draw >= -tol_w) and np.all(draw <= f.max_w + tol_w)
        if f.id in inp.flex_out:
            np.testing.assert_allclose(draw, 0.0, atol=tol_w, err_msg=f"{f.id} is out")
        for win in inp.flex_windows.get(f.id, ()):
            got = float(draw[win.first:win.end].sum()) * dt_h
            served.append((f.id, got, win.energy_wh))
            unserved_wh += max(0.0, win.energy_wh - got)
    if sch.terms["flex_unserved"] < NIL:
        for fid, got, need in served:
            assert got >= need * (1 - 1e-3) - 1e-3, f"{fid}: {got:.0f} of {need:.0f} Wh"

    # the PCC in the three cases
    def total(xs: Iterable[np.ndarray]) -> np.ndarray:
        return sum(xs, zeros)

    limits = sch.gen_limit_w
    bat, flex = total(sch.battery_w.values()), total(sch.flex_w.values())
    worst = total(limits.values()) + bat - flex - x.load_low
    expected = total(np.minimum(limits[g], x.mid[g]) for g in limits) + bat - flex - x.load_mid
    low_case = total(np.minimum(limits[g], x.low[g]) for g in limits) + bat - flex - x.load_high
    np.testing.assert_allclose(sch.export_worst_w, worst, atol=tol_w)
    np.testing.assert_allclose(sch.export_expected_w, expected, atol=tol_w)
    np.testing.assert_allclose(sch.export_cap_w, x.cap)
    np.testing.assert_allclose(sch.import_limit_w, x.imp)
    if sch.terms["cap_slack"] < NIL:
        assert np.all(worst <= x.cap + tol_w), "export over the cap in the dangerous case"
    if sch.terms["import_slack"] < NIL:
        assert np.all(low_case >= -x.imp - tol_w), "import over its limit in the low case"

    # groups: their members' net power, dangerous case out, low case in
    group_lo = group_hi = 0.0  # bounds on the group slack [W·steps]
    for grp in fleet.groups:
        ids = set(grp.assets)
        net = (total(sch.battery_w[b] for b in sch.battery_w if b in ids)
               - total(sch.flex_w[f] for f in sch.flex_w if f in ids))
        out = total(limits[g] for g in limits if g in ids) + net
        over = np.clip(out - grp.max_export_w, 0, None)
        under = zeros
        if grp.max_import_w is not None:
            into = total(np.minimum(limits[g], x.low[g]) for g in limits if g in ids) + net
            under = np.clip(-grp.max_import_w - into, 0, None)
        if sch.terms["group_slack"] < NIL:
            assert np.all(over <= tol_w) and np.all(under <= tol_w), f"group {grp.id}"
        group_lo += float(np.maximum(over, under).sum())
        group_hi += float((over + under).sum())

    # the ramp limit on the expected export; the error against the requested profile
    r = d.export_ramp_w_per_step
    steps = np.abs(np.diff(expected))
    ramp_excess = np.clip(steps - r, 0, None) if r is not None else np.zeros(0)
    if r is not None and sch.terms["export_ramp"] < NIL:
        assert np.all(steps <= r + tol_w), f"expected export ramps {steps.max():.0f} W > {r}"
    on = np.isfinite(x.track)
    track_err = np.abs(expected - np.where(on, x.track, 0.0))[on]

    # every objective term, recomputed; a Wh-equivalent is a weight times Wh
    wh = T * dt_h * tol_w  # what the tolerance adds up to over the plan [Wh]
    soc_dev = sum(abs(sch.soc[b.id][-1] - w.soc_target) * b.capacity_wh
                  for b in fleet.batteries)
    recomputed = {
        "curtailment": (w.curtailment_per_wh * dt_h * sum(
            float(np.clip(x.mid[g] - limits[g], 0, None).sum()) for g in limits),
            w.curtailment_per_wh),
        "battery_wear": (w.battery_wear_per_wh * dt_h * sum(
            float(np.abs(p).sum()) for p in sch.battery_w.values()), w.battery_wear_per_wh),
        "curtailment_high_case": (w.curtailment_per_wh * w.high_case_curtailment_ratio * dt_h
                                  * sum(float(np.clip(x.high[g] - limits[g], 0, None).sum())
                                        for g in limits), w.curtailment_per_wh),
        "battery_losses": (w.curtailment_per_wh * (1 + w.high_case_curtailment_ratio) * dt_h * sum(
            float(((1 - b.charge_efficiency) * np.clip(-sch.battery_w[b.id], 0, None)
                   + (1 / b.discharge_efficiency - 1)
                   * np.clip(sch.battery_w[b.id], 0, None)).sum())
            for b in fleet.batteries), w.curtailment_per_wh),
        "soc_target": (w.soc_target_per_wh * soc_dev, w.soc_target_per_wh),
        "export_peak": (w.export_peak_per_w * float(worst.max()), w.export_peak_per_w / dt_h),
        "export_ramp": (w.export_ramp_per_wh * dt_h * float(ramp_excess.sum()),
                        w.export_ramp_per_wh),
        "tracking": (w.tracking_per_wh * dt_h * float(track_err.sum()), w.tracking_per_wh),
        "import_energy": (w.import_per_wh * dt_h * float(np.clip(-expected, 0, None).sum()),
                          w.import_per_wh),
        "import_slack": (IMPORT_SLACK_WEIGHT_PER_WH * dt_h * float(
            np.clip(-x.imp - low_case, 0, None).sum()), IMPORT_SLACK_WEIGHT_PER_WH),
        "cap_slack": (CAP_SLACK_WEIGHT_PER_WH * dt_h * float(
            np.clip(worst - x.cap, 0, None).sum()), CAP_SLACK_WEIGHT_PER_WH),
        "flex_unserved": (FLEX_UNSERVED_WEIGHT_PER_WH * unserved_wh,
                          FLEX_UNSERVED_WEIGHT_PER_WH),
    }
    assert set(sch.terms) == {*recomputed, "group_slack"}
    for name, (value, weight) in recomputed.items():
        assert sch.terms[name] == pytest.approx(value, rel=1e-6, abs=weight * wh), name
    # the model has one slack per group and step for both of its limits: the term lies
    # between the larger excess and the sum of both (one number while one limit is exceeded)
    g_tol = GROUP_SLACK_WEIGHT_PER_WH * wh
    assert GROUP_SLACK_WEIGHT_PER_WH * dt_h * group_lo - g_tol <= sch.terms["group_slack"]
    assert sch.terms["group_slack"] <= GROUP_SLACK_WEIGHT_PER_WH * dt_h * group_hi + g_tol
    assert sch.objective == pytest.approx(sum(sch.terms.values()), rel=1e-9, abs=1e-6)


# -- the same problem, written out as a matrix LP -------------------------------------------


class Lin:
    """A linear expression over the matrix LP's columns: {column: coefficient} + constant."""

    __slots__ = ("coef", "const")

    def __init__(self, coef: dict[int, float] | None = None, const: float = 0.0) -> None:
        self.coef = coef or {}
        self.const = const

    def __add__(self, other: Lin | float) -> Lin:
        if not isinstance(other, Lin):
            return Lin(dict(self.coef), self.const + other)
        coef = dict(self.coef)
        for j, v in other.coef.items():
            coef[j] = coef.get(j, 0.0) + v
        return Lin(coef, self.const + other.const)

    __radd__ = __add__

    def __mul__(self, k: float) -> Lin:
        return Lin({j: k * v for j, v in self.coef.items()}, k * self.const)

    __rmul__ = __mul__

    def __neg__(self) -> Lin:
        return self * -1.0

    def __sub__(self, other: Lin | float) -> Lin:
        return self + (-other)

    def __rsub__(self, other: float) -> Lin:
        return -self + other


def lin_sum(xs: Iterable[Lin]) -> Lin:
    return sum(xs, Lin())


class MatrixLP:
    """Columns with bounds and costs, rows ``expression ≤ 0`` and ``expression = 0``."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.bounds: list[tuple[float | None, float | None]] = []
        self.le_rows: list[Lin] = []
        self.eq_rows: list[Lin] = []

    def var(self, lo: float | None = 0.0, hi: float | None = None, cost: float = 0.0) -> Lin:
        self.cost.append(cost)
        self.bounds.append((lo, hi))
        return Lin({len(self.cost) - 1: 1.0})

    def le(self, a: Lin | float, b: Lin | float) -> None:
        self.le_rows.append(Lin() + a - b)

    def ge(self, a: Lin | float, b: Lin | float) -> None:
        self.le(b, a)

    def eq(self, a: Lin | float, b: Lin | float) -> None:
        self.eq_rows.append(Lin() + a - b)

    def _matrix(self, rows: list[Lin]) -> tuple[csr_matrix, np.ndarray]:
        data, ri, ci = [], [], []
        for i, row in enumerate(rows):
            for j, v in row.coef.items():
                data.append(v)
                ri.append(i)
                ci.append(j)
        a = csr_matrix((data, (ri, ci)), shape=(len(rows), len(self.cost)))
        return a, -np.array([row.const for row in rows])

    def minimum(self) -> float:
        a_ub, b_ub = self._matrix(self.le_rows)
        a_eq, b_eq = self._matrix(self.eq_rows)
        res = linprog(np.array(self.cost), A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                      bounds=self.bounds, method="highs")
        assert res.status == 0, res.message
        return float(res.fun)


def matrix_lp_objective(fleet: Fleet, inp: DispatchInputs, w: Weights, *, steps: int,
                        step_s: int, ramp_w_per_step: float | None = None) -> float:
    """The dispatch problem from its statement, one column per decision and step.

    Generators: limit u (0 ≤ u ≤ min(high, rated); u = min(high, rated) out of control),
    curtailment c ≥ mid − u priced per Wh, low-case output 0 ≤ v ≤ min(u, low). Batteries:
    charge and discharge within their power (0 out of service), priced for wear and for
    the energy they lose (at the curtailment price), energy by
    the efficiencies inside the SOC band, the end SOC's distance from the target priced.
    Flexible loads: 0 ≤ draw ≤ max (0 when out), each window's energy by its deadline, what
    is missing priced. The PCC: dangerous-case export ≤ cap (+ priced slack) and its peak
    priced; low-case import ≤ limit (+ priced slack); expected export ramp ≤ limit (+ priced
    slack) and its error against the requested profile priced; the expected import
    priced. Groups: their members'
    export and import within limits, each excess priced.
    """
    T, dt = steps, step_s / 3600.0
    x = clean(fleet, inp, T)
    lp = MatrixLP()
    u: dict[str, list[Lin]] = {}
    curt: dict[str, list[Lin]] = {}
    v: dict[str, list[Lin]] = {}
    for g in fleet.generators:
        free = g.id in inp.generators_uncontrolled
        top = x.top[g.id]
        u[g.id] = [lp.var(float(top[t]) if free else 0.0, float(top[t])) for t in range(T)]
        curt[g.id] = [lp.var(cost=w.curtailment_per_wh * dt) for _ in range(T)]
        v[g.id] = [lp.var(0.0, float(x.low[g.id][t])) for t in range(T)]
        for t in range(T):
            lp.ge(curt[g.id][t], float(x.mid[g.id][t]) - u[g.id][t])
            lp.le(v[g.id][t], u[g.id][t])
            # the curtailment were generation to come at its high quantile, priced at a share
            lp.ge(lp.var(cost=w.curtailment_per_wh * w.high_case_curtailment_ratio * dt),
                  float(x.high[g.id][t]) - u[g.id][t])
    ch: dict[str, list[Lin]] = {}
    dis: dict[str, list[Lin]] = {}
    for b in fleet.batteries:
        out = b.id in inp.batteries_out
        loss_price = w.curtailment_per_wh * (1 + w.high_case_curtailment_ratio)
        loss_ch = loss_price * (1 - b.charge_efficiency)
        loss_dis = loss_price * (1 / b.discharge_efficiency - 1)
        ch[b.id] = [lp.var(0.0, 0.0 if out else b.max_charge_w,
                           cost=(w.battery_wear_per_wh + loss_ch) * dt) for _ in range(T)]
        dis[b.id] = [lp.var(0.0, 0.0 if out else b.max_discharge_w,
                            cost=(w.battery_wear_per_wh + loss_dis) * dt) for _ in range(T)]
        e0 = x.soc0[b.id] * b.capacity_wh
        energy = [lp.var(e0, e0)]
        for t in range(T):
            nxt = lp.var(b.soc_min * b.capacity_wh, b.soc_max * b.capacity_wh)
            lp.eq(nxt, energy[-1] + dt * (b.charge_efficiency * ch[b.id][t]
                                          - (1 / b.discharge_efficiency) * dis[b.id][t]))
            energy.append(nxt)
        target = w.soc_target * b.capacity_wh
        dev = lp.var(cost=w.soc_target_per_wh)
        lp.ge(dev, energy[-1] - target)
        lp.ge(dev, target - energy[-1])
    flex: dict[str, list[Lin]] = {}
    for f in fleet.flex_loads:
        top_f = 0.0 if f.id in inp.flex_out else f.max_w
        flex[f.id] = [lp.var(0.0, top_f) for _ in range(T)]
        for win in inp.flex_windows.get(f.id, ()):
            missing = lp.var(cost=FLEX_UNSERVED_WEIGHT_PER_WH)
            lp.ge(dt * lin_sum(flex[f.id][win.first:win.end]) + missing, win.energy_wh)

    def net(t: int, ids: set[str] | None = None) -> Lin:
        """Batteries' discharge − charge − flexible draw at step t (of ``ids`` if given)."""
        return (lin_sum(dis[b][t] - ch[b][t] for b in ch if ids is None or b in ids)
                - lin_sum(flex[f][t] for f in flex if ids is None or f in ids))

    peak = lp.var(None, None, cost=w.export_peak_per_w)
    expected: list[Lin] = []
    for t in range(T):
        worst = lin_sum(u[g][t] for g in u) + net(t) - float(x.load_low[t])
        lp.le(worst, float(x.cap[t]) + lp.var(cost=CAP_SLACK_WEIGHT_PER_WH * dt))
        lp.ge(peak, worst)
        low = lin_sum(v[g][t] for g in v) + net(t) - float(x.load_high[t])
        lp.ge(low, -float(x.imp[t]) - lp.var(cost=IMPORT_SLACK_WEIGHT_PER_WH * dt))
        expected.append(lin_sum(float(x.mid[g][t]) - curt[g][t] for g in curt) + net(t)
                        - float(x.load_mid[t]))
        for grp in fleet.groups:
            ids = set(grp.assets)
            outward = lin_sum(u[g][t] for g in u if g in ids) + net(t, ids)
            lp.le(outward, grp.max_export_w + lp.var(cost=GROUP_SLACK_WEIGHT_PER_WH * dt))
            if grp.max_import_w is not None:
                into = lin_sum(v[g][t] for g in v if g in ids) + net(t, ids)
                lp.ge(into, -grp.max_import_w - lp.var(cost=GROUP_SLACK_WEIGHT_PER_WH * dt))
        lp.ge(lp.var(cost=w.import_per_wh * dt), -expected[t])  # the expected import
        if math.isfinite(x.track[t]):
            err = lp.var(cost=w.tracking_per_wh * dt)
            lp.ge(err, expected[t] - float(x.track[t]))
            lp.ge(err, float(x.track[t]) - expected[t])
    if ramp_w_per_step is not None:
        for t in range(1, T):
            beyond = lp.var(cost=w.export_ramp_per_wh * dt)
            lp.le(expected[t] - expected[t - 1], ramp_w_per_step + beyond)
            lp.le(expected[t - 1] - expected[t], ramp_w_per_step + beyond)
    return lp.minimum()


# -- small instances, each exercising other features -----------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    fleet: Fleet
    step_s: int
    inputs: DispatchInputs
    shows: Callable[[Schedule], bool]  # the feature the instance is there for is at work
    weights: Weights = field(default_factory=Weights)
    ramp_w_per_step: float | None = None

    @property
    def steps(self) -> int:
        return len(self.inputs.load_mid_w)

    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.fleet, steps=self.steps, step_s=self.step_s,
                          weights=self.weights, export_ramp_w_per_step=self.ramp_w_per_step)


def _max_group_export(sch: Schedule, grp: GroupLimit) -> float:
    ids = set(grp.assets)
    out = (sum((sch.gen_limit_w[g] for g in sch.gen_limit_w if g in ids), np.zeros(sch.steps))
           + sum((sch.battery_w[b] for b in sch.battery_w if b in ids), np.zeros(sch.steps))
           - sum((sch.flex_w[f] for f in sch.flex_w if f in ids), np.zeros(sch.steps)))
    return float(out.max())


def _cases() -> list[Case]:
    cases = [
        Case(f"plain_day_T{T}_cap{cap / 1e6:.0f}MW_soc{soc}", FLEET, 3600,
             day_inputs(T, cap=cap, soc=soc, seed=seed),
             lambda s: s.terms["curtailment"] + s.terms["battery_wear"] > 0)
        for T, cap, soc, seed in ((12, 35e6, 0.5, 0), (24, 25e6, 0.9, 1), (16, 45e6, 0.1, 2))
    ]

    # the cap cannot be held: wind out of control at its high forecast (above its rating in
    # some hours: planned at the rating), PV curtailed to nothing, the battery out of service
    T = 8
    inp = day_inputs(T, step_s=3600, start_h=10, seed=4, soc=0.05)
    uncontrolled = replace(
        inp, gen_high_w={**inp.gen_high_w, "wf": np.linspace(24e6, 36e6, T)},
        gen_mid_w={**inp.gen_mid_w, "wf": np.linspace(18e6, 26e6, T)},
        export_cap_w=np.full(T, 2e6), generators_uncontrolled=frozenset({"wf"}),
        batteries_out=frozenset({"b"}))
    cases.append(Case("wind_out_of_control_breaks_the_cap",
                      FLEET, 3600, uncontrolled,
                      lambda s: s.terms["cap_slack"] > 1.0
                      and float(s.gen_limit_w["wf"][-1]) == pytest.approx(WF.rated_power_w)))

    # an EV window that needs more than the charger can draw; a heater out with a window
    T = 12
    inp = day_inputs(T, step_s=900, start_h=12, seed=5)
    unserved = replace(inp, flex_windows={
        "ev": (FlexWindow(first=2, end=6, energy_wh=9e6), FlexWindow(first=6, end=12,
                                                                      energy_wh=2e6)),
        "heat": (FlexWindow(first=0, end=12, energy_wh=1e6),)}, flex_out=frozenset({"heat"}))
    cases.append(Case("flex_window_cannot_be_served",
                      Fleet(generators=(PV, WF), batteries=(BAT,), flex_loads=(EV, HEAT)),
                      900, unserved, lambda s: s.terms["flex_unserved"] > 1.0))

    # evening, the import limit tight: the windows' energy is drawn, no more where it counts
    T = 16
    inp = day_inputs(T, step_s=900, start_h=17, seed=6, soc=0.3)
    evening = replace(inp, import_limit_w=np.full(T, 18e6), flex_windows={
        "ev": (FlexWindow(first=4, end=12, energy_wh=5e6),),
        "heat": (FlexWindow(first=0, end=8, energy_wh=1.5e6),)})
    cases.append(Case("flex_windows_served_under_a_tight_import_limit",
                      Fleet(generators=(PV, WF), batteries=(BAT, BAT2), flex_loads=(EV, HEAT)),
                      900, evening, lambda s: s.terms["flex_unserved"] < NIL
                      and float(s.flex_w["ev"][4:12].sum()) * 0.25 == pytest.approx(5e6)
                      and float(s.flex_w["ev"][4:12].min()) < EV.max_w - 1e3))

    # strong wind behind the feeder: its export limit binds
    T = 16
    inp = day_inputs(T, step_s=900, start_h=11, seed=7, soc=0.5)
    windy = replace(inp, gen_low_w={**inp.gen_low_w, "wf": np.full(T, 16e6)},
                    gen_mid_w={**inp.gen_mid_w, "wf": np.full(T, 24e6)},
                    gen_high_w={**inp.gen_high_w, "wf": np.full(T, 29e6)},
                    export_cap_w=np.full(T, 60e6))
    cases.append(Case("feeder_export_limit_binds", FULL_FLEET, 900, windy,
                      lambda s: s.terms["group_slack"] < NIL
                      and _max_group_export(s, FEEDER) == pytest.approx(18e6, abs=10.0)))

    # a steep PV morning with a small battery: the ramp limit binds and its excess is paid
    T = 24
    morning = day_inputs(T, step_s=900, start_h=7, seed=8, soc=0.5, cap=80e6)
    cases.append(Case("morning_ramp_limit_binds",
                      Fleet(generators=(PV, WF), batteries=(BAT2,)), 900, morning,
                      lambda s: s.terms["export_ramp"] > 1.0, ramp_w_per_step=2e6))

    # a requested export profile (NaN: not requested) tracked, under a ramp limit that the
    # batteries hold (nothing paid)
    T = 16
    inp = day_inputs(T, step_s=900, start_h=12, seed=9, soc=0.6)
    request = np.where(np.arange(T) % 5 == 4, np.nan, np.linspace(12e6, 2e6, T))
    tracked = replace(inp, track_export_w=request)
    cases.append(Case("requested_export_profile_is_tracked",
                      Fleet(generators=(PV, WF), batteries=(BAT, BAT2)), 900, tracked,
                      lambda s: s.terms["tracking"] > 1.0 and s.terms["export_ramp"] < NIL
                      and float(np.abs(np.diff(s.export_expected_w)).max()) <= 4e6 + 10.0,
                      ramp_w_per_step=4e6))

    # the evening peak over a small import limit: import slack paid
    T = 8
    inp = day_inputs(T, step_s=3600, start_h=17, seed=10, soc=0.4)
    short = replace(inp, import_limit_w=np.full(T, 2e6), batteries_out=frozenset({"b2"}))
    cases.append(Case("import_limit_cannot_be_held",
                      Fleet(generators=(PV, WF), batteries=(BAT, BAT2)), 3600, short,
                      lambda s: s.terms["import_slack"] > 1.0))

    # inputs the model must clean: unordered scenarios, negative values, SOCs out of band
    T = 12
    inp = day_inputs(T, step_s=900, start_h=13, seed=11)
    rng = np.random.default_rng(11)
    messy = replace(
        inp, gen_low_w={"pv": inp.gen_mid_w["pv"] * 1.2, "wf": inp.gen_low_w["wf"] - 3e6},
        gen_high_w={"pv": inp.gen_mid_w["pv"] * 0.9, "wf": inp.gen_high_w["wf"]},
        load_low_w=inp.load_low_w * rng.uniform(0.9, 1.1, T),
        export_cap_w=np.where(np.arange(T) == 3, -1e6, 30e6), soc={"b": 0.99, "b2": -0.2},
        track_export_w=np.full(T, -2e6))
    cases.append(Case("unordered_negative_and_out_of_band_inputs_are_cleaned",
                      Fleet(generators=(PV, WF), batteries=(BAT, BAT2)), 900, messy,
                      lambda s: "outside" in s.message and s.export_cap_w[3] == 0.0))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_optimum_as_an_independent_matrix_lp(case: Case) -> None:
    d = case.dispatcher()
    sch = d.solve(case.inputs, solvers=("HIGHS",))
    check_physics(sch, d)
    assert case.shows(sch), f"{case.name}: the instance does not exercise its feature"
    ref = matrix_lp_objective(case.fleet, case.inputs, case.weights, steps=case.steps,
                              step_s=case.step_s, ramp_w_per_step=case.ramp_w_per_step)
    assert sch.objective == pytest.approx(ref, rel=1e-6)


def test_plans_over_a_day_keep_the_cap_and_use_the_battery() -> None:
    T = 96
    d = Dispatcher(FLEET, steps=T, step_s=900, weights=Weights())
    for soc in (0.1, 0.5, 0.95):
        check_physics(d.solve(day_inputs(T, soc=soc, seed=3), solvers=("HIGHS",)), d)
    # a tighter cap means more charging or curtailment, never a breach
    tight = d.solve(day_inputs(T, cap=20e6, seed=3), solvers=("HIGHS",))
    loose = d.solve(day_inputs(T, cap=50e6, seed=3), solvers=("HIGHS",))
    check_physics(tight, d)
    check_physics(loose, d)
    assert tight.terms["curtailment"] > loose.terms["curtailment"]
    assert np.all(tight.export_worst_w <= 20e6 + W_TOL)


def test_highs_and_clarabel_agree() -> None:
    T = 48
    d = Dispatcher(FLEET, steps=T, step_s=900, weights=Weights())
    inp = day_inputs(T, seed=5)
    a = d.solve(inp, solvers=("HIGHS",))
    check_physics(a, d)
    b = d.solve(inp, solvers=("CLARABEL",))
    check_physics(b, d, tol_w=25.0)  # an interior point: every slack a little off zero
    assert a.solver == "HIGHS" and b.solver == "CLARABEL"
    assert b.objective == pytest.approx(a.objective, rel=2e-3)


def test_a_failed_solver_falls_through_the_chain_and_reports() -> None:
    d = Dispatcher(FLEET, steps=8, step_s=900, weights=Weights())
    inp = day_inputs(8)
    sch = d.solve(inp, solvers=("NOT_A_SOLVER", "HIGHS"))
    assert sch.status is SolveStatus.OPTIMAL and sch.solver == "HIGHS"
    check_physics(sch, d)
    bad = d.solve(inp, solvers=("NOT_A_SOLVER",))
    assert bad.status is SolveStatus.ERROR and not bad.status.usable
    assert "NOT_A_SOLVER" in bad.message


# -- a re-solve changes numbers, not the model ----------------------------------------------


def test_a_re_solve_with_changed_inputs_matches_a_fresh_build_and_keeps_the_problem() -> None:
    T, step_s, ramp = 16, 900, 3e6
    windows = {"ev": (FlexWindow(first=2, end=10, energy_wh=3e6),),
               "heat": (FlexWindow(first=0, end=16, energy_wh=1e6),)}
    base = replace(day_inputs(T, step_s=step_s, start_h=10, seed=12), flex_windows=windows)
    variants = {
        "base": base,
        "soc": replace(base, soc={"b": 0.9, "b2": 0.1}),
        "cap": replace(base, export_cap_w=np.linspace(40e6, 15e6, T)),
        "forecasts": replace(day_inputs(T, step_s=step_s, start_h=14, seed=13),
                             flex_windows=windows),
        "battery_out": replace(base, batteries_out=frozenset({"b"})),
        "wind_out_of_control": replace(base, generators_uncontrolled=frozenset({"wf"})),
        "flex": replace(base, flex_windows={"ev": (FlexWindow(first=8, end=16, energy_wh=9e6),)},
                        flex_out=frozenset({"heat"})),
        "tracking": replace(base, track_export_w=np.full(T, 20e6)),
        "base_again": base,
    }
    d = Dispatcher(FULL_FLEET, steps=T, step_s=step_s, weights=Weights(),
                   export_ramp_w_per_step=ramp)
    problem, constraints = d.problem, dict(d.constraints)
    objectives = {}
    for name, inp in variants.items():
        sch = d.solve(inp, solvers=("HIGHS",))
        check_physics(sch, d)
        fresh = Dispatcher(FULL_FLEET, steps=T, step_s=step_s, weights=Weights(),
                           export_ramp_w_per_step=ramp)
        ref = fresh.solve(inp, solvers=("HIGHS",))
        check_physics(ref, fresh)
        assert sch.objective == pytest.approx(ref.objective, rel=1e-7), name
        assert d.problem is problem, f"{name}: the problem was rebuilt"
        assert d.constraints.keys() == constraints.keys()
        assert all(d.constraints[k] is c for k, c in constraints.items())
        objectives[name] = sch.objective
    # every change moved the optimum; going back gives the first answer again
    assert len({round(v) for k, v in objectives.items() if k != "base_again"}) == len(variants) - 1
    assert objectives["base_again"] == pytest.approx(objectives["base"], rel=1e-9)


# -- bad input is named -----------------------------------------------------------------------


def _bad(inp: DispatchInputs) -> dict[str, DispatchInputs]:
    T = len(inp.load_mid_w)
    return {
        r"load_mid_w: contains NaN": replace(inp, load_mid_w=np.full(T, np.nan)),
        r"export_cap_w: expected 8 steps": replace(inp, export_cap_w=np.full(3, 1e6)),
        r"gen_low_w\[pv\]: contains NaN or infinite values \(first at step 2\)": replace(
            inp, gen_low_w={**inp.gen_low_w, "pv": np.where(np.arange(T) == 2, np.inf, 0.0)}),
        r"track_export_w: contains NaN or infinite": replace(
            inp, track_export_w=np.full(T, -np.inf)),
        r"gen_high_w: no forecast for generators \['wf'\]": replace(
            inp, gen_high_w={"pv": inp.gen_high_w["pv"]}),
        r"soc\[b\]: nan is not a number": replace(inp, soc={"b": float("nan")}),
        r"flex_windows\[ev\]\[1\]: steps 4\.\.9 .* need 0 ≤ first < end ≤ 8": replace(
            inp, flex_windows={"ev": (FlexWindow(first=0, end=2, energy_wh=1e6),
                                      FlexWindow(first=4, end=9, energy_wh=1e6))}),
        r"flex_windows\[ev\]\[0\]: steps 5\.\.5": replace(
            inp, flex_windows={"ev": (FlexWindow(first=5, end=5, energy_wh=1e6),)}),
        r"flex_windows\[ev\]\[0\]: steps -1\.\.3": replace(
            inp, flex_windows={"ev": (FlexWindow(first=-1, end=3, energy_wh=1e6),)}),
        r"flex_windows\[ev\]\[0\]: .*energy -1\.0 Wh": replace(
            inp, flex_windows={"ev": (FlexWindow(first=0, end=3, energy_wh=-1.0),)}),
        r"flex_windows\[ev\]: at most 2 deadlines fit a 8-step plan, got 3": replace(
            inp, flex_windows={"ev": tuple(FlexWindow(first=i, end=i + 1, energy_wh=1.0)
                                           for i in range(3))}),
        r"out-of-service assets \['ghost'\] are not in the fleet": replace(
            inp, batteries_out=frozenset({"ghost"})),
        r"out-of-service assets \['nobody'\]": replace(
            inp, generators_uncontrolled=frozenset({"nobody"})),
        r"out-of-service assets \['x'\]": replace(inp, flex_out=frozenset({"x"})),
    }


BAD = _bad(day_inputs(8, step_s=900))
SMALL_FLEET = Fleet(generators=(PV, WF), batteries=(BAT,), flex_loads=(EV,))


@pytest.mark.parametrize("message", list(BAD), ids=[m.split(":")[0] for m in BAD])
def test_bad_inputs_raise_a_value_error_naming_the_field(message: str) -> None:
    d = Dispatcher(SMALL_FLEET, steps=8, step_s=900, weights=Weights())
    with pytest.raises(ValueError, match=message):
        d.solve(BAD[message])


def test_a_rejected_input_leaves_the_dispatcher_solving_correctly() -> None:
    d = Dispatcher(SMALL_FLEET, steps=8, step_s=900, weights=Weights())
    good = replace(day_inputs(8, step_s=900, start_h=11),
                   flex_windows={"ev": (FlexWindow(first=1, end=5, energy_wh=2e6),)})
    for message, bad in BAD.items():
        with pytest.raises(ValueError, match=message):
            d.solve(bad)
    sch = d.solve(good, solvers=("HIGHS",))
    check_physics(sch, d)
    fresh = Dispatcher(SMALL_FLEET, steps=8, step_s=900, weights=Weights())
    assert sch.objective == pytest.approx(fresh.solve(good, solvers=("HIGHS",)).objective,
                                          rel=1e-9)


def test_a_fleet_with_repeated_ids_or_unknown_group_members_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"asset ids must be unique, repeated: \['pv'\]"):
        Fleet(generators=(PV, replace(WF, id="pv")), batteries=(BAT,))
    with pytest.raises(ValueError, match=r"asset ids must be unique, repeated: \['b'\]"):
        Fleet(generators=(PV,), batteries=(BAT,), flex_loads=(replace(EV, id="b"),))
    with pytest.raises(ValueError, match=r"group feeder: assets \['ghost'\] are not in the "
                                         r"fleet \(known: \['b', 'pv'\]\)"):
        Fleet(generators=(PV,), batteries=(BAT,),
              groups=(GroupLimit(id="feeder", assets=("pv", "ghost"), max_export_w=1e6),))


# -- charging and discharging at once -------------------------------------------------------


def _full_battery_under_a_tight_cap() -> DispatchInputs:
    return day_inputs(12, step_s=3600, start_h=8, soc=BAT.soc_max, cap=15e6, seed=14)


@pytest.mark.parametrize(("wear", "eta_c", "eta_d"), [
    (0.06, 0.95, 0.95), (0.01, 0.95, 0.95), (0.06, 0.92, 0.94), (0.01, 0.8, 0.85)])
def test_charging_and_discharging_at_once_does_not_pay(wear: float, eta_c: float,
                                                       eta_d: float) -> None:
    """A full battery and a cap that forces curtailment: the battery could absorb energy at
    the PCC by charging and discharging at once, but curtailing is cheaper, whatever the
    wear weight (above 0: at 0 the two tie) and the efficiencies.

    Charging c Wh while discharging η_c·η_d·c Wh keeps the SOC and absorbs (1 − η_c·η_d)·c
    at the PCC. The energy lost on the way round is exactly that much, priced like
    curtailment in the median and the high case together (``battery_losses``), and the
    wear comes on top: one Wh absorbed so costs more than curtailing it saves. (Priced by
    wear alone it would cost 0.06 × 1.8648 / 0.1352 ≈ 0.83 < 1 at 92 %/94 %: it would pay.)
    """
    w = Weights(battery_wear_per_wh=wear)
    T = 12
    inp = _full_battery_under_a_tight_cap()
    fleet = replace(FLEET, batteries=(replace(BAT, charge_efficiency=eta_c,
                                              discharge_efficiency=eta_d),))
    d = Dispatcher(fleet, steps=T, step_s=3600, weights=w)
    sch = d.solve(inp, solvers=("HIGHS",))
    check_physics(sch, d)
    assert sch.terms["curtailment"] > 1e6  # the cap does force curtailment
    assert sch.simultaneous_wh == pytest.approx(0.0, abs=1.0)
    assert "charged and discharged" not in sch.message
    # and the physics check would catch a plan that did it
    with pytest.raises(AssertionError, match="simultaneous charge and discharge"):
        check_physics(replace(sch, simultaneous_wh=1e6), d)
