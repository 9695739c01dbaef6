"""The site configuration: one TOML file, parsed once into frozen pydantic models.

Every key carries its unit in its name. ``load_config`` raises :class:`ConfigError` with
every problem found, each starting with the field's path, then the bad value and what is
allowed. The keys are documented in ``docs/config.md``.

Secrets (the MQTT password, the database password) are given inline, or better as
``password_file`` (a file holding it, e.g. a systemd credential) or ``password_env`` (an
environment variable): read when the file is loaded, held as ``SecretStr``, and never shown
in a repr or a problem; a database URL is shown with its password masked
(:func:`mask_url`, :attr:`StorageSection.masked_url`).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.profile import Capability, ProfileError, load_profile

_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SUNSPEC = "sunspec"  # a profile discovered from the device's SunSpec model chain
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_SHARDS = 256  # poller shards a site may have
MAX_SECRET_BYTES = 4096  # a password file longer than this is not one (/dev/zero, a log)

# what the controller needs of each kind of asset, as capabilities of its profile
REQUIRED_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "pv": frozenset({Capability.READS_ACTIVE_POWER, Capability.SETS_ACTIVE_POWER_LIMIT}),
    "wind": frozenset({Capability.READS_ACTIVE_POWER, Capability.SETS_ACTIVE_POWER_LIMIT}),
    "battery": frozenset({Capability.READS_ACTIVE_POWER, Capability.HAS_SOC,
                          Capability.ACCEPTS_POWER_SETPOINT}),
    "load": frozenset({Capability.READS_ACTIVE_POWER}),
    "meter": frozenset({Capability.READS_EXPORT}),
}


class FieldError(ValueError):
    """A problem a check across fields found, and the field it is about: ``loc`` is the
    field's path below the model that raised it (``("soc_min",)``, ``("assets", 2,
    "port")``). A message starting with ``{field}`` has the field's full path put there
    (``dispatch.step_s (300) must equal …``); any other is shown after it."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        path = ".".join(map(str, loc))
        super().__init__(path + message.removeprefix("{field}") if message.startswith("{field}")
                         else f"{path}: {message}")
        self.loc = loc
        self.message = message


class _Frozen(BaseModel):
    # NaN and infinity are numbers to pydantic and TOML (nan, inf): never to a site
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def mask_url(url: str) -> str:
    """``url`` with its password (user info, or a ``password=`` query parameter) shown as
    ``***``, fit to print. Unparseable text is masked from the scheme to the last ``@``."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if colon:
            rest = f"{user}:***@{host}"
    return re.sub(r"(?i)([?&](?:password|passwd|pwd)=)[^&]*", r"\1***", scheme + sep + rest)


def _read_secret_file(path: str, field: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a path"
        raise FieldError((field,), f"cannot read {path!r}: {reason}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise FieldError((field,), f"{path!r} is longer than {MAX_SECRET_BYTES} bytes: not a "
                                   "password file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError((field,), f"{path!r} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")  # the newline editors add
    if not text:
        raise FieldError((field,), f"{path!r} is empty")
    return text


def _resolve_secret(data: Any, key: str) -> Any:
    """A secret given as ``key``, ``key_file`` or ``key_env`` (one of them): the file's or the
    variable's text put into ``key``. Raw input, before the fields are checked."""
    if not isinstance(data, dict):
        return data
    sources = (key, f"{key}_file", f"{key}_env")
    given = [k for k in sources if data.get(k) is not None]
    if len(given) > 1:
        raise FieldError((given[1],), f"give one of {', '.join(sources)}, not "
                                      f"{' and '.join(given)}")
    if not given or given[0] == key or not isinstance(data[given[0]], str):
        return data  # inline, absent, or a type error its field reports
    src, ref = given[0], data[given[0]]
    if src.endswith("_file"):
        return {**data, key: _read_secret_file(ref, src)}
    if not re.fullmatch(_ENV_NAME, ref):
        raise FieldError((src,), f"{ref!r} is not an environment variable name (letters, "
                                 "digits and _, not first a digit)")
    value = os.environ.get(ref)
    if not value:
        raise FieldError((src,), f"environment variable {ref!r} is "
                                 f"{'empty' if value == '' else 'not set'}")
    return {**data, key: value}


