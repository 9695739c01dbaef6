"""What the simulator needs to know about a plant: devices, ratings, where they are served."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where a simulated device answers: host, TCP port and Modbus unit id."""

    host: str = "127.0.0.1"
    port: int
    unit_id: int = 1
    profile: str


@dataclass(frozen=True, kw_only=True)
class PvSpec:
    id: str
    endpoint: Endpoint
    rated_power_w: float  # AC, inverter limit [W]
    dc_power_w: float  # DC nameplate at STC [W]
    tilt_deg: float = 30.0
    azimuth_deg: float = 180.0  # 180 = facing south
    ramp_ratio_per_s: float = 1.0  # how fast it follows a limit: share of its rating a second


@dataclass(frozen=True, kw_only=True)
class WindSpec:
    id: str
    endpoint: Endpoint
    rated_power_w: float
    cut_in_m_s: float = 3.0
    rated_speed_m_s: float = 12.0
    cut_out_m_s: float = 25.0
    ramp_ratio_per_s: float = 0.2  # pitch control: a fifth of the rating a second


@dataclass(frozen=True, kw_only=True)
class BatterySpec:
    id: str
    endpoint: Endpoint
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_min: float = 0.05
    soc_max: float = 0.95
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    initial_soc: float = 0.5
    self_discharge_per_day: float = 0.001  # share of the stored energy lost a day [1/d]
    ramp_ratio_per_s: float = 1.0  # how fast its power follows a setpoint: share of the
    # larger power rating a second
    # thermal: the cells settle at ambient + rise * (|P| / rating)^2 with a first-order lag;
    # at trip_temp_c the BMS trips the battery, which rests until it has cooled to reset_temp_c
    ambient_c: float = 25.0  # the container's air with its cooling working [°C]
    temp_rise_at_rated_k: float = 12.0  # steady rise over ambient at full power [K]
    thermal_time_constant_s: float = 1800.0
    trip_temp_c: float = 55.0
    reset_temp_c: float = 45.0


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    id: str
    endpoint: Endpoint
    peak_w: float  # typical evening peak of the aggregate load [W]
    min_ratio: float = 0.45  # night/midday trough as a share of the peak


@dataclass(frozen=True, kw_only=True)
class FlexLoadSpec:
    """A shiftable load (electric boilers with heat storage, pumping, an electrolyser): it
    needs ``daily_energy_wh`` each local day by ``deadline_h``, drawing 0 or between
    ``min_w`` and ``max_w``. Left to itself it runs flat out from ``default_start_h``
    until the day's energy is in; a controller may move that energy within the day."""

    id: str
    endpoint: Endpoint
    max_w: float
    min_w: float = 0.0
    daily_energy_wh: float
    deadline_h: float = 24.0  # local hour by which the day's energy must be in
    default_start_h: float = 0.0  # local hour its own timer starts it

    def __post_init__(self) -> None:
        if not 0 <= self.min_w <= self.max_w or self.max_w <= 0:
            raise ValueError(f"{self.id}: need 0 <= min_w <= max_w and max_w > 0, got "
                             f"{self.min_w} / {self.max_w}")
        if not 0 <= self.default_start_h < self.deadline_h <= 24:
            raise ValueError(f"{self.id}: need 0 <= default_start_h < deadline_h <= 24, got "
                             f"{self.default_start_h} / {self.deadline_h}")
        room_wh = self.max_w * (self.deadline_h - self.default_start_h)
        if not 0 <= self.daily_energy_wh <= room_wh:
            raise ValueError(f"{self.id}: daily_energy_wh {self.daily_energy_wh:g} must be in "
                             f"[0, {room_wh:g}] (max_w x the hours from default_start_h "
                             "to deadline_h)")


@dataclass(frozen=True, kw_only=True)
class MeterSpec:
    id: str
    endpoint: Endpoint


@dataclass(frozen=True, kw_only=True)
class WeatherPeriod:
    """From ``start_s`` (POSIX) on, a forced cloud regime (0 clear, 1 broken, 2 overcast;
    None: the seeded switching) and a mean wind speed (None: the spec's)."""

    start_s: float
    regime: int | None = None
    mean_wind_m_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class WeatherSpec:
    """Seeded weather: how cloudy, how windy, and periods that force either."""

    cloudiness: float = 0.3  # 0 clear every day .. 1 overcast most of the time
    mean_wind_m_s: float = 7.0
    weibull_k: float = 2.0
    periods: tuple[WeatherPeriod, ...] = ()  # in time order


@dataclass(frozen=True, kw_only=True)
class PlantSpec:
    latitude: float
    longitude: float
    altitude_m: float = 0.0
    timezone: str = "Asia/Shanghai"
    export_cap_w: float  # the cap the meter's side measures violations against [W]
    line_loss_ratio: float = 0.0  # share of the flow lost at a flow of export_cap_w
    meter: MeterSpec
    pv: tuple[PvSpec, ...] = ()
    wind: tuple[WindSpec, ...] = ()
    batteries: tuple[BatterySpec, ...] = ()
    loads: tuple[LoadSpec, ...] = ()
    flex_loads: tuple[FlexLoadSpec, ...] = ()
    weather: WeatherSpec = field(default_factory=WeatherSpec)

    def devices(self) -> list[PvSpec | WindSpec | BatterySpec | LoadSpec | FlexLoadSpec
                              | MeterSpec]:
        return [*self.pv, *self.wind, *self.batteries, *self.loads, *self.flex_loads,
                self.meter]
