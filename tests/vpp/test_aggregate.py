"""Aggregation (vpp.aggregate): the LP over classes of assets, checked against the full LP.

The split plan of every real asset passes the same physics check as the full model's
plans (``check_physics``: SOC recomputed, limits, the cap in the dangerous case, every
objective term recomputed from the plan). Generators aggregate exactly (the same optimum
to 1e-6); pooled batteries are a relaxation whose split plan comes within 0.5% of the
full LP's optimum.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.vpp.test_dispatch import START, check_physics
from vpp.aggregate import (
    FREE,
    AggregateDispatcher,
    aggregate_fleet,
    pools,
    reduced_fleet,
    split_generators,
)
from vpp.dispatch import (
    BatteryModel,
    Dispatcher,
    DispatchInputs,
    Fleet,
    FlexLoadModel,
    FlexWindow,
    GeneratorModel,
    GroupLimit,
    Weights,
)

T, STEP_S = 32, 900  # 8 hours from 08:00: the midday surplus and the afternoon


def county(n_pv: int = 9, n_wind: int = 6, *, batteries: bool = True) -> Fleet:
    """PV plants and wind farms of different sizes, two classes of batteries (six each, of
    different capacities), a flexible load, and a feeder holding some of each."""
    pv = tuple(GeneratorModel(id=f"pv{i}", kind="pv", rated_power_w=(4 + i) * 1e6)
               for i in range(n_pv))
    wind = tuple(GeneratorModel(id=f"wf{i}", kind="wind", rated_power_w=(6 + 2 * i) * 1e6)
                 for i in range(n_wind))
    bats: tuple[BatteryModel, ...] = ()
    if batteries:
        bats = tuple(BatteryModel(id=f"fast{i}", capacity_wh=c, max_charge_w=c / 2,
                                  max_discharge_w=c / 2, soc_min=0.1, soc_max=0.95,
                                  charge_efficiency=0.95, discharge_efficiency=0.95)
                     for i, c in enumerate((8e6, 12e6, 20e6, 6e6, 10e6, 14e6))) + tuple(
            BatteryModel(id=f"slow{i}", capacity_wh=c, max_charge_w=c / 4,
                         max_discharge_w=c / 4, soc_min=0.05, soc_max=1.0,
                         charge_efficiency=0.92, discharge_efficiency=0.94)
            for i, c in enumerate((16e6, 24e6, 40e6, 12e6, 20e6, 30e6)))
    feeder = GroupLimit(id="feeder", assets=("pv0", "pv1", "wf0", "ev"), max_export_w=14e6)
    return Fleet(generators=pv + wind, batteries=bats,
                 flex_loads=(FlexLoadModel(id="ev", max_w=3e6),), groups=(feeder,))


def county_inputs(fleet: Fleet, *, seed: int = 1, cap: float = 45e6,
                  soc_jitter: float | None = None) -> DispatchInputs:
    """Each plant its own forecast: PV of different cloudiness, wind random walks; some
    forecasts above a rating. Batteries at different SOCs, or (``soc_jitter``) each class
    at one SOC give or take the jitter, as a station's containers are kept."""
    rng = np.random.default_rng(seed)
    h = 8 + np.arange(T) * STEP_S / 3600
    sun = np.clip(np.sin((h - 6) / 12 * np.pi), 0, None)
    low, mid, high = {}, {}, {}
    for g in fleet.generators:
        if g.kind == "pv":
            m = g.rated_power_w * sun * rng.uniform(0.6, 1.05) * (
                1 - 0.2 * rng.random(T))
        else:
            m = np.clip(g.rated_power_w * (0.5 + 0.3 * rng.standard_normal(T).cumsum()
                                           / np.sqrt(T)), 0, 1.1 * g.rated_power_w)
        low[g.id], mid[g.id], high[g.id] = 0.8 * m, m, 1.15 * m
    load = 25e6 + 5e6 * np.sin(h / 24 * 2 * np.pi)
    socs = rng.uniform(0.2, 0.8, len(fleet.batteries))
    if soc_jitter is not None:
        socs = np.array([0.35 if b.id.startswith("fast") else 0.6 for b in fleet.batteries])
        socs = socs + rng.uniform(0, soc_jitter, len(socs))
    return DispatchInputs(
        start=START, gen_low_w=low, gen_mid_w=mid, gen_high_w=high,
        load_low_w=0.95 * load, load_mid_w=load, load_high_w=1.05 * load,
        export_cap_w=np.full(T, cap), import_limit_w=np.full(T, 60e6),
        soc={b.id: float(s) for b, s in zip(fleet.batteries, socs, strict=True)},
        flex_windows={"ev": (FlexWindow(first=4, end=24, energy_wh=12e6),)})