class SiteSection(_Frozen):
    id: str = Field(pattern=_ID, description="short name used in topics and metrics")
    name: str = ""
    timezone: str = "Asia/Shanghai"
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    altitude_m: float = Field(default=0.0, ge=-500, le=9000)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a folder
            raise ValueError("unknown IANA timezone (e.g. 'Asia/Shanghai')") from None
        return v


class PccSection(_Frozen):
    meter: str = Field(description="id of the meter asset at the point of common coupling")
    export_cap_w: float = Field(gt=0)
    import_limit_w: float = Field(gt=0)


class _AssetBase(_Frozen):
    id: str = Field(pattern=_ID)
    profile: str
    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=0, le=65535, description="0: let a simulator choose")
    unit_id: int = Field(default=1, ge=0, le=247)

    @field_validator("profile")
    @classmethod
    def _profile_exists(cls, v: str) -> str:
        if v == SUNSPEC:
            return v
        try:
            load_profile(v)
        except ProfileError as exc:
            raise ValueError(str(exc)) from exc
        return v


class PvAsset(_AssetBase):
    kind: Literal["pv"]
    rated_power_w: float = Field(gt=0, description="AC rating")
    ramp_rate_w_per_s: float | None = Field(
        default=None, gt=0, description="fastest change of output the plant allows")
    dc_power_w: float = Field(gt=0, description="DC nameplate at STC")
    tilt_deg: float = Field(default=30.0, ge=0, le=90)
    azimuth_deg: float = Field(default=180.0, ge=0, lt=360)


class WindAsset(_AssetBase):
    kind: Literal["wind"]
    rated_power_w: float = Field(gt=0)
    ramp_rate_w_per_s: float | None = Field(
        default=None, gt=0, description="fastest change of output the farm allows")
    cut_in_m_s: float = Field(default=3.0, gt=0)
    rated_speed_m_s: float = Field(default=12.0, gt=0)
    cut_out_m_s: float = Field(default=25.0, gt=0)

    @model_validator(mode="after")
    def _curve(self) -> Self:
        if not self.cut_in_m_s < self.rated_speed_m_s < self.cut_out_m_s:
            raise FieldError(
                ("rated_speed_m_s",),
                f"power curve needs cut_in_m_s < rated_speed_m_s < cut_out_m_s, got "
                f"{self.cut_in_m_s} / {self.rated_speed_m_s} / {self.cut_out_m_s}")
        return self


class BatteryAsset(_AssetBase):
    kind: Literal["battery"]
    capacity_wh: float = Field(gt=0)
    max_charge_w: float = Field(gt=0)
    max_discharge_w: float = Field(gt=0)
    soc_min: float = Field(default=0.05, ge=0, le=1)
    soc_max: float = Field(default=0.95, ge=0, le=1)
    charge_efficiency: float = Field(default=0.95, gt=0, le=1)
    discharge_efficiency: float = Field(default=0.95, gt=0, le=1)

    @model_validator(mode="after")
    def _soc(self) -> Self:
        if self.soc_min >= self.soc_max:
            raise FieldError(("soc_min",), f"{{field}} ({self.soc_min}) must be below soc_max "
                                           f"({self.soc_max})")
        return self


