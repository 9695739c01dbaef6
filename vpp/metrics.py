"""Prometheus metrics: base units in names, bounded labels (site, asset, kind), cached children."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info

from vpp.enforce import EnforceMode


class Metrics:
    """The controller's metric set, in its own registry (one per controller instance)."""

    def __init__(self, *, site: str, assets: list[tuple[str, str]], version: str) -> None:
        self.site = site
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.build = Info("vpp_build", "Controller build", registry=r)
        self.build.info({"version": version, "site": site})
        self._power = Gauge("vpp_asset_power_watts",
                            "Active power per asset, generator convention (+ into the county "
                            "network)", ["site", "asset", "kind"], registry=r)
        self._up = Gauge("vpp_device_up", "1 when the device answered its last poll",
                         ["site", "asset", "kind"], registry=r)
        self._soc = Gauge("vpp_battery_state_of_charge_ratio", "Battery state of charge",
                          ["site", "asset"], registry=r)
        self._limit = Gauge("vpp_generator_limit_watts", "Active-power limit in force",
                            ["site", "asset", "kind"], registry=r)
        self._setpoint = Gauge("vpp_battery_setpoint_watts", "Battery setpoint, + discharge",
                               ["site", "asset"], registry=r)
        self._available = Gauge("vpp_asset_available", "1 when the asset is in service for "
                                "dispatch (answering, trusted, not in fault)",
                                ["site", "asset", "kind"], registry=r)
        self._latency = Gauge("vpp_device_poll_latency_seconds",
                              "Wall time of the device's last fast poll", ["site", "asset", "kind"],
                              registry=r)
        self._gen_available = Gauge("vpp_generator_available_power_watts",
                                    "What the generator could give now, as it reports",
                                    ["site", "asset", "kind"], registry=r)
        self._curtailed = Counter("vpp_curtailed_energy_joules", "Energy a generator could have "
                                  "given and did not (reported available − output)",
                                  ["site", "asset", "kind"], registry=r)
        self._writes = Counter("vpp_setpoint_writes_total", "Setpoint writes by result",
                               ["site", "asset", "result"], registry=r)
        g = {"site": site}
        self.pcc_export = Gauge("vpp_pcc_export_watts", "Measured export at the PCC (+ to grid)",
                                ["site"], registry=r).labels(**g)
        self.export_cap = Gauge("vpp_export_cap_watts", "Export cap in force", ["site"],
                                registry=r).labels(**g)
        self.worst_export = Gauge("vpp_control_worst_export_watts",
                                  "Export if every generator rose to its limit", ["site"],
                                  registry=r).labels(**g)
        self.control_mode = Enum("vpp_control_mode", "Real-time enforcement mode", ["site"],
                                 states=[m.value for m in EnforceMode], registry=r).labels(**g)
        self.control_steps = Counter("vpp_control_steps_total", "Control steps run", ["site"],
                                     registry=r).labels(**g)
        self.control_lag = Gauge("vpp_control_loop_lag_seconds",
                                 "How late the last control step started (wall time)", ["site"],
                                 registry=r).labels(**g)
        self.solve_duration = Gauge("vpp_dispatch_solve_duration_seconds",
                                    "Wall time of the last dispatch solve", ["site"],
                                    registry=r).labels(**g)
        self._solves = Counter("vpp_dispatch_solves_total", "Dispatch solves by status",
                               ["site", "status"], registry=r)
        self.plan_source = Enum("vpp_dispatch_plan_source", "Which plan is in force: the "
                                "optimiser's, the last good one, the rule-based fallback, or "
                                "none (reactive planner)", ["site"],
                                states=["optimal", "last-good", "rule-based", "reactive"],
                                registry=r).labels(**g)
        self.fallbacks = Counter("vpp_dispatch_fallbacks_total",
                                 "Steps run on a fallback plan (last good plan or none)",
                                 ["site"], registry=r).labels(**g)
        self._issues = Counter("vpp_forecast_issues_total", "Forecasts issued",
                               ["site", "series"], registry=r)
        self._accuracy = Gauge("vpp_forecast_accuracy_ratio", "Daily accuracy of the issued "
                               "forecasts over the last day, as the grid grades them",
                               ["site", "series", "horizon"], registry=r)
        self.mqtt_buffer = Gauge("vpp_mqtt_buffer_messages", "Messages waiting for the broker",
                                 ["site"], registry=r).labels(**g)
        self.mqtt_dropped = Counter("vpp_mqtt_dropped_messages_total",
                                    "Messages dropped from a full buffer", ["site"],
                                    registry=r).labels(**g)
        self.loop_errors = Counter("vpp_loop_errors_total",
                                   "Unexpected errors in a controller loop (the loop goes on)",
                                   ["site", "loop"], registry=r)
        self.storage_errors = Counter("vpp_storage_errors_total", "Storage writes that failed",
                                      ["site"], registry=r).labels(**g)
        self.api_requests = Counter("vpp_api_requests_total", "HTTP API requests",
                                    ["site", "code"], registry=r)
        # cache the labelled children: a lookup costs several times a set()
        self.power = {a: self._power.labels(site, a, k) for a, k in assets}
        self.up = {a: self._up.labels(site, a, k) for a, k in assets}
        self.available = {a: self._available.labels(site, a, k) for a, k in assets}
        self.poll_latency = {a: self._latency.labels(site, a, k) for a, k in assets}
        gens = [(a, k) for a, k in assets if k in ("pv", "wind")]
        self.gen_available = {a: self._gen_available.labels(site, a, k) for a, k in gens}
        self.curtailed = {a: self._curtailed.labels(site, a, k) for a, k in gens}
        self.limit = {a: self._limit.labels(site, a, k) for a, k in assets if k in ("pv", "wind")}
        self.soc = {a: self._soc.labels(site, a) for a, k in assets if k == "battery"}
        self.setpoint = {a: self._setpoint.labels(site, a) for a, k in assets if k == "battery"}
        self.writes = {(a, res): self._writes.labels(site, a, res) for a, _ in assets
                       for res in ("ok", "failed", "clamped")}
        self.solves = {s: self._solves.labels(site, s) for s in
                       ("optimal", "optimal_inaccurate", "infeasible", "unbounded", "time_limit",
                        "error")}
        self.issues = {a: self._issues.labels(site, a) for a, k in assets
                       if k in ("pv", "wind", "load")}
        # made at the first graded point: a gauge at 0 before that would read as a failure
        self._series = {a for a, k in assets if k in ("pv", "wind")} | {"load"}
        self.accuracy: dict[tuple[str, str], Gauge] = {}

    def set_accuracy(self, series: str, horizon: str, value: float) -> None:
        if series not in self._series or horizon not in ("ultra-short", "short"):
            return  # bounded labels
        child = self.accuracy.get((series, horizon))
        if child is None:
            child = self.accuracy[(series, horizon)] = self._accuracy.labels(
                self.site, series, horizon)
        child.set(value)
