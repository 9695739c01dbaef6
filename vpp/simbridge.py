"""Turn a site configuration into the simulator's plant description."""

from __future__ import annotations

from sim.spec import (
    BatterySpec,
    Endpoint,
    FlexLoadSpec,
    LoadSpec,
    MeterSpec,
    PlantSpec,
    PvSpec,
    WeatherSpec,
    WindSpec,
)
from vpp.config import Asset, BatteryAsset, LoadAsset, PvAsset, SiteConfig, WindAsset


def plant_spec(config: SiteConfig) -> PlantSpec:
    """The plant a site configuration describes, with the weather of its ``[sim]`` section."""

    def ep(a: Asset) -> Endpoint:
        return Endpoint(host=a.host, port=a.port, unit_id=a.unit_id, profile=a.profile)

    s = config.sim
    meter = config.asset(config.pcc.meter)
    return PlantSpec(
        latitude=config.site.latitude, longitude=config.site.longitude,
        altitude_m=config.site.altitude_m, timezone=config.site.timezone,
        export_cap_w=config.pcc.export_cap_w, line_loss_ratio=s.line_loss_ratio,
        meter=MeterSpec(id=meter.id, endpoint=ep(meter)),
        pv=tuple(PvSpec(id=a.id, endpoint=ep(a), rated_power_w=a.rated_power_w,
                        dc_power_w=a.dc_power_w, tilt_deg=a.tilt_deg, azimuth_deg=a.azimuth_deg)
                 for a in config.assets if isinstance(a, PvAsset)),
        wind=tuple(WindSpec(id=a.id, endpoint=ep(a), rated_power_w=a.rated_power_w,
                            cut_in_m_s=a.cut_in_m_s, rated_speed_m_s=a.rated_speed_m_s,
                            cut_out_m_s=a.cut_out_m_s)
                   for a in config.assets if isinstance(a, WindAsset)),
        batteries=tuple(BatterySpec(
            id=a.id, endpoint=ep(a), capacity_wh=a.capacity_wh, max_charge_w=a.max_charge_w,
            max_discharge_w=a.max_discharge_w, soc_min=a.soc_min, soc_max=a.soc_max,
            charge_efficiency=a.charge_efficiency, discharge_efficiency=a.discharge_efficiency,
            initial_soc=s.initial_soc) for a in config.assets if isinstance(a, BatteryAsset)),
        loads=tuple(LoadSpec(id=a.id, endpoint=ep(a), peak_w=a.peak_w)
                    for a in config.assets if isinstance(a, LoadAsset) and a.peak_w),
        flex_loads=tuple(FlexLoadSpec(id=a.id, endpoint=ep(a), **a.flexible.model_dump())
                         for a in config.assets
                         if isinstance(a, LoadAsset) and a.flexible is not None),
        weather=WeatherSpec(cloudiness=s.cloudiness, mean_wind_m_s=s.mean_wind_m_s),
    )