class FlexibleLoad(_Frozen):
    """A load that can be shifted within its day: it needs ``daily_energy_wh`` by local
    ``deadline_h``, drawing 0 or ``min_w``..``max_w``; left alone, its own timer runs it
    flat out from ``default_start_h``."""

    max_w: float = Field(gt=0)
    min_w: float = Field(default=0.0, ge=0)
    daily_energy_wh: float = Field(ge=0)
    deadline_h: float = Field(default=24.0, gt=0, le=24)
    default_start_h: float = Field(default=0.0, ge=0, lt=24)

    @model_validator(mode="after")
    def _feasible(self) -> Self:
        if self.min_w > self.max_w:
            raise FieldError(("min_w",), f"{{field}} ({self.min_w:g}) must not exceed max_w "
                                         f"({self.max_w:g})")
        if self.default_start_h >= self.deadline_h:
            raise FieldError(("default_start_h",), f"{{field}} ({self.default_start_h:g}) must "
                                                   f"come before deadline_h ({self.deadline_h:g})")
        room = self.max_w * (self.deadline_h - self.default_start_h)
        if self.daily_energy_wh > room:
            raise FieldError(("daily_energy_wh",), f"{{field}} {self.daily_energy_wh:g} cannot "
                             "be drawn between default_start_h and deadline_h at max_w (at most "
                             f"{room:g})")
        return self


class LoadAsset(_AssetBase):
    kind: Literal["load"]
    peak_w: float | None = Field(default=None, gt=0, description="typical peak demand")
    flexible: FlexibleLoad | None = Field(
        default=None, description="a shiftable load: its daily energy, power and deadline")

    @model_validator(mode="after")
    def _peak_or_flexible(self) -> Self:
        if (self.peak_w is None) == (self.flexible is None):
            raise FieldError(("peak_w",), "give peak_w (a county load following the daily "
                             "shape) or a [flexible] table (a shiftable load), not "
                             f"{'both' if self.peak_w else 'neither'}")
        return self


class MeterAsset(_AssetBase):
    kind: Literal["meter"]


Asset = Annotated[
    PvAsset | WindAsset | BatteryAsset | LoadAsset | MeterAsset, Field(discriminator="kind")
]
Generator = PvAsset | WindAsset


