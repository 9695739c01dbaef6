"""The dispatcher's faults against the simulator over Modbus TCP: a solver that fails or
answers late, and a weather forecast that is badly wrong. The simulator's meter judges the
cap. (A battery trip and the PCC meter going silent: tests/e2e/test_scenario_run.py.)

Each run: a clear spring noon on the demo county at ×600, the cap cut from 35 to 25 MW
with 15 minutes' notice half an hour in; the county's generation runs far over the cut.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sim.scenario import Scenario
from vpp.cli import default_demo_config
from vpp.config import SiteConfig, load_config
from vpp.dispatch import DispatchInputs
from vpp.simrun import ScenarioRun

NOON = {"name": "noon-cut", "config": "demo", "start": "2026-04-15T11:30:00+08:00",
        "duration_h": 1.25, "seed": 5, "load_scale": 0.7, "warmup_s": 900,
        "weather": {"mean_wind_m_s": 9.0, "periods": [{"from_h": 0, "regime": "clear"}]},
        "cap": [{"at_h": 0.5, "export_cap_w": 25e6, "notice_s": 900}]}



def _config(**dispatch: Any) -> SiteConfig:
    cfg = load_config(default_demo_config())
    return cfg.model_copy(update={"dispatch": cfg.dispatch.model_copy(update=dispatch),
                                  "mqtt": cfg.mqtt.model_copy(update={"enabled": False})})


def _run(scenario: Scenario, config: SiteConfig, tmp_path: Path, *,
         forecast_ratio: float = 1.0) -> tuple[dict[str, Any], set[str | None]]:
    """The run's report (with the PV plant's most available and most forecast power) and
    every plan source the controller had. ``forecast_ratio``: the generation forecasts
    the dispatcher is given are wrong by this factor."""
    sources: set[str | None] = set()
    pv_forecast_w = [0.0]

    async def go() -> dict[str, Any]:
        run = ScenarioRun(scenario, config, ephemeral_ports=True, data_dir=tmp_path)

        def tick() -> None:
            ctrl = run.demo.controller
            if ctrl is not None and ctrl.state.schedule is not None:
                sources.add(ctrl.state.plan_source)
                inputs = ctrl.state.schedule.inputs
                if inputs is not None:
                    pv_forecast_w[0] = max(pv_forecast_w[0], float(inputs.gen_mid_w["pv1"][0]))
        async with run:
            if forecast_ratio != 1.0:  # the forecasts fail: every plan is made from wrong ones
                ctrl = run.demo.controller
                true_inputs = ctrl.dispatch_inputs

                def wrong(start: datetime) -> DispatchInputs:
                    inp = true_inputs(start)
                    return replace(inp, **{k: {g: forecast_ratio * v for g, v in
                                               getattr(inp, k).items()}
                                           for k in ("gen_low_w", "gen_mid_w", "gen_high_w")})
                ctrl.dispatch_inputs = wrong
            await run.wait(on_tick=tick)
        rep = run.report()
        rep["pv_forecast_max_w"] = pv_forecast_w[0]
        rep["pv_available_max_w"] = max(r["pv1.available_w"] for r in run.demo.stats.trace)
        return rep
    return asyncio.run(go()), sources


@pytest.mark.parametrize(("dispatch", "why"), [
    ({"solver": "ECOS", "fallback_solvers": ()}, "a solver that is not there"),
    ({"late_s": 0.001}, "every solve late")])
def test_a_failing_solver_leaves_a_plan_that_keeps_the_cap(
        tmp_path: Path, dispatch: dict[str, Any], why: str) -> None:
    rep, sources = _run(Scenario.model_validate(NOON), _config(**dispatch), tmp_path)
    assert sources & {"rule-based", "last-good"}, (why, sources)
    assert "optimal" not in sources, why
    assert rep["uncontrolled_max_export_w"] > 1.5 * 25e6  # the cut had to be held
    # two control steps of slack: the loop's stalls hold the paced clock, but at ×600
    # readings taken milliseconds apart are still seconds of ramp apart
    assert rep["cap_violation_s"] <= 2 * rep["control_interval_s"], (why, rep["cap_violation_s"])
    assert rep["max_export_w"] <= 35e6 * 1.01
    assert rep["steps_without_plan"] > 0  # counted, not hidden


def test_a_badly_wrong_forecast_costs_energy_not_the_cap(tmp_path: Path) -> None:
    """The forecasts say a third of the generation there is: the plan expects no surplus
    (no battery room kept, no cut), the real-time loop meets it from the meter."""
    rep, sources = _run(Scenario.model_validate(NOON), _config(), tmp_path,
                        forecast_ratio=0.33)
    assert "optimal" in sources
    assert rep["pv_forecast_max_w"] < 0.6 * rep["pv_available_max_w"]  # badly wrong indeed
    assert rep["uncontrolled_max_export_w"] > 1.5 * 25e6
    assert rep["cap_violation_s"] <= 2 * rep["control_interval_s"], rep["cap_violation_s"]
    assert rep["curtailed_energy_wh"] > 1e6  # the surplus the plan did not see