def both(fleet: Fleet, **kw: object) -> tuple[Dispatcher, AggregateDispatcher]:
    args = {"steps": T, "step_s": STEP_S, "weights": Weights(),
            "export_ramp_w_per_step": 6e6, **kw}
    return Dispatcher(fleet, **args), AggregateDispatcher(fleet, **args)  # type: ignore[arg-type]


def test_generators_aggregate_by_group_and_batteries_pool_by_class_and_soc() -> None:
    fleet = county()
    agg = aggregate_fleet(fleet)
    # generators: in the feeder or not (each with its out-of-control twin)
    assert len(agg.generator_models) == 4
    assert sorted(len(m) for m in agg.generators.values()) == [3, 3, 12, 12]
    assert sorted(len(c) for c in agg.batteries) == [6, 6]
    # a station's containers at one SOC: one pool per class; at different SOCs: one each
    assert sorted(map(len, pools(agg, county_inputs(fleet, soc_jitter=0.004)).values())) \
        == [6, 6]
    assert len(pools(agg, county_inputs(fleet))) == 12
    reduced = reduced_fleet(agg, tuple(pools(agg, county_inputs(fleet, soc_jitter=0.0))))
    (feeder,) = reduced.groups
    assert "ev" in feeder.assets and len(feeder.assets) == 3  # the ev and two aggregates
    for a in set(feeder.assets) - {"ev"}:
        assert {g.id for g in agg.generators[a]} == {"pv0", "pv1", "wf0"}


def test_generators_aggregate_exactly() -> None:
    """Same optimum as the full LP to 1e-6, with a plant out of control and forecasts
    above ratings; the split keeps every plant's physics."""
    fleet = county(batteries=False)
    full, agg = both(fleet)
    inp = replace(county_inputs(fleet, cap=30e6), generators_uncontrolled=frozenset({"wf2"}))
    a, b = full.solve(inp), agg.solve(inp)
    check_physics(a, full)
    check_physics(b, agg)
    assert b.objective == pytest.approx(a.objective, rel=1e-6)
    assert a.terms["curtailment"] > 1e6  # the cap binds: there is something to split
    assert "planned as 5 aggregates of 16 assets" in b.message  # 4 generators and the ev


@pytest.mark.parametrize("seed", [1, 3])
@pytest.mark.parametrize("soc_jitter", [None, 0.0, 0.004])
def test_the_aggregate_plan_comes_within_half_a_percent_of_the_full_lp(
        seed: int, soc_jitter: float | None) -> None:
    """A station at one SOC is pooled: exact. Batteries within the SOC tolerance of each
    other are pooled (a station within it; by chance, random SOCs): within 0.5%."""
    fleet = county()
    full, agg = both(fleet)
    inp = county_inputs(fleet, seed=seed, cap=30e6, soc_jitter=soc_jitter)
    a, b = full.solve(inp), agg.solve(inp)
    check_physics(a, full)
    check_physics(b, agg)
    exact = soc_jitter == 0.0
    rel = 1e-6 if exact else 0.005
    assert a.objective * (1 - 1e-6) <= b.objective <= a.objective * (1 + rel), (
        a.objective, b.objective)
    assert agg.inner is not None
    n_pools = len(agg.inner.fleet.batteries)
    assert n_pools == 2 if soc_jitter is not None else n_pools >= 10
    assert sum(np.abs(p).sum() for p in b.battery_w.values()) > 1e6  # batteries in use
    if exact:
        assert "misses the pool" not in b.message


def test_a_pool_member_out_of_service_is_idle_and_the_others_carry_the_plan() -> None:
    fleet = county()
    _, agg = both(fleet)
    inp = replace(county_inputs(fleet, cap=30e6, soc_jitter=0.0),
                  batteries_out=frozenset({"fast2"}))
    sch = agg.solve(inp)
    check_physics(sch, agg)
    np.testing.assert_allclose(sch.battery_w["fast2"], 0.0)
    assert np.abs(sch.battery_w["fast1"]).max() > 1e5