class ForecastingSection(_Frozen):
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    step_s: Literal[900] = 900  # the grid's 15-minute forecast step
    short_term_horizon_h: float = Field(default=72.0, ge=28, le=72)
    short_term_issue_time: str = Field(default="08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                                       description="site-local HH:MM")
    issue_interval_s: float = Field(default=900.0, gt=0, description="ultra-short re-issue")
    refit_interval_s: float = Field(default=6 * 3600.0, gt=0)
    calibration_days: float = Field(default=7.0, ge=1, le=60)
    weather_file: str | None = Field(default=None, description="NWP forecast CSV")
    history_days: int = Field(default=7, ge=2, le=365)

    @field_validator("quantiles")
    @classmethod
    def _q(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < q < 1 for q in v) or list(v) != sorted(set(v)):
            raise ValueError("quantiles must be strictly increasing, each in (0, 1)")
        if 0.5 not in v:
            raise ValueError("quantiles must include the median 0.5")
        return v


class GroupSection(_Frozen):
    """A feeder or transformer that limits the net power of the assets behind it."""

    id: str = Field(pattern=_ID)
    assets: tuple[str, ...] = Field(min_length=1)
    max_export_w: float = Field(gt=0, description="net power out of the group into the bus")
    max_import_w: float | None = Field(default=None, gt=0,
                                       description="net power into the group from the bus")


Solver = Literal["HIGHS", "CLARABEL", "ECOS", "SCS"]


class DispatchSection(_Frozen):
    horizon_h: float = Field(default=24.0, gt=0, le=72)
    step_s: int = Field(default=900, ge=60, le=3600)
    interval_s: float = Field(default=300.0, gt=0, description="re-solve period")
    planner: Literal["optimal", "reactive"] = Field(
        default="optimal",
        description="reactive: no plan, the real-time limiter alone (for comparison runs)")
    solver: Solver = "HIGHS"
    fallback_solvers: tuple[Solver, ...] = ("CLARABEL",)
    time_limit_s: float = Field(default=10.0, gt=0)
    late_s: float = Field(default=60.0, gt=0,
                          description="wall seconds a solve may take before a fallback plan")
    generation_quantile: float = Field(default=0.9, gt=0, lt=1)
    load_quantile: float = Field(default=0.1, gt=0, lt=1)
    curtailment_weight_per_wh: float = Field(default=1.0, gt=0)
    battery_wear_weight_per_wh: float = Field(default=0.06, ge=0)
    soc_target: float = Field(default=0.5, ge=0, le=1)
    soc_target_weight_per_wh: float = Field(default=0.1, ge=0)
    export_peak_weight_per_w: float = Field(default=0.01, ge=0)
    export_ramp_limit_ratio: float | None = Field(
        default=0.2, gt=0, le=1,
        description="expected export may change by this × pcc.export_cap_w per step")
    export_ramp_weight_per_wh: float = Field(default=0.4, ge=0)
    tracking_weight_per_wh: float = Field(default=0.05, ge=0)
    import_weight_per_wh: float = Field(default=0.2, ge=0, description=(
        "price of the expected import: serve the county's load from its stores first"))
    high_case_curtailment_ratio: float = Field(default=0.25, ge=0, le=1, description=(
        "price of the curtailment were generation to come at its high quantile, as a share "
        "of the curtailment weight"))
    aggregate: bool = Field(default=True, description=(
        "plan over classes of assets the model cannot tell apart (vpp.aggregate)"))
    aggregate_soc_tolerance: float = Field(default=0.005, gt=0, le=0.1)
    groups: tuple[GroupSection, ...] = ()

    @model_validator(mode="after")
    def _smoothing_never_wastes(self) -> Self:
        # curtailing one step's expected output can ease the ramp into it and out of it
        # and its tracking error: that must cost more than it saves
        gain = 2 * self.export_ramp_weight_per_wh + self.tracking_weight_per_wh
        if gain >= self.curtailment_weight_per_wh:
            raise FieldError(("export_ramp_weight_per_wh",),
                f"2 × export_ramp_weight_per_wh + tracking_weight_per_wh = {gain:g} must be "
                f"below curtailment_weight_per_wh ({self.curtailment_weight_per_wh:g}), or "
                "plans would curtail energy to smooth the feed-in")
        return self


class ControlSection(_Frozen):
    interval_s: float = Field(default=1.0, gt=0, le=60)
    margin_ratio: float = Field(default=0.03, ge=0, lt=0.5,
                                description="enforce export ≤ cap × (1 − margin)")
    pcc_stale_s: float = Field(default=5.0, gt=0)
    asset_lost_after_s: float = Field(default=10.0, ge=0, description=(
        "an asset out of control this long is planned without (the real-time loop holds "
        "it at once); a missed poll or two does not re-plan"))
    setpoint_deadband_ratio: float = Field(default=0.002, ge=0, lt=0.1)
    soc_taper_s: float = Field(default=600.0, gt=0)
    limit_revert_s: float = Field(
        default=300.0, ge=10, le=65535,
        description="SunSpec reversion timer written with every limit; refreshed at a third")
    pv_potential_margin_ratio: float = Field(
        default=1.3, ge=1.0, le=3.0,
        description="PV may rise to clear-sky power × this (cold cells, cloud-edge brightening)")


class PollingSection(_Frozen):
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    backoff_max_s: float = Field(
        default=5.0, gt=0, le=300,
        description="longest wait before reconnecting to a device, in the clock's seconds")
    slow_interval_s: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    sample_queue_size: int = Field(default=100_000, ge=100)
    shards: int = Field(default=0, ge=0, le=MAX_SHARDS, description=(
        "0: the controller polls every device itself; n: `vpp poll --shard i/n` processes "
        "poll them and exchange telemetry and setpoints with it over MQTT"))


class MqttSection(_Frozen):
    enabled: bool = True
    embedded: bool = Field(default=True, description="start an in-process broker")
    host: str = "127.0.0.1"
    port: int = Field(default=1884, ge=0, le=65535)
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="inline; better as a file")
    password_file: str | None = Field(
        default=None, description="file holding the password (a systemd credential)")
    password_env: str | None = Field(
        default=None, pattern=_ENV_NAME, description="environment variable holding it")
    tls: bool = False
    tls_ca_file: str | None = Field(
        default=None, description="CA bundle to trust; none: the system's")
    tls_cert_file: str | None = Field(default=None, description="client certificate (PEM)")
    tls_key_file: str | None = Field(
        default=None, description="its private key (PEM); none: in tls_cert_file")
    tls_insecure: bool = Field(
        default=False, description="no hostname check (the certificate is still verified "
        "against the CA); for tests only")
    client_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="stable client id: a persistent session for commands; none: random")
    topic_prefix: str = Field(default="vpp", pattern=r"^[A-Za-z0-9_/-]+$")
    telemetry_interval_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _password(cls, data: Any) -> Any:
        return _resolve_secret(data, "password")

    @model_validator(mode="after")
    def _tls_settings(self) -> Self:
        if not self.tls:
            given = [f for f in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_insecure")
                     if getattr(self, f)]
            if given:
                raise FieldError((given[0],), f"{', '.join(given)} given but tls is false; set "
                                              "tls = true")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise FieldError(("tls_key_file",), "tls_key_file needs tls_cert_file (the client "
                                                "certificate)")
        return self


