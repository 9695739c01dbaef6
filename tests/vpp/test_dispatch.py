"""The dispatch LP: physics recomputed from every plan, and an independent optimum."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.sparse import lil_matrix

from vpp.dispatch import (
    IMPORT_SLACK_WEIGHT_PER_WH,
    BatteryModel,
    Dispatcher,
    DispatchInputs,
    Fleet,
    GeneratorModel,
    SolveStatus,
    Weights,
)

START = datetime(2026, 4, 15, tzinfo=UTC)
BAT = BatteryModel(id="b", capacity_wh=50e6, max_charge_w=20e6, max_discharge_w=20e6,
                   soc_min=0.1, soc_max=0.95, charge_efficiency=0.95, discharge_efficiency=0.95)
FLEET = Fleet(generators=(GeneratorModel(id="pv", kind="pv", rated_power_w=60e6),
                          GeneratorModel(id="wf", kind="wind", rated_power_w=30e6)),
              batteries=(BAT,))


def day_inputs(T: int, *, cap: float = 35e6, soc: float = 0.5, seed: int = 0) -> DispatchInputs:
    rng = np.random.default_rng(seed)
    h = np.arange(T) * 24 / T
    pv = 60e6 * np.clip(np.sin((h - 6) / 12 * np.pi), 0, None)
    wind = np.clip(10e6 + 5e6 * rng.standard_normal(T).cumsum() / np.sqrt(T), 0, 30e6)
    load = 20e6 + 8e6 * np.exp(-0.5 * ((h - 19.5) / 2) ** 2)
    return DispatchInputs(
        start=START,
        gen_low_w={"pv": 0.8 * pv, "wf": 0.7 * wind}, gen_mid_w={"pv": pv, "wf": wind},
        gen_high_w={"pv": np.minimum(1.1 * pv, 60e6), "wf": np.minimum(1.3 * wind, 30e6)},
        load_low_w=0.95 * load, load_mid_w=load, load_high_w=1.05 * load,
        export_cap_w=np.full(T, cap), import_limit_w=np.full(T, 60e6), soc={"b": soc})


def check_physics(sch, inp: DispatchInputs, fleet: Fleet, dt_h: float) -> None:  # type: ignore[no-untyped-def]
    """Recompute SOC, export and curtailment from the plan, independently of the model."""
    assert sch.status.usable
    T = sch.steps
    for b in fleet.batteries:
        net = sch.battery_w[b.id]
        ch, dis = np.clip(-net, 0, None), np.clip(net, 0, None)
        assert np.all(ch <= b.max_charge_w + 1) and np.all(dis <= b.max_discharge_w + 1)
        soc = [inp.soc[b.id]]
        for t in range(T):
            soc.append(soc[-1] + dt_h * (b.charge_efficiency * ch[t]
                                         - dis[t] / b.discharge_efficiency) / b.capacity_wh)
        # the plan's SOC follows from its net power: no hidden simultaneous charge/discharge
        np.testing.assert_allclose(sch.soc[b.id], soc, atol=1e-5)
        assert np.all(np.asarray(soc[1:]) >= b.soc_min - 1e-6)
        assert np.all(np.asarray(soc[1:]) <= b.soc_max + 1e-6)
    net_b = sum(sch.battery_w.values())
    worst = sum(sch.gen_limit_w.values()) + net_b - inp.load_low_w
    np.testing.assert_allclose(sch.export_worst_w, worst, rtol=1e-9, atol=1.0)
    assert np.all(worst <= inp.export_cap_w + 1.0)  # the cap holds in the dangerous case
    for g in fleet.generators:
        lim = sch.gen_limit_w[g.id]
        assert np.all(lim <= inp.gen_high_w[g.id] + 1.0)
        np.testing.assert_allclose(sch.expected_curtailment_w[g.id],
                                   np.clip(inp.gen_mid_w[g.id] - lim, 0, None), atol=10.0)


def matrix_lp_objective(fleet: Fleet, inp: DispatchInputs, w: Weights, T: int,
                        dt_h: float) -> float:
    """The same LP, written out as matrices and solved by scipy's linprog."""
    names: list[str] = []
    idx: dict[str, int] = {}

    def var(name: str) -> int:
        idx[name] = len(names)
        names.append(name)
        return idx[name]

    for g in fleet.generators:
        for t in range(T):
            var(f"u{g.id}{t}"), var(f"c{g.id}{t}"), var(f"w{g.id}{t}")
    for b in fleet.batteries:
        for t in range(T):
            var(f"ch{b.id}{t}"), var(f"dis{b.id}{t}")
        for t in range(T + 1):
            var(f"e{b.id}{t}")
        var(f"dev{b.id}")
    for t in range(T):
        var(f"s{t}")
    var("peak")
    n = len(names)
    c = np.zeros(n)
    bounds: list[tuple[float | None, float | None]] = [(0, None)] * n
    for g in fleet.generators:
        for t in range(T):
            c[idx[f"c{g.id}{t}"]] = w.curtailment_per_wh * dt_h
            bounds[idx[f"u{g.id}{t}"]] = (0, min(inp.gen_high_w[g.id][t], g.rated_power_w))
            bounds[idx[f"w{g.id}{t}"]] = (0, inp.gen_low_w[g.id][t])
    for b in fleet.batteries:
        for t in range(T):
            c[idx[f"ch{b.id}{t}"]] = c[idx[f"dis{b.id}{t}"]] = w.battery_wear_per_wh * dt_h
            bounds[idx[f"ch{b.id}{t}"]] = (0, b.max_charge_w)
            bounds[idx[f"dis{b.id}{t}"]] = (0, b.max_discharge_w)
        e0 = inp.soc[b.id] * b.capacity_wh
        bounds[idx[f"e{b.id}0"]] = (e0, e0)
        for t in range(1, T + 1):
            bounds[idx[f"e{b.id}{t}"]] = (b.soc_min * b.capacity_wh, b.soc_max * b.capacity_wh)
        c[idx[f"dev{b.id}"]] = w.soc_target_per_wh
    for t in range(T):
        c[idx[f"s{t}"]] = IMPORT_SLACK_WEIGHT_PER_WH * dt_h
    c[idx["peak"]] = w.export_peak_per_w
    bounds[idx["peak"]] = (None, None)
    rows: list[dict[int, float]] = []
    rhs: list[float] = []
    for g in fleet.generators:
        for t in range(T):
            rows.append({idx[f"u{g.id}{t}"]: -1, idx[f"c{g.id}{t}"]: -1})
            rhs.append(-inp.gen_mid_w[g.id][t])
            rows.append({idx[f"w{g.id}{t}"]: 1, idx[f"u{g.id}{t}"]: -1})
            rhs.append(0.0)
    for t in range(T):
        row: dict[int, float] = {idx[f"u{g.id}{t}"]: 1 for g in fleet.generators}
        for b in fleet.batteries:
            row[idx[f"dis{b.id}{t}"]] = 1
            row[idx[f"ch{b.id}{t}"]] = -1
        rows.append(dict(row))
        rhs.append(inp.export_cap_w[t] + inp.load_low_w[t])
        rows.append({**row, idx["peak"]: -1})
        rhs.append(inp.load_low_w[t])
        low: dict[int, float] = {idx[f"w{g.id}{t}"]: -1 for g in fleet.generators}
        for b in fleet.batteries:
            low[idx[f"dis{b.id}{t}"]] = -1
            low[idx[f"ch{b.id}{t}"]] = 1
        low[idx[f"s{t}"]] = -1
        rows.append(low)
        rhs.append(inp.import_limit_w[t] - inp.load_high_w[t])
    for b in fleet.batteries:
        target = w.soc_target * b.capacity_wh
        rows.append({idx[f"e{b.id}{T}"]: 1, idx[f"dev{b.id}"]: -1})
        rhs.append(target)
        rows.append({idx[f"e{b.id}{T}"]: -1, idx[f"dev{b.id}"]: -1})
        rhs.append(-target)
    A = lil_matrix((len(rows), n))
    for i, r in enumerate(rows):
        for j, v in r.items():
            A[i, j] = v
    eq_rows = []
    for b in fleet.batteries:
        for t in range(T):
            eq_rows.append({idx[f"e{b.id}{t + 1}"]: 1, idx[f"e{b.id}{t}"]: -1,
                            idx[f"ch{b.id}{t}"]: -dt_h * b.charge_efficiency,
                            idx[f"dis{b.id}{t}"]: dt_h / b.discharge_efficiency})
    Aeq = lil_matrix((len(eq_rows), n))
    for i, r in enumerate(eq_rows):
        for j, v in r.items():
            Aeq[i, j] = v
    res = linprog(c, A_ub=A.tocsr(), b_ub=rhs, A_eq=Aeq.tocsr(), b_eq=np.zeros(len(eq_rows)),
                  bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


@pytest.mark.parametrize(("T", "cap", "soc", "seed"), [(12, 35e6, 0.5, 0), (24, 25e6, 0.9, 1),
                                                       (16, 45e6, 0.1, 2)])
def test_same_optimum_as_an_independent_matrix_lp(T: int, cap: float, soc: float,
                                                  seed: int) -> None:
    w = Weights()
    d = Dispatcher(FLEET, steps=T, step_s=3600, weights=w)
    inp = day_inputs(T, cap=cap, soc=soc, seed=seed)
    sch = d.solve(inp, solvers=("HIGHS",))
    check_physics(sch, inp, FLEET, 1.0)
    ref = matrix_lp_objective(FLEET, inp, w, T, 1.0)
    assert sch.objective == pytest.approx(ref, rel=1e-6)


def test_plans_over_a_day_keep_the_cap_and_use_the_battery() -> None:
    T = 96
    d = Dispatcher(FLEET, steps=T, step_s=900, weights=Weights())
    for soc in (0.1, 0.5, 0.95):
        inp = day_inputs(T, soc=soc, seed=3)
        sch = d.solve(inp, solvers=("HIGHS",))
        check_physics(sch, inp, FLEET, 0.25)
    # a tighter cap means more charging or curtailment, never a breach
    tight = d.solve(day_inputs(T, cap=20e6, seed=3), solvers=("HIGHS",))
    loose = d.solve(day_inputs(T, cap=50e6, seed=3), solvers=("HIGHS",))
    assert tight.terms["curtailment"] > loose.terms["curtailment"]
    assert np.all(tight.export_worst_w <= 20e6 + 1)


def test_highs_and_clarabel_agree() -> None:
    T = 48
    d = Dispatcher(FLEET, steps=T, step_s=900, weights=Weights())
    inp = day_inputs(T, seed=5)
    a = d.solve(inp, solvers=("HIGHS",))
    b = d.solve(inp, solvers=("CLARABEL",))
    assert a.solver == "HIGHS" and b.solver == "CLARABEL"
    assert b.objective == pytest.approx(a.objective, rel=2e-3)


def test_a_failed_solver_falls_through_the_chain_and_reports() -> None:
    d = Dispatcher(FLEET, steps=8, step_s=900, weights=Weights())
    inp = day_inputs(8)
    sch = d.solve(inp, solvers=("NOT_A_SOLVER", "HIGHS"))
    assert sch.status is SolveStatus.OPTIMAL and sch.solver == "HIGHS"
    bad = d.solve(inp, solvers=("NOT_A_SOLVER",))
    assert bad.status is SolveStatus.ERROR and not bad.status.usable
    assert "NOT_A_SOLVER" in bad.message


def test_bad_inputs_are_named() -> None:
    d = Dispatcher(FLEET, steps=8, step_s=900, weights=Weights())
    inp = day_inputs(8)
    broken = DispatchInputs(**{**inp.__dict__, "load_mid_w": np.full(8, np.nan)})
    with pytest.raises(ValueError, match="load_mid_w: contains NaN"):
        d.solve(broken)
    short = DispatchInputs(**{**inp.__dict__, "export_cap_w": np.full(3, 1e6)})
    with pytest.raises(ValueError, match=r"export_cap_w: expected 8 steps"):
        d.solve(short)