def test_the_split_fills_the_members_in_stages() -> None:
    """Up to Σlow' each member in proportion to its low forecast, then towards its
    median, then its high; a member's limit never passes its own high (or rating)."""
    gens = (GeneratorModel(id="a", kind="pv", rated_power_w=10.0),
            GeneratorModel(id="b", kind="pv", rated_power_w=100.0))
    inp = DispatchInputs(start=START, gen_low_w={"a": np.full(1, 2.0), "b": np.full(1, 6.0)},
                         gen_mid_w={"a": np.full(1, 4.0), "b": np.full(1, 8.0)},
                         gen_high_w={"a": np.full(1, 20.0), "b": np.full(1, 12.0)},
                         load_low_w=np.zeros(1), load_mid_w=np.zeros(1),
                         load_high_w=np.zeros(1), export_cap_w=np.zeros(1),
                         import_limit_w=np.zeros(1), soc={})
    got = {u: split_generators(gens, inp, np.full(1, u)) for u in (4.0, 10.0, 15.0, 22.0, 30.0)}
    assert (got[4.0]["a"][0], got[4.0]["b"][0]) == pytest.approx((1.0, 3.0))
    assert (got[10.0]["a"][0], got[10.0]["b"][0]) == pytest.approx((3.0, 7.0))
    assert (got[15.0]["a"][0], got[15.0]["b"][0]) == pytest.approx((5.8, 9.2))
    assert (got[22.0]["a"][0], got[22.0]["b"][0]) == pytest.approx((10.0, 12.0))
    for u, split in got.items():
        assert split["a"][0] + split["b"][0] == pytest.approx(min(u, 22.0))
        assert split["a"][0] <= 10.0 + 1e-9 and split["b"][0] <= 12.0 + 1e-9


def test_bad_input_is_named_by_the_real_asset() -> None:
    fleet = county()
    _, agg = both(fleet)
    inp = county_inputs(fleet)
    bad = replace(inp, gen_mid_w={**inp.gen_mid_w, "wf3": np.full(T, np.nan)})
    with pytest.raises(ValueError, match=r"gen_mid_w\[wf3\]: contains NaN"):
        agg.solve(bad)
    with pytest.raises(ValueError, match=r"soc\[slow1\]"):
        agg.solve(replace(inp, soc={**inp.soc, "slow1": float("nan")}))
    assert agg.solve(inp).status.usable  # nothing stuck from the rejected ones


def test_the_free_twin_carries_only_the_plants_out_of_control() -> None:
    fleet = county(batteries=False)
    _, agg = both(fleet)
    sch = agg.solve(replace(county_inputs(fleet, cap=20e6),
                            generators_uncontrolled=frozenset({"pv5"})))
    check_physics(sch, agg)
    free = [a for a in agg.aggregation.generators if a.endswith(FREE)]
    assert agg.inner is not None
    assert len(free) == 2


def test_a_feeder_whose_batteries_are_all_out_still_plans() -> None:
    """A feeder holding a whole battery class: with all of them out of service the class
    has no pool, and the feeder is planned with what is left."""
    base = county()
    feeder = GroupLimit(id="feeder", assets=("pv0", "wf0", *(f"slow{i}" for i in range(6))),
                        max_export_w=14e6, max_import_w=10e6)
    fleet = replace(base, groups=(feeder,))
    _, agg = both(fleet)
    inp = replace(county_inputs(fleet, cap=30e6, soc_jitter=0.0),
                  batteries_out=frozenset(f"slow{i}" for i in range(6)))
    sch = agg.solve(inp)
    check_physics(sch, agg)
    for i in range(6):
        np.testing.assert_allclose(sch.battery_w[f"slow{i}"], 0.0)


def test_a_derated_battery_is_planned_within_its_derating() -> None:
    fleet = county()
    _, agg = both(fleet)
    inp = replace(county_inputs(fleet, cap=30e6, soc_jitter=0.0),
                  battery_limits_w={"fast0": (1e6, 0.5e6)})
    sch = agg.solve(inp)
    check_physics(sch, agg)
    assert float(np.clip(-sch.battery_w["fast0"], 0, None).max()) <= 1e6 + 1.0
    assert float(np.clip(sch.battery_w["fast0"], 0, None).max()) <= 0.5e6 + 1.0
    assert float(np.clip(-sch.battery_w["fast1"], 0, None).max()) > 1e6  # the others not