class StorageSection(_Frozen):
    """Where the controller keeps its data. Connect with :meth:`connect_url` (the password
    put in); print :attr:`masked_url` (never ``url`` itself: it may hold a password)."""

    url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    password: SecretStr | None = Field(default=None, description="the database password")
    password_file: str | None = Field(
        default=None, description="file holding the database password (a systemd credential)")
    password_env: str | None = Field(
        default=None, pattern=_ENV_NAME, description="environment variable holding it")
    data_dir: str | None = None
    telemetry_interval_s: float = Field(default=60.0, gt=0)
    keep_raw_days: float = Field(default=14.0, gt=0, description="raw telemetry kept [days]")
    keep_1min_days: float = Field(default=180.0, gt=0,
                                  description="1-minute telemetry means kept [days]")
    keep_15min_days: float = Field(default=3650.0, gt=0,
                                   description="15-minute telemetry means kept [days]")

    @model_validator(mode="after")
    def _coarser_kept_longer(self) -> Self:
        if not self.keep_raw_days <= self.keep_1min_days <= self.keep_15min_days:
            raise FieldError(("keep_1min_days",), "each coarser resolution must be kept at "
                             f"least as long: keep_raw_days {self.keep_raw_days:g} <= "
                             f"keep_1min_days {self.keep_1min_days:g} <= keep_15min_days "
                             f"{self.keep_15min_days:g} does not hold")
        return self

    @property
    def keep_days(self) -> dict[str, float]:
        """How long each resolution is kept [days], as :class:`vpp.storage.Storage` takes it."""
        return {"raw": self.keep_raw_days, "1min": self.keep_1min_days,
                "15min": self.keep_15min_days}

    @model_validator(mode="before")
    @classmethod
    def _password(cls, data: Any) -> Any:
        return _resolve_secret(data, "password")

    @model_validator(mode="after")
    def _password_needs_a_database(self) -> Self:
        if self.password is None:
            return self
        given = ("password_file" if self.password_file is not None else
                 "password_env" if self.password_env is not None else "password")
        if self.url is None:
            raise FieldError((given,), f"{given} needs url (a PostgreSQL URL); SQLite in "
                                       "data_dir takes no password")
        from sqlalchemy.engine import make_url
        url = make_url(self.url)
        if url.get_backend_name() != "postgresql":
            raise FieldError((given,), f"{given} is for PostgreSQL; a "
                                       f"{url.get_backend_name()} URL takes no password")
        if url.password is not None:
            raise FieldError(("url",), f"the URL holds a password and {given} gives one: give "
                                       f"it once (best as password_file)")
        return self

    @property
    def masked_url(self) -> str | None:
        """``url`` with any password shown as ``***``: what to print or log."""
        return None if self.url is None else mask_url(self.url)

    def connect_url(self) -> str | None:
        """The URL to connect with: ``url`` with ``password`` (however it was given) put in.
        Hand it to the database only; never print it."""
        if self.url is None or self.password is None:
            return self.url
        from sqlalchemy.engine import make_url
        return make_url(self.url).set(password=self.password.get_secret_value()
                                      ).render_as_string(hide_password=False)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "url" and isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
        try:
            url = make_url(v)
        except (ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
            raise ValueError("not a database URL; e.g. 'postgresql+psycopg://user@host:5432/vpp' "
                             "or 'sqlite:////var/lib/vpp/vpp.sqlite'") from exc
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"backend {url.get_backend_name()!r} is not supported; use "
                             "sqlite or postgresql")
        return v


