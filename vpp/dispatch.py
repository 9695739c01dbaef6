"""The dispatch model: a receding-horizon LP in cvxpy, built once, re-solved with Parameters.

Decisions per 15-minute step: each generator's output limit ``u`` (the most it may
deliver), each battery's charge and discharge power. Two forecast scenarios bound the plan:

* the dangerous one for the cap — generation at its high quantile (P90 by default), load
  at its low quantile — must keep export ≤ cap: ``Σu + Σ(dis − ch) − load_low ≤ cap``;
* the median one prices curtailment: expected curtailment ``c ≥ gen_mid − u``;
* the low one for the import limit: generation at P10 (``w ≤ u``, ``w ≤ gen_low``), load high.

Objective (all in Wh-equivalents): curtailment first, then battery wear, a soft
end-of-horizon SOC target, the worst-case export peak, and a large price on import-limit
slack so the problem is never infeasible.

Charging and discharging at once cannot pay: it moves no energy across the PCC, loses
``(1/η_d − η_c)`` per Wh in the battery and costs ``2 ×`` the wear weight. The default wear
weight (0.06) is above half the largest loss gain (≈ 0.05 at 95 %/95 %), so the solver
never uses it to burn energy; ``tests/vpp/test_dispatch.py`` checks it.

Pure: no I/O. The controller runs :meth:`Dispatcher.solve` in an executor.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import cvxpy as cp
import numpy as np
import pandas as pd

IMPORT_SLACK_WEIGHT_PER_WH = 1000.0


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
class Fleet:
    generators: tuple[GeneratorModel, ...]
    batteries: tuple[BatteryModel, ...]


@dataclass(frozen=True, kw_only=True)
class Weights:
    curtailment_per_wh: float = 1.0
    battery_wear_per_wh: float = 0.06
    soc_target: float = 0.5
    soc_target_per_wh: float = 0.1
    export_peak_per_w: float = 0.01


@dataclass(frozen=True, kw_only=True)
class DispatchInputs:
    """Numbers for one solve; arrays have one value per step [W]."""

    start: datetime
    gen_low_w: dict[str, np.ndarray]
    gen_mid_w: dict[str, np.ndarray]
    gen_high_w: dict[str, np.ndarray]
    load_low_w: np.ndarray  # demand, positive
    load_mid_w: np.ndarray
    load_high_w: np.ndarray
    export_cap_w: np.ndarray
    import_limit_w: np.ndarray
    soc: dict[str, float]


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
    export_worst_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    export_expected_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    export_cap_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    terms: dict[str, float] = field(default_factory=dict)
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
        return {"time_limit": time_limit_s}
    return {}


class Dispatcher:
    """The dispatch LP for a fleet, built once; :meth:`solve` only updates numbers."""

    def __init__(self, fleet: Fleet, *, steps: int, step_s: int, weights: Weights) -> None:
        self.fleet = fleet
        self.steps = steps
        self.step_s = step_s
        self.weights = weights
        self.constraints: dict[str, cp.Constraint] = {}
        _greet_highs_quietly()
        self._build()

    # -- building, one function per concern ---------------------------------------------

    def _add(self, name: str, con: cp.Constraint) -> None:
        self.constraints[name] = con

    def _build(self) -> None:
        T, dt_h = self.steps, self.step_s / 3600.0
        self.p_gen = {g.id: {s: cp.Parameter(T, nonneg=True, name=f"gen_{s}[{g.id}]")
                             for s in ("low", "mid", "high")} for g in self.fleet.generators}
        self.p_load = {s: cp.Parameter(T, nonneg=True, name=f"load_{s}")
                       for s in ("low", "mid", "high")}
        self.p_cap = cp.Parameter(T, nonneg=True, name="export_cap")
        self.p_import = cp.Parameter(T, nonneg=True, name="import_limit")
        self.p_e0 = {b.id: cp.Parameter(nonneg=True, name=f"energy0[{b.id}]")
                     for b in self.fleet.batteries}

        self.u = {g.id: cp.Variable(T, nonneg=True, name=f"limit[{g.id}]")
                  for g in self.fleet.generators}
        self.curt = {g.id: cp.Variable(T, nonneg=True, name=f"curtail[{g.id}]")
                     for g in self.fleet.generators}
        self.w = {g.id: cp.Variable(T, nonneg=True, name=f"gen_low_out[{g.id}]")
                  for g in self.fleet.generators}
        self.ch = {b.id: cp.Variable(T, nonneg=True, name=f"charge[{b.id}]")
                   for b in self.fleet.batteries}
        self.dis = {b.id: cp.Variable(T, nonneg=True, name=f"discharge[{b.id}]")
                    for b in self.fleet.batteries}
        self.e = {b.id: cp.Variable(T + 1, nonneg=True, name=f"energy[{b.id}]")
                  for b in self.fleet.batteries}
        self.import_slack = cp.Variable(T, nonneg=True, name="import_slack")
        self.peak = cp.Variable(name="export_peak")
        self.soc_dev = {b.id: cp.Variable(nonneg=True, name=f"soc_target_dev[{b.id}]")
                        for b in self.fleet.batteries}

        self._add_generator_constraints()
        self._add_battery_constraints(dt_h)
        self._add_export_cap_constraints()
        self._add_import_limit_constraints()
        self._add_objective(dt_h)

    def _battery_net(self) -> cp.Expression | float:
        if not self.fleet.batteries:
            return 0.0
        return sum(self.dis[b.id] - self.ch[b.id] for b in self.fleet.batteries)

    def _add_generator_constraints(self) -> None:
        for g in self.fleet.generators:
            u, p = self.u[g.id], self.p_gen[g.id]
            self._add(f"limit_le_high[{g.id}]", u <= p["high"])
            self._add(f"limit_le_rated[{g.id}]", u <= g.rated_power_w)
            self._add(f"curtailment_def[{g.id}]", self.curt[g.id] >= p["mid"] - u)
            self._add(f"low_out_le_limit[{g.id}]", self.w[g.id] <= u)
            self._add(f"low_out_le_low[{g.id}]", self.w[g.id] <= p["low"])

    def _add_battery_constraints(self, dt_h: float) -> None:
        for b in self.fleet.batteries:
            e, ch, dis = self.e[b.id], self.ch[b.id], self.dis[b.id]
            self._add(f"charge_max[{b.id}]", ch <= b.max_charge_w)
            self._add(f"discharge_max[{b.id}]", dis <= b.max_discharge_w)
            self._add(f"energy_initial[{b.id}]", e[0] == self.p_e0[b.id])
            self._add(f"soc_balance[{b.id}]", e[1:] == e[:-1] + dt_h * (
                b.charge_efficiency * ch - dis / b.discharge_efficiency))
            self._add(f"soc_min[{b.id}]", e[1:] >= b.soc_min * b.capacity_wh)
            self._add(f"soc_max[{b.id}]", e[1:] <= b.soc_max * b.capacity_wh)
            target = self.weights.soc_target * b.capacity_wh
            self._add(f"soc_target_dev_hi[{b.id}]", self.soc_dev[b.id] >= e[-1] - target)
            self._add(f"soc_target_dev_lo[{b.id}]", self.soc_dev[b.id] >= target - e[-1])

    def _export_worst(self) -> cp.Expression:
        gen = sum(self.u[g.id] for g in self.fleet.generators) if self.fleet.generators else 0.0
        return gen + self._battery_net() - self.p_load["low"]

    def _add_export_cap_constraints(self) -> None:
        worst = self._export_worst()
        self._add("export_cap", worst <= self.p_cap)
        self._add("export_peak_def", self.peak >= worst)

    def _add_import_limit_constraints(self) -> None:
        gen = sum(self.w[g.id] for g in self.fleet.generators) if self.fleet.generators else 0.0
        low = gen + self._battery_net() - self.p_load["high"]
        self._add("import_limit", low >= -self.p_import - self.import_slack)

    def _add_objective(self, dt_h: float) -> None:
        w = self.weights
        zero = cp.Constant(0.0)
        self.terms: dict[str, cp.Expression] = {
            "curtailment": w.curtailment_per_wh * dt_h * sum(
                (cp.sum(c) for c in self.curt.values()), zero),
            "battery_wear": w.battery_wear_per_wh * dt_h * sum(
                (cp.sum(self.ch[b] + self.dis[b]) for b in self.ch), zero),
            "soc_target": w.soc_target_per_wh * sum(self.soc_dev.values(), zero),
            "export_peak": w.export_peak_per_w * self.peak,
            "import_slack": IMPORT_SLACK_WEIGHT_PER_WH * dt_h * cp.sum(self.import_slack),
        }
        self.problem = cp.Problem(cp.Minimize(sum(self.terms.values(), zero)),
                                  list(self.constraints.values()))

    # -- solving --------------------------------------------------------------------------

    def _set(self, inputs: DispatchInputs) -> str:
        T = self.steps
        notes = []

        def arr(x: np.ndarray, name: str) -> np.ndarray:
            a = np.asarray(x, dtype=float)
            if a.shape != (T,):
                raise ValueError(f"{name}: expected {T} steps, got shape {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name}: contains NaN or infinite values")
            return np.asarray(np.clip(a, 0.0, None), dtype=float)

        for g in self.fleet.generators:
            lo = arr(inputs.gen_low_w[g.id], f"gen_low_w[{g.id}]")
            mid = np.maximum(arr(inputs.gen_mid_w[g.id], f"gen_mid_w[{g.id}]"), lo)
            hi = np.maximum(arr(inputs.gen_high_w[g.id], f"gen_high_w[{g.id}]"), mid)
            self.p_gen[g.id]["low"].value = lo
            self.p_gen[g.id]["mid"].value = mid
            self.p_gen[g.id]["high"].value = hi
        self.p_load["low"].value = arr(inputs.load_low_w, "load_low_w")
        self.p_load["mid"].value = arr(inputs.load_mid_w, "load_mid_w")
        self.p_load["high"].value = arr(inputs.load_high_w, "load_high_w")
        self.p_cap.value = arr(inputs.export_cap_w, "export_cap_w")
        self.p_import.value = arr(inputs.import_limit_w, "import_limit_w")
        for b in self.fleet.batteries:
            soc = float(inputs.soc[b.id])
            clipped = min(max(soc, b.soc_min), b.soc_max)
            if clipped != soc:
                notes.append(f"{b.id}: SOC {soc:.3f} outside [{b.soc_min}, {b.soc_max}], "
                             f"planned from {clipped:.3f}")
            self.p_e0[b.id].value = clipped * b.capacity_wh
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
                            status=status, solver=used, solve_time_s=elapsed,
                            message=message or f"solver status {self.problem.status}")
        return self._result(inputs, created, status, used, elapsed, note)

    def _result(self, inputs: DispatchInputs, created: datetime, status: SolveStatus,
                solver: str, elapsed: float, note: str) -> Schedule:
        def val(x: cp.Variable) -> np.ndarray:
            return np.asarray(x.value, dtype=float)

        battery = {b.id: val(self.dis[b.id]) - val(self.ch[b.id]) for b in self.fleet.batteries}
        limits = {g.id: np.clip(val(self.u[g.id]), 0.0, None) for g in self.fleet.generators}
        curt = {g.id: np.clip(val(self.curt[g.id]), 0.0, None) for g in self.fleet.generators}
        net_b = sum(battery.values(), np.zeros(self.steps))
        expected = sum((np.minimum(limits[g], self.p_gen[g]["mid"].value) for g in limits),
                       np.zeros(self.steps)) + net_b - self.p_load["mid"].value
        worst = sum(limits.values(), np.zeros(self.steps)) + net_b - self.p_load["low"].value
        return Schedule(
            created_at=created, start=inputs.start, step_s=self.step_s, status=status,
            solver=solver, solve_time_s=elapsed, objective=float(self.problem.value),
            battery_w=battery,
            soc={b.id: val(self.e[b.id]) / b.capacity_wh for b in self.fleet.batteries},
            gen_limit_w=limits, expected_curtailment_w=curt,
            export_worst_w=np.asarray(worst), export_expected_w=np.asarray(expected),
            export_cap_w=np.asarray(self.p_cap.value, dtype=float),
            terms={k: float(v.value) for k, v in self.terms.items()}, message=note,
        )
