"""Serve a simulated plant on Modbus TCP: one server per host:port, unit ids behind it."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict
from pathlib import Path
from types import TracebackType

from drivers.profile import load_profile
from sim.clock import TimeSource
from sim.modbus_server import ModbusTcpDeviceServer, SimUnit
from sim.nwp import WeatherForecaster, publish
from sim.plant import Plant
from sim.spec import Endpoint, PlantSpec
from sim.sunspec import SunSpecSimUnit

SUNSPEC_PV_MODELS = (1, 701, 702, 704, 103, 120, 121, 122, 123)
SUNSPEC_BATTERY_MODELS = (1, 701, 702, 713, 704)


def _sf(largest: float, raw_max: int = 32767) -> float:
    """The smallest scale factor >= 0 that fits ``largest`` in ``raw_max`` raw units."""
    return float(max(0, math.ceil(math.log10(max(abs(largest), 1.0) / raw_max))))


class SimulatedPlant:
    """A plant stepped along a clock and served over Modbus TCP.

    Every read or write first advances the plant to the clock's time, so the registers show
    the instant of the request. A background task also keeps the plant stepping when no
    one asks (so the meter's statistics never lag the clock by more than ``tick_wall_s``).
    Use as an async context manager.
    """

    def __init__(self, spec: PlantSpec, *, clock: TimeSource, seed: int = 1,
                 history_days: int = 0, tick_wall_s: float = 0.05,
                 forecast_file: Path | None = None) -> None:
        self.spec = spec
        self.clock = clock
        self.plant = Plant(spec, seed=seed, start_s=clock.time(), history_days=history_days)
        self.tick_wall_s = tick_wall_s
        self.servers: list[ModbusTcpDeviceServer] = []
        self._task: asyncio.Task[None] | None = None
        # the weather forecasts the county receives, rewritten at each issue (sim.nwp)
        self.forecaster = WeatherForecaster(self.plant.weather, spec, seed=seed)
        self.forecast_file = forecast_file
        self._publisher: asyncio.Task[None] | None = None
        # devices sharing a host:port sit behind one server (a gateway); port 0 means "any
        # free port", and each such device gets a server of its own
        groups: dict[tuple[str, int | str], dict[int, SimUnit]] = defaultdict(dict)
        self._server_of: dict[str, tuple[str, int | str]] = {}
        for dev in spec.devices():
            ep: Endpoint = dev.endpoint
            key: tuple[str, int | str] = (ep.host, ep.port if ep.port else f"auto:{dev.id}")
            if ep.unit_id in groups[key]:
                raise ValueError(f"{dev.id}: unit id {ep.unit_id} on {ep.host}:{ep.port} is taken")
            groups[key][ep.unit_id] = self._unit(dev.id, ep.profile)
            self._server_of[dev.id] = key
        self._servers_by_key: dict[tuple[str, int | str], ModbusTcpDeviceServer] = {}
        for key, units in groups.items():
            port = key[1] if isinstance(key[1], int) else 0
            srv = ModbusTcpDeviceServer(host=key[0], port=port, units=units)
            self._servers_by_key[key] = srv
            self.servers.append(srv)

    def _sunspec_pv(self, asset_id: str) -> SimUnit:
        """A PV plant as a SunSpec inverter with the DER models and the legacy ones beside
        them, as inverters in transition ship: 701/103 measurements, 702/120/121 ratings,
        122 available power, and the limit in percent of WMax through 704 (with reversion
        values: a lapsed limit goes to ``WMaxLimPctRvrt`` when ``WMaxLimPctEnaRvrt`` is 1)
        or 123 (a lapsed limit lifts). Both write the one limit of the plant."""
        plant = self.plant
        ctl = {"pct": 100.0, "revert_s": 0.0, "window_s": 0.0, "ramp_s": 0.0,
               "fallback_pct": 100.0, "fallback_enable": 0.0}

        def values() -> dict[str, float]:
            plant.advance_to(self.clock.time())
            v = plant.device_values(asset_id)
            rated = v["rated_power_w"]
            enabled = plant.limit_enabled[asset_id]
            # after a lapse to the reversion values the device reports those
            pct = 100.0 * plant.limit_w[asset_id] / rated if enabled else ctl["pct"]
            ena = 1.0 if enabled else 0.0
            return {"m701_w": v["active_power_w"], "m701_w_sf": 4.0,
                    "m701_hz": 50.0, "m701_hz_sf": -2.0,
                    "m701_totwhinj": v["energy_export_wh"], "m701_totwh_sf": 3.0,
                    "m702_wmaxrtg": rated, "m702_wmax": rated, "m702_w_sf": 4.0,
                    "m704_wmaxlimpct": pct, "m704_wmaxlimpctena": ena,
                    "m704_wmaxlimpctrvrttms": ctl["revert_s"],
                    "m704_wmaxlimpctrvrt": ctl["fallback_pct"],
                    "m704_wmaxlimpctenarvrt": ctl["fallback_enable"],
                    "m704_wmaxlimpct_sf": -2.0,
                    "m103_w": v["active_power_w"], "m103_w_sf": 4.0,
                    "m103_wh": v["energy_export_wh"], "m103_wh_sf": 3.0,
                    "m103_hz": 50.0, "m103_hz_sf": -2.0,
                    "m103_st": 5.0 if v["status"] == 2 else 4.0,  # throttled / MPPT
                    "m120_dertyp": 4.0, "m120_wrtg": rated, "m120_wrtg_sf": 4.0,
                    "m121_wmax": rated, "m121_wmax_sf": 4.0,
                    "m122_waval": v["available_power_w"], "m122_waval_sf": 4.0,
                    "m123_wmaxlimpct": pct, "m123_wmaxlimpct_sf": -2.0,
                    "m123_wmaxlimpct_rvrttms": ctl["revert_s"],
                    "m123_wmaxlimpct_wintms": ctl["window_s"],
                    "m123_wmaxlimpct_rmptms": ctl["ramp_s"],
                    "m123_wmaxlim_ena": ena}

        def on_write(point: str, value: float) -> None:
            plant.advance_to(self.clock.time())
            rated = plant.device_values(asset_id)["rated_power_w"]
            enabled = plant.limit_enabled[asset_id]
            if point in ("m704_wmaxlimpctrvrt", "m704_wmaxlimpctenarvrt"):
                ctl["fallback_pct" if point == "m704_wmaxlimpctrvrt" else "fallback_enable"] = value
                plant.revert_to_w[asset_id] = (rated * ctl["fallback_pct"] / 100.0
                                               if ctl["fallback_enable"] == 1 else None)
                return
            if point in ("m123_wmaxlimpct", "m704_wmaxlimpct"):
                ctl["pct"] = value
            elif point in ("m123_wmaxlimpct_rvrttms", "m704_wmaxlimpctrvrttms"):
                ctl["revert_s"] = value
            elif point in ("m123_wmaxlim_ena", "m704_wmaxlimpctena"):
                enabled = value == 1
            elif point in ("m123_wmaxlimpct_wintms", "m123_wmaxlimpct_rmptms"):
                ctl["window_s" if point.endswith("wintms") else "ramp_s"] = value
                return  # the simulated inverter acts at once either way
            else:
                return
            plant.set_limit(asset_id, rated * ctl["pct"] / 100.0 if enabled else None,
                            revert_s=ctl["revert_s"])

        return SunSpecSimUnit(SUNSPEC_PV_MODELS, values, on_write,
                              text={"m1_mn": "County VPP", "m1_md": "Simulated PV plant",
                                    "m1_sn": asset_id})

    def _sunspec_battery(self, asset_id: str) -> SimUnit:
        """A battery as a SunSpec storage system: 701 measurements (+ W discharging), 702
        ratings, 713 storage (capacity, SoC, state) and 704's power setpoint ``WSet`` in W
        (``WSetMod`` 1) or in percent of WMax (``WSetPct``, ``WSetMod`` 0), enabled by
        ``WSetEna``, lapsing after ``WSetRvrtTms`` to ``WSetRvrt`` when ``WSetEnaRvrt`` is 1
        (else it is disabled: the battery idles). A fault or over-temperature trip shows as
        701 ``InvSt`` 6 (FAULT) and 713 ``Sta`` 2 (ERROR)."""
        plant = self.plant
        spec = next(b for b in self.spec.batteries if b.id == asset_id)
        wmax = spec.max_discharge_w
        w_sf = _sf(max(spec.max_charge_w, spec.max_discharge_w))
        wh_sf = _sf(spec.capacity_wh, 65535)
        ctl = {"mod": 1.0, "wset": 0.0, "pct": 0.0, "revert_s": 0.0, "rvrt_w": 0.0,
               "rvrt_pct": 0.0, "ena_rvrt": 0.0}

        def target_w(watts: float, pct: float) -> float:
            return watts if ctl["mod"] == 1 else wmax * pct / 100.0

        def values() -> dict[str, float]:
            plant.advance_to(self.clock.time())
            v = plant.device_values(asset_id)
            bs = plant.battery[asset_id]
            fault = v["status"] == 3
            enabled = plant.setpoint_enabled[asset_id]
            # after a lapse to the reversion values the device reports those
            wset = plant.battery_setpoint_w[asset_id] if enabled else ctl["wset"]
            return {"m701_st": 1.0, "m701_invst": 6.0 if fault else 3.0,
                    "m701_connst": 0.0 if fault else 1.0,
                    "m701_w": v["active_power_w"], "m701_w_sf": w_sf,
                    "m701_hz": 50.0, "m701_hz_sf": -2.0,
                    "m701_totwhinj": v["energy_discharge_wh"],
                    "m701_totwhabs": v["energy_charge_wh"], "m701_totwh_sf": 0.0,
                    "m701_tmpcab": v["temperature_c"], "m701_tmp_sf": -1.0,
                    "m702_wmaxrtg": wmax, "m702_wmax": wmax,
                    "m702_wchartemaxrtg": spec.max_charge_w,
                    "m702_wdischartemaxrtg": spec.max_discharge_w,
                    "m702_wchartemax": spec.max_charge_w,
                    "m702_wdischartemax": spec.max_discharge_w, "m702_w_sf": w_sf,
                    "m713_whrtg": spec.capacity_wh,
                    "m713_whavail": max(0.0, bs.soc - spec.soc_min) * spec.capacity_wh,
                    "m713_wh_sf": wh_sf, "m713_soc": 100.0 * bs.soc, "m713_soh": 100.0,
                    "m713_sta": 2.0 if fault else 0.0, "m713_pct_sf": -2.0,
                    "m704_wsetena": 1.0 if enabled else 0.0, "m704_wsetmod": ctl["mod"],
                    "m704_wset": wset, "m704_wset_sf": 0.0,
                    "m704_wsetpct": 100.0 * wset / wmax if enabled else ctl["pct"],
                    "m704_wsetpct_sf": -2.0,
                    "m704_wsetrvrt": ctl["rvrt_w"], "m704_wsetpctrvrt": ctl["rvrt_pct"],
                    "m704_wsetenarvrt": ctl["ena_rvrt"],
                    "m704_wsetrvrttms": ctl["revert_s"]}

        keys = {"m704_wsetmod": "mod", "m704_wset": "wset", "m704_wsetpct": "pct",
                "m704_wsetrvrttms": "revert_s", "m704_wsetrvrt": "rvrt_w",
                "m704_wsetpctrvrt": "rvrt_pct", "m704_wsetenarvrt": "ena_rvrt"}

        def on_write(point: str, value: float) -> None:
            plant.advance_to(self.clock.time())
            enabled = plant.setpoint_enabled[asset_id]
            if enabled:  # what is in force (a lapse may have put the reversion value there)
                ctl["wset"] = plant.battery_setpoint_w[asset_id]
                ctl["pct"] = 100.0 * ctl["wset"] / wmax
            if point == "m704_wsetena":
                enabled = value == 1
            elif point in keys:
                ctl[keys[point]] = value
            else:
                return  # a setting the simulated battery accepts and ignores
            plant.revert_to_w[asset_id] = (target_w(ctl["rvrt_w"], ctl["rvrt_pct"])
                                           if ctl["ena_rvrt"] == 1 else None)
            if point in ("m704_wsetrvrt", "m704_wsetpctrvrt", "m704_wsetenarvrt"):
                return
            plant.set_battery_setpoint(
                asset_id, target_w(ctl["wset"], ctl["pct"]) if enabled else None,
                revert_s=ctl["revert_s"])

        return SunSpecSimUnit(SUNSPEC_BATTERY_MODELS, values, on_write,
                              text={"m1_mn": "County VPP", "m1_md": "Simulated BESS",
                                    "m1_sn": asset_id}, kind="battery")

    def _unit(self, asset_id: str, profile_name: str) -> SimUnit:
        if profile_name == "sunspec":
            if asset_id in self.plant.battery:
                return self._sunspec_battery(asset_id)
            return self._sunspec_pv(asset_id)

        def values() -> dict[str, float]:
            self.plant.advance_to(self.clock.time())
            return self.plant.device_values(asset_id)

        def on_write(point: str, value: float) -> None:
            self.plant.advance_to(self.clock.time())
            self.plant.apply_setpoint(asset_id, point, value)

        return SimUnit(load_profile(profile_name), values, on_write)

    def server_of(self, asset_id: str) -> ModbusTcpDeviceServer:
        """The server a device answers on (stop it to take the device off the network)."""
        return self._servers_by_key[self._server_of[asset_id]]

    def endpoint_of(self, asset_id: str) -> tuple[str, int]:
        """Host and bound port of a device (ports given as 0 are chosen by the OS)."""
        srv = self._servers_by_key[self._server_of[asset_id]]
        return srv.host, srv.port

    async def _run(self) -> None:
        while True:
            self.plant.advance_to(self.clock.time())
            await asyncio.sleep(self.tick_wall_s)

    async def __aenter__(self) -> SimulatedPlant:
        for srv in self.servers:
            await srv.start()
        self._task = asyncio.create_task(self._run(), name="sim.plant.step")
        if self.forecast_file is not None:
            self._publisher = asyncio.create_task(
                publish(self.forecaster, self.clock, self.forecast_file), name="sim.nwp")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        for task in (self._task, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for srv in self.servers:
            await srv.stop()
        self.plant.advance_to(self.clock.time())
