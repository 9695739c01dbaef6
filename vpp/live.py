"""The demo's live one-screen summary (rich), or a line per simulated hour when not a terminal."""

from __future__ import annotations

from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from vpp.demo import Demo


def _mw(w: float | None) -> str:
    return "—" if w is None else f"{w / 1e6:7.2f} MW"


def _bar(value: float, full: float, width: int = 30) -> str:
    n = 0 if full <= 0 else max(0, min(width, round(width * value / full)))
    return "█" * n + "·" * (width - n)


class LiveView:
    def __init__(self, demo: Demo, console: Console) -> None:
        self.demo = demo
        self.console = console
        self.tz = ZoneInfo(demo.config.site.timezone)
        self._live: Live | None = None
        self._last_hour: int | None = None

    def print_urls(self, token: str | None = None) -> None:
        d, c = self.demo, self.console
        svc = d.services
        assert svc is not None
        c.print(f"[bold]Demo county[/] {d.config.site.id}: simulated start "
                f"{d.start.astimezone(self.tz):%Y-%m-%d %H:%M %Z}, ×{d.options.speed:g}, "
                f"seed {d.seed}, control step {d.control_interval_s:g} s")
        c.print(f"  API      {svc.urls.api}   (also /api/v1/assets, /forecasts, /schedule)")
        c.print(f"  metrics  {svc.urls.metrics}")
        if token is not None:
            assert svc.api is not None
            c.print(f"  console  {svc.api.url}/console/#token={token}")
            c.print(f"  token    {token}   (role operator, this run only: "
                    "Authorization: Bearer …)")
        c.print(f"  MQTT     {svc.urls.mqtt}")
        c.print(f"  storage  {svc.urls.database}")
        c.print("  Modbus   " + ", ".join(f"{a} {u}" for a, u in d.modbus_urls.items()))

    def _render(self) -> Group:
        d = self.demo
        ctrl, plant = d.controller, d.sim.plant
        cap = d.config.pcc.export_cap_w
        st = ctrl.state
        now = d.clock.now().astimezone(self.tz)
        cmd = st.command
        head = Text.assemble(
            (f"{now:%Y-%m-%d %H:%M:%S %Z}", "bold"), f"   ×{d.options.speed:g}   ",
            ("mode ", ""), (cmd.mode.value if cmd else "starting", "bold cyan"))
        t = Table.grid(padding=(0, 2))
        t.add_column(justify="right")
        t.add_column()
        t.add_column()
        meter_w = plant.export_w
        t.add_row("PCC export (meter)", _mw(meter_w), _bar(meter_w, cap * 1.5))
        t.add_row("export cap", _mw(cap), _bar(cap, cap * 1.5))
        unctl = sum(plant.available_w.get(g.id, 0.0) for g in [*ctrl.pv, *ctrl.wind]) - sum(
            plant.available_w.get(ld.id, 0.0) for ld in ctrl.loads)
        t.add_row("uncontrolled export", _mw(unctl), _bar(unctl, cap * 1.5))
        for g in [*ctrl.pv, *ctrl.wind]:
            dev = ctrl.devices[g.id]
            out, avail = dev.value("active_power_w"), dev.value("available_power_w")
            lim = cmd.limits_w.get(g.id) if cmd else None
            curtail = "" if out is None or avail is None or avail - out < 1e4 else \
                f"curtailing {_mw(avail - out).strip()}"
            t.add_row(f"{g.id} ({g.kind})", _mw(out), f"limit {_mw(lim).strip()}  {curtail}")
        for b in ctrl.batteries:
            dev = ctrl.devices[b.id]
            soc = dev.value("soc")
            t.add_row(f"{b.id} (battery)", _mw(dev.value("active_power_w")),
                      f"SOC {_bar(soc or 0.0, 1.0, 20)} {0 if soc is None else soc:.0%}")
        sch = st.last_solve
        solver = "no plan yet" if sch is None else (
            f"{sch.status.value} by {sch.solver} in {sch.solve_time_s * 1000:.0f} ms")
        t.add_row("dispatch", solver, "")
        stats = plant.stats
        t.add_row("so far", f"{stats.cap_violation_s:.0f} s over cap",
                  f"max export {_mw(stats.max_export_w).strip()}, curtailed "
                  f"{stats.curtailed_wh / 1e6:.1f} MWh")
        return Group(Panel(Group(head, t), title="county VPP demo", expand=False))

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            return
        now = self.demo.clock.now().astimezone(self.tz)
        if self._last_hour != now.hour and self.demo.controller.state.control_steps:
            self._last_hour = now.hour
            st = self.demo.sim.plant.stats
            cmd = self.demo.controller.state.command
            self.console.print(
                f"{now:%Y-%m-%d %H:%M} export {_mw(self.demo.sim.plant.export_w).strip()} "
                f"cap {_mw(self.demo.config.pcc.export_cap_w).strip()} "
                f"mode {cmd.mode.value if cmd else '-'} violations {st.cap_violation_s:.0f} s "
                f"curtailed {st.curtailed_wh / 1e6:.1f} MWh", highlight=False)

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    @staticmethod
    def print_report(console: Console, rep: dict[str, Any]) -> None:
        cap = rep["export_cap_w"]
        ok = rep["cap_violation_s"] == 0 and rep["max_export_w"] <= cap * 1.01
        console.print(f"[bold]{'cap held' if ok else 'CAP VIOLATED'}[/]: "
                      f"{rep['sim_hours']:.2f} simulated h in {rep['wall_seconds']:.0f} s wall; "
                      f"max export {rep['max_export_w'] / 1e6:.2f} MW vs cap {cap / 1e6:.2f} MW "
                      f"(uncontrolled {rep['uncontrolled_max_export_w'] / 1e6:.2f} MW), "
                      f"{rep['cap_violation_s']:.0f} s over cap; curtailed "
                      f"{rep['curtailed_energy_wh'] / 1e6:.2f} MWh of "
                      f"{rep['renewable_available_wh'] / 1e6:.1f} MWh; battery throughput "
                      f"{rep['battery_throughput_wh'] / 1e6:.1f} MWh; energy balance error "
                      f"{rep['energy_balance_error_ratio']:.1e}", highlight=False)