class ApiSection(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class MetricsSection(_Frozen):
    enabled: bool = True


class SimSection(_Frozen):
    """How a simulated plant behaves (used by ``vpp demo`` and ``vpp sim serve``)."""

    seed: int = 1
    start: str | None = Field(default=None, description="ISO 8601 start; default: now")
    cloudiness: float = Field(default=0.25, ge=0, le=1)
    mean_wind_m_s: float = Field(default=7.0, gt=0, le=30)
    initial_soc: float = Field(default=0.5, ge=0, le=1)
    history_days: int = Field(default=7, ge=0, le=60)
    line_loss_ratio: float = Field(
        default=0.0, ge=0, le=0.1,
        description="share of the PCC flow lost in the county's lines at the export cap "
                    "(losses grow with the square of the flow)")

    @field_validator("start")
    @classmethod
    def _start(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            t = datetime.fromisoformat(v)
        except ValueError as exc:
            raise ValueError("not an ISO 8601 time, e.g. '2026-04-15T00:00:00+08:00'") from exc
        if t.tzinfo is None:
            raise ValueError("give the UTC offset, e.g. '2026-04-15T00:00:00+08:00'")
        return v


class SiteConfig(_Frozen):
    site: SiteSection
    pcc: PccSection
    assets: tuple[Asset, ...]
    forecasting: ForecastingSection = ForecastingSection()
    dispatch: DispatchSection = DispatchSection()
    control: ControlSection = ControlSection()
    polling: PollingSection = PollingSection()
    mqtt: MqttSection = MqttSection()
    storage: StorageSection = StorageSection()
    api: ApiSection = ApiSection()
    metrics: MetricsSection = MetricsSection()
    sim: SimSection = SimSection()

    @model_validator(mode="after")
    def _cross(self) -> Self:
        ids = [a.id for a in self.assets]
        for i, a in enumerate(self.assets):
            if a.id in ids[:i]:
                raise FieldError(("assets", i, "id"), f"asset ids must be unique; {a.id!r} is "
                                                      f"also assets[{ids.index(a.id)}]'s")
        by_id = {a.id: a for a in self.assets}
        meter = by_id.get(self.pcc.meter)
        if meter is None or meter.kind != "meter":
            meters = [a.id for a in self.assets if a.kind == "meter"]
            raise FieldError(("pcc", "meter"), f"{{field}} = {self.pcc.meter!r} must name an "
                                               f"asset of kind 'meter'; meters configured: "
                                               f"{meters}")
        seen: dict[tuple[str, int, int], str] = {}
        for i, a in enumerate(self.assets):
            key = (a.host, a.port, a.unit_id)
            if a.port != 0 and key in seen:
                raise FieldError(("assets", i, "port"), f"assets {seen[key]} and {a.id} share "
                                                        f"{a.host}:{a.port} unit {a.unit_id}")
            seen[key] = a.id
            if a.profile == SUNSPEC:
                if a.kind not in ("pv", "battery"):
                    raise FieldError(("assets", i, "profile"), f"asset {a.id}: profile 'sunspec' "
                                     f"is supported for pv and battery assets so far, not "
                                     f"{a.kind}")
                continue
            prof = load_profile(a.profile)
            if prof.kind != a.kind:
                raise FieldError(("assets", i, "profile"), f"asset {a.id} is a {a.kind} but "
                                 f"profile {a.profile} is for a {prof.kind}")
            need, what = REQUIRED_CAPABILITIES[a.kind], str(a.kind)
            if isinstance(a, LoadAsset) and a.flexible is not None:
                need, what = need | {Capability.ACCEPTS_POWER_SETPOINT}, "flexible load"
            lacking = need - prof.capabilities
            if lacking:
                raise FieldError(("assets", i, "profile"), f"profile {a.profile} of asset "
                                 f"{a.id} lacks what a {what} needs: "
                                 f"{sorted(c.value for c in lacking)}")
        self._check_shards()
        endpoints = {(a.host, a.port) for a in self.assets}
        if len(endpoints) > self.polling.max_connections:
            raise FieldError(("polling", "max_connections"), f"{{field}} is "
                             f"{self.polling.max_connections}, but {len(endpoints)} host:port "
                             "endpoints need as many connections")
        fc, d = self.forecasting, self.dispatch
        if d.step_s != fc.step_s:
            raise FieldError(("dispatch", "step_s"), f"{{field}} ({d.step_s}) must equal "
                             f"forecasting.step_s ({fc.step_s}): the plan steps on the "
                             "forecast's grid")
        # the short-term forecast is up to a day old when the plan uses it
        if d.horizon_h > fc.short_term_horizon_h - 24:
            raise FieldError(("dispatch", "horizon_h"), f"{{field}} ({d.horizon_h}) must not "
                             f"exceed forecasting.short_term_horizon_h - 24 "
                             f"({fc.short_term_horizon_h - 24:g}): the short-term forecast "
                             "is issued once a day")
        if not d.load_quantile < 0.5 < d.generation_quantile:
            field = "load_quantile" if d.load_quantile >= 0.5 else "generation_quantile"
            raise FieldError(("dispatch", field), f"the cap needs a high generation and a low "
                             f"load quantile: dispatch.load_quantile ({d.load_quantile}) < 0.5 "
                             f"< dispatch.generation_quantile ({d.generation_quantile})")
        needed = {d.generation_quantile, 1 - d.generation_quantile, d.load_quantile,
                  1 - d.load_quantile}
        missing = sorted(q for q in needed if not any(abs(q - x) < 1e-9 for x in fc.quantiles))
        if missing:
            raise FieldError(("forecasting", "quantiles"), f"{{field}} {list(fc.quantiles)} must "
                             f"include {[round(q, 6) for q in missing]}, which dispatch uses")
        self._check_groups(by_id)
        return self

    def _check_shards(self) -> None:
        if not self.polling.shards:
            return
        if not self.mqtt.enabled:
            raise FieldError(("polling", "shards"), f"{{field}} = {self.polling.shards} needs "
                             "MQTT (the shards' telemetry and setpoints go through the broker); "
                             "set mqtt.enabled = true, or shards = 0 to poll here")
        if self.mqtt.embedded:
            raise FieldError(("mqtt", "embedded"), f"{{field}} is true, but polling.shards = "
                             f"{self.polling.shards} needs a broker the shards reach: set "
                             "mqtt.embedded = false and mqtt.host/port to Mosquitto's (or an "
                             "MQTT cluster's)")
        for i, a in enumerate(self.assets):
            if a.profile == SUNSPEC:
                raise FieldError(("assets", i, "profile"), f"asset {a.id}: profile 'sunspec' "
                                 "is not supported with polling.shards > 0 (its models are "
                                 "discovered by the controller); give a profile file, or set "
                                 "polling.shards = 0")

    def _check_groups(self, by_id: dict[str, Asset]) -> None:
        seen: set[str] = set()
        for i, g in enumerate(self.dispatch.groups):
            if g.id in seen:
                raise FieldError(("dispatch", "groups", i, "id"), f"{g.id!r} is repeated")
            seen.add(g.id)
            for a in g.assets:
                asset = by_id.get(a)
                ok = asset is not None and (asset.kind in ("pv", "wind", "battery") or (
                    isinstance(asset, LoadAsset) and asset.flexible is not None))
                if not ok:
                    raise FieldError(("dispatch", "groups", i, "assets"), f"asset {a!r} must be "
                                     "a pv, wind, battery or flexible load asset; those "
                                     "configured: "
                                     f"{sorted(k for k, v in by_id.items() if v.kind != 'meter')}")

    def asset(self, asset_id: str) -> Asset:
        for a in self.assets:
            if a.id == asset_id:
                return a
        raise KeyError(asset_id)

    def of_kind(self, kind: str) -> list[Any]:
        return [a for a in self.assets if a.kind == kind]

    def flexible_loads(self) -> list[LoadAsset]:
        return [a for a in self.of_kind("load") if a.flexible is not None]

    def base_loads(self) -> list[LoadAsset]:
        """The loads the county load forecast is made of (flexible loads are planned)."""
        return [a for a in self.of_kind("load") if a.flexible is None]


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists each one, and ``fields`` the
    path of the field each one is about (each problem starts with it; ``""`` for a file that
    cannot be read or is not TOML)."""

    def __init__(self, source: str, problems: list[str],
                 fields: list[str] | None = None) -> None:
        self.source = source
        self.problems = problems
        self.fields = fields if fields is not None else [""] * len(problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(
            f"  - {p}" for p in problems))


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAGS = frozenset({"pv", "wind", "battery", "load", "meter"})


def _loc(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """A field's path as the file spells it: ``assets[2] (bess1).soc_max``."""
    parts: list[str] = []
    node: Any = data
    for i, item in enumerate(loc):
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                asset_id = node[item].get("id")
                if isinstance(asset_id, str) and re.fullmatch(_ID, asset_id):
                    label = f"[{item}] ({asset_id})"
            parts.append(label)
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        # discriminated unions put the tag in the path: assets[0].battery.soc_max
        if i > 0 and isinstance(loc[i - 1], int) and item in _TAGS:
            continue
        key = str(item)  # a key that is not a name is quoted: one line, one meaning
        parts.append(("." if parts else "") + key if _KEY.match(key) else f"[{json.dumps(key)}]")
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _shown(loc: tuple[Any, ...], value: Any) -> str:
    """The bad value as a problem shows it: secrets never, a URL with its password masked."""
    key = loc[-1] if loc else None
    if key == "password":
        return "(hidden)"
    if isinstance(value, dict | list):
        return "…"
    if key == "url" and isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


def _problem(err: Any, data: dict[str, Any]) -> tuple[str, str]:
    """(the field's path, the problem: the path first, then what is wrong)."""
    loc = tuple(err["loc"])
    exc = (err.get("ctx") or {}).get("error")
    if isinstance(exc, FieldError):  # a check across fields says which field it is about
        where = _loc((*loc, *exc.loc), data)
        msg = exc.message
        return where, (where + msg.removeprefix("{field}") if msg.startswith("{field}")
                       else f"{where}: {msg}")
    where = _loc(loc, data)
    kind = err["type"]
    if kind == "missing":
        return where, f"{where}: required key is missing"
    if kind == "extra_forbidden":  # its value is not shown: a misspelt password key
        return where, f"{where}: unknown key; see docs/config.md for the keys allowed"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        where = f"{where}.kind"
        if kind == "union_tag_not_found":
            return where, f"{where}: required key is missing (pv, wind, battery, load or meter)"
        return where, (f"{where}: {err['ctx'].get('tag')!r} is not a kind; allowed: pv, wind, "
                       "battery, load, meter")
    msg = str(err["msg"]).removeprefix("Value error, ")
    return where, f"{where}: {_shown(loc, err.get('input'))} is not allowed: {msg}"


def parse_config(data: dict[str, Any], source: str = "<config>") -> SiteConfig:
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        found = [_problem(e, data) for e in exc.errors()]
        raise ConfigError(source, [p for _, p in found], [f for f, _ in found]) from None


def load_config(path: str | Path) -> SiteConfig:
    """Read and validate a site configuration file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [f"not valid TOML: {exc}"]) from None
    return parse_config(data, str(p))
