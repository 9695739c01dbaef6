"""The ``vpp`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from vpp.config import ConfigError, LoadAsset, SiteConfig, load_config

app = typer.Typer(help="County VPP controller: peak-free feed-in under an export cap.",
                  no_args_is_help=True, add_completion=False)
sim_app = typer.Typer(help="The simulated plant (hardware-in-the-loop).", no_args_is_help=True)
app.add_typer(sim_app, name="sim")
forecast_app = typer.Typer(help="Forecast backtests and data.", no_args_is_help=True)
app.add_typer(forecast_app, name="forecast")
token_app = typer.Typer(help="API tokens (stored hashed in the controller's database).",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")
console = Console()
err = Console(stderr=True)
CONTROL_PORT = 8091  # vpp sim serve's fault control


def _load(path: Path) -> SiteConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[bold red]{exc.source}: {len(exc.problems)} problem(s)[/]")
        for p in exc.problems:
            err.print(f"  - {p}", markup=False, highlight=False)
        raise typer.Exit(1) from None


def default_demo_config() -> Path:
    """The demo county shipped with the package."""
    repo = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "demo-county.toml"
    if repo.exists():
        return repo
    return Path(str(resources.files("vpp") / "examples" / "demo-county.toml"))


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run(coro: Any) -> Any:
    """Run a coroutine; SIGINT/SIGTERM cancel it gracefully (its cleanup still runs)."""
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        return await coro
    try:
        try:
            import uvloop  # the optional 'fast' extra: a faster event loop
        except ImportError:
            return asyncio.run(main())
        return uvloop.run(main())
    except asyncio.CancelledError:
        return None


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="site configuration (TOML)")]) -> None:
    """Validate a site configuration: print "ok" and a summary, or every problem (exit 1)."""
    cfg = _load(file)
    from rich.table import Table
    console.print(f"[bold green]ok[/] {file}: site [bold]{cfg.site.id}[/] "
                  f"({cfg.site.name or 'unnamed'}), {cfg.site.timezone}, "
                  f"{cfg.site.latitude:.3f}°, {cfg.site.longitude:.3f}°")
    console.print(f"PCC meter {cfg.pcc.meter}: export cap {cfg.pcc.export_cap_w / 1e6:.2f} MW, "
                  f"import limit {cfg.pcc.import_limit_w / 1e6:.2f} MW")
    t = Table("asset", "kind", "profile", "endpoint", "rating")
    for a in cfg.assets:
        rating = ""
        if a.kind in ("pv", "wind"):
            rating = f"{a.rated_power_w / 1e6:.1f} MW"  # type: ignore[union-attr]
        elif a.kind == "battery":
            rating = (f"{a.capacity_wh / 1e6:.1f} MWh, {a.max_charge_w / 1e6:.1f}/"  # type: ignore[union-attr]
                      f"{a.max_discharge_w / 1e6:.1f} MW")  # type: ignore[union-attr]
        elif isinstance(a, LoadAsset) and a.flexible is not None:
            f = a.flexible
            rating = (f"flexible, {f.daily_energy_wh / 1e6:.1f} MWh/day by {f.deadline_h:g} h, "
                      f"<= {f.max_w / 1e6:.1f} MW")
        elif isinstance(a, LoadAsset) and a.peak_w is not None:
            rating = f"peak {a.peak_w / 1e6:.1f} MW"
        t.add_row(a.id, a.kind, a.profile, f"{a.host}:{a.port}/{a.unit_id}", rating)
    console.print(t)
    d, c = cfg.dispatch, cfg.control
    console.print(f"dispatch: {d.horizon_h:g} h at {d.step_s} s, every {d.interval_s:g} s, "
                  f"{d.solver} → {', '.join(d.fallback_solvers) or 'no fallback'}; "
                  f"cap held on P{round(d.generation_quantile * 100)} generation")
    console.print(f"control: every {c.interval_s:g} s, margin {c.margin_ratio:.1%}; "
                  f"MQTT {'embedded' if cfg.mqtt.embedded else cfg.mqtt.host}:{cfg.mqtt.port}; "
                  f"API {cfg.api.host}:{cfg.api.port}; storage "
                  f"{cfg.storage.masked_url or 'SQLite (data dir)'}")


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="site configuration; "
                                                "default: the demo county")] = None,
    hours: Annotated[float | None, typer.Option(help="simulated hours, then exit "
                                                "(default: until Ctrl-C)")] = None,
    speed: Annotated[float, typer.Option(help="time acceleration (1 = real time)")] = 60.0,
    seed: Annotated[int | None, typer.Option(help="weather seed (default: the config's)")] = None,
    report: Annotated[Path | None, typer.Option(help="write the run report (JSON) here")] = None,
    control_interval: Annotated[float | None, typer.Option(
        help="control step [simulated s]; default: what the speed allows")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a simulated county and the controller in one process, with a live summary."""
    _logging(verbose)
    from vpp.demo import Demo, DemoOptions, write_report
    from vpp.live import LiveView
    cfg = _load(config or default_demo_config())
    if not 0 < speed <= 10_000:
        err.print(f"--speed {speed} is not allowed: use a value in (0, 10000]")
        raise typer.Exit(2)
    if hours is not None and hours <= 0:
        err.print(f"--hours {hours} is not allowed: use a positive number of hours")
        raise typer.Exit(2)
    d = Demo(cfg, DemoOptions(hours=hours, speed=speed, seed=seed,
                              control_interval_s=control_interval))

    async def go() -> None:
        async with d:
            view = LiveView(d, console)
            assert d.services is not None
            token = await d.services.issue_token("operator", f"demo-{int(time.time())}")
            view.print_urls(token)
            try:
                with view:
                    await d.wait(on_tick=view.update)
            finally:
                d.stop()
    _run(go())
    rep = d.report()
    LiveView.print_report(console, rep)
    if report is not None:
        write_report(rep, report)
        console.print(f"report written to {report}")


@app.command("fault-matrix")
def fault_matrix(
    rows: Annotated[str | None, typer.Option(
        help="comma-separated row names (default: every row)")] = None,
    speed: Annotated[float, typer.Option(help="time acceleration")] = 200.0,
    out: Annotated[Path | None, typer.Option(
        help="write the table and notes (Markdown) here, e.g. docs/reliability.md")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Do each fault of the matrix to a running demo county and measure it: violation
    seconds on the meter, data lost, recovery time. Exit 1 if a row fails its goal that is
    not a known finding, or a known one now meets it."""
    _logging(verbose)
    if not verbose:  # the faults' own warnings (failed writes, reconnects) would drown it
        logging.getLogger().setLevel(logging.ERROR)
    from vpp import faultmatrix as fm
    if not 0 < speed <= 10_000:
        err.print(f"--speed {speed} is not allowed: use a value in (0, 10000]")
        raise typer.Exit(2)
    try:
        chosen = [fm.row_named(n.strip()) for n in rows.split(",") if n.strip()] if rows \
            else list(fm.ROWS)
    except KeyError as exc:
        err.print(str(exc.args[0]), highlight=False)
        raise typer.Exit(2) from None
    cfg = _load(default_demo_config())
    t0 = time.monotonic()

    def show(r: Any) -> None:
        console.print(f"{r.row:>24}  {r.goal}  ({r.wall_s:.0f} s wall)", highlight=False,
                      soft_wrap=True)

    async def go() -> int:
        results = await fm.run_matrix(chosen, cfg, speed=speed, on_result=show)
        for line in fm.table_lines(results):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print(f"{len(results)} row(s) in {time.monotonic() - t0:.0f} s wall")
        if out is not None:
            command = "vpp fault-matrix" + (f" --rows {rows}" if rows else "") + \
                (f" --speed {speed:g}" if speed != fm.SPEED else "") + f" --out {out}"
            fm.write_doc(results, out, speed=speed, command=command, config=cfg)
            console.print(f"written to {out}")
        failing = [res.row for res in results if not res.meets]
        new = [r.name for r, res in zip(chosen, results, strict=True)
               if (not res.meets and r.implemented and not r.known)
               or (res.meets and r.known and not r.intermittent)]
        console.print(f"{len(failing)} row(s) fail their goal: {', '.join(failing) or 'none'}; "
                      f"not as known: {', '.join(new) or 'none'}", highlight=False,
                      soft_wrap=True)
        code = 1 if new else 0
        if any(res.abandoned for res in results):  # its task would hold the exit forever
            err.print("a row was given up with its task still running: exiting at once")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 1)
        return code
    code = _run(go())
    if code is None:
        raise typer.Exit(130)
    if code:
        raise typer.Exit(code)


SiteFile = Annotated[Path, typer.Option("--config", "-c", help="site configuration (TOML)")]
SimClockFile = Annotated[Path | None, typer.Option(
    help="follow a simulator's clock (the file `vpp sim serve --clock-file` writes)")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


@app.command()
def run(
    config: SiteFile,
    sim_clock: SimClockFile = None,
    verbose: Verbose = False,
) -> None:
    """Run the controller against the devices of a site configuration: in real time, or on
    a simulator's clock."""
    _logging(verbose)
    cfg = _load(config)
    clock = None if sim_clock is None else _sim_clock(sim_clock)
    from vpp.service import PortTakenError, serve
    try:
        _run(serve(cfg, console, clock=clock, config_path=config))
    except PortTakenError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from None


def _sim_clock(path: Path) -> Any:
    """The simulator's clock from its ``--clock-file`` (exit 1 with the reason)."""
    from sim import SimClock
    try:
        return SimClock.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        err.print(f"--sim-clock {path}: {exc}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def poll(
    shard: Annotated[str, typer.Option(help="which shard this is: i/n, shard i (from 0) of n "
                                       "(n = the site's polling.shards)")],
    config: SiteFile,
    sim_clock: SimClockFile = None,
    verbose: Verbose = False,
) -> None:
    """Poll one shard of a site's devices and exchange telemetry and setpoints with its
    controller over MQTT (docs/deploy.md: pollers as shards on other hosts)."""
    _logging(verbose)
    cfg = _load(config)
    from vpp.devices import ShardSpecError, parse_shard
    try:
        i, n = parse_shard(shard, configured=cfg.polling.shards)
    except ShardSpecError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None
    from sim.clock import WallClock
    clock = WallClock() if sim_clock is None else _sim_clock(sim_clock)
    from vpp.shard import ShardPoller
    poller = ShardPoller(cfg, shard=i, shards=n, clock=clock)
    mq = cfg.mqtt
    console.print(f"shard {i}/{n} of site [bold]{cfg.site.id}[/]: {len(poller.assets)} assets "
                  f"on {len(poller.connections)} endpoints; MQTT {mq.host}:{mq.port}, topics "
                  f"{poller.topics.base}/#", soft_wrap=True)
    sys.stdout.flush()
    _run(poller.run())


def _token_storage(config: Path | None) -> Any:
    """The database ``vpp run -c config`` uses (its storage section, else the default data
    directory)."""
    from vpp.service import default_data_dir
    from vpp.storage import Storage
    cfg = _load(config) if config is not None else None
    url = cfg.storage.connect_url() if cfg is not None else None
    if url is None:
        d = (Path(cfg.storage.data_dir) if cfg is not None and cfg.storage.data_dir
             else default_data_dir())
        d.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{d / 'vpp.sqlite'}"
    return Storage(url)


ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", help="the site configuration whose database holds the tokens "
    "(default: the default data directory's)")]


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="viewer, grid, operator or admin")],
    name: Annotated[str, typer.Option(help="who holds it (unique), e.g. grid-dispatch")],
    config: ConfigOption = None,
) -> None:
    """Create a token and print it once: only its SHA-256 is kept."""
    from vpp.auth import Tokens
    st = _token_storage(config)
    try:
        token = Tokens(st).create(name, role, datetime.now(UTC))
    except ValueError as exc:
        err.print(f"[bold red]token create:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    finally:
        st.close()
    err.print(f"token for [bold]{name}[/] (role {role}); it is shown only now:")
    print(token)


@token_app.command("list")
def token_list(config: ConfigOption = None) -> None:
    """Tokens by name, role and dates (never the secrets)."""
    from rich.table import Table
    st = _token_storage(config)
    try:
        rows = st.list_tokens()
    finally:
        st.close()
    t = Table("name", "role", "created", "revoked")
    for r in rows:
        t.add_row(r["name"], r["role"], f"{r['created_at']:%Y-%m-%d %H:%M}Z",
                  "" if r["revoked_at"] is None else f"{r['revoked_at']:%Y-%m-%d %H:%M}Z")
    console.print(t)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="the token's name")],
                 config: ConfigOption = None) -> None:
    """Revoke a token (a running controller refuses it within 5 s)."""
    from vpp.auth import Tokens
    st = _token_storage(config)
    try:
        done = Tokens(st).revoke(name, datetime.now(UTC))
    finally:
        st.close()
    if not done:
        err.print(f"no live token named {name!r}", highlight=False)
        raise typer.Exit(1)
    console.print(f"token {name} revoked")


@app.command()
def probe(
    url: Annotated[str, typer.Argument(help="modbus://host[:port][/unit], e.g. "
                                       "modbus://127.0.0.1:5020/1")],
    profile: Annotated[str, typer.Option(help="a shipped profile, a profile .yaml, or "
                                         "'sunspec' to discover the device's models")],
    timeout: Annotated[float, typer.Option(help="per request [s]")] = 2.0,
) -> None:
    """Read a device once and print every decoded point with unit and quality."""
    _logging(False)
    from drivers import DeviceError, ProfileError
    from vpp.probe import probe as run_probe
    try:
        good = _run(run_probe(url, profile, console, timeout_s=timeout))
    except (ValueError, ProfileError, DeviceError) as exc:
        err.print(f"[bold red]probe failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if not good:
        err.print("no point could be read good")
        raise typer.Exit(1)


@sim_app.command("serve")
def sim_serve(
    scenario: Annotated[Path, typer.Argument(help="site configuration (TOML) describing the "
                                             "plant; its [sim] section sets the weather")],
    seed: Annotated[int | None, typer.Option(help="weather seed")] = None,
    speed: Annotated[float, typer.Option(help="time acceleration")] = 1.0,
    start: Annotated[str | None, typer.Option(help="ISO 8601 start (default: now)")] = None,
    clock_file: Annotated[Path | None, typer.Option(
        help="write the clock here (JSON) for a controller to follow: vpp run --sim-clock")
    ] = None,
    report: Annotated[Path | None, typer.Option(
        help="on exit, write the simulated meter's books (JSON) here")] = None,
    warmup: Annotated[float, typer.Option(
        help="open the meter's books this many simulated seconds after the start")] = 0.0,
    forecast_file: Annotated[Path | None, typer.Option(
        help="publish the site's weather forecast here (CSV, 72 h, rewritten every 6 h)")
    ] = None,
    play: Annotated[str | None, typer.Option(
        "--scenario", help="play a scenario on this plant: its start (less its warm-up), "
                           "seed, weather, load, faults, and the caps the meter judges by")
    ] = None,
    control_host: Annotated[str, typer.Option(
        help="fault control (HTTP) address; no authentication: keep it on loopback")
    ] = "127.0.0.1",
    control_port: Annotated[int, typer.Option(
        help="fault control port (0: any free port; vpp sim fault talks to it)")
    ] = CONTROL_PORT,
) -> None:
    """Serve a simulated plant on Modbus TCP until stopped (Ctrl-C or SIGTERM); break and
    mend its devices meanwhile with ``vpp sim fault``."""
    _logging(False)
    cfg = _load(scenario)
    import json
    from datetime import timedelta

    from sim import SimClock, SimulatedPlant
    from sim.control import control_app
    from sim.inject import FaultInjector
    from sim.scenario import ScenarioError, load_scenario
    from vpp.api import ApiServer
    from vpp.simbridge import plant_spec
    from vpp.simrun import scenario_config, scenario_spec
    sc = None
    if play is not None:
        try:
            sc = load_scenario(play)
        except ScenarioError as exc:
            err.print(str(exc), markup=False, highlight=False)
            raise typer.Exit(1) from None
        cfg = scenario_config(cfg, sc)
        start = start or (sc.start - timedelta(seconds=sc.warmup_s)).isoformat()
        warmup = warmup or sc.warmup_s
        seed = seed if seed is not None else sc.seed
    t0 = datetime.fromisoformat(start) if start else datetime.now(UTC).replace(microsecond=0)
    if t0.tzinfo is None:
        t0 = t0.replace(tzinfo=UTC)
    if not 0 < speed <= 10_000 or warmup < 0:
        err.print("--speed must be in (0, 10000] and --warmup >= 0")
        raise typer.Exit(2)
    clock = SimClock(start=t0, speed=speed, wall_epoch_s=time.time())
    spec = plant_spec(cfg) if sc is None else scenario_spec(sc)(plant_spec(cfg))
    books: dict[str, Any] = {}

    async def go() -> None:
        async with contextlib.AsyncExitStack() as stack:
            sp = await stack.enter_async_context(SimulatedPlant(
                spec, clock=clock, seed=seed if seed is not None else cfg.sim.seed,
                forecast_file=forecast_file))
            try:
                injector = await stack.enter_async_context(FaultInjector(sp, sc))
            except ValueError as exc:
                assert sc is not None  # without a scenario there is nothing to refuse
                err.print(f"scenario {sc.name} does not fit {cfg.site.id}: {exc}")
                raise typer.Exit(1) from None
            # uvicorn exits the process on a bind failure; find out first, and say so
            try:
                with socket.create_server((control_host, control_port)):
                    pass
            except OSError as exc:
                err.print(f"cannot serve fault control on {control_host}:{control_port} "
                          f"({exc.strerror or exc}); choose another with --control-port",
                          markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            control = ApiServer(control_app(injector), host=control_host, port=control_port)
            await control.start()
            stack.push_async_callback(control.stop)
            for a in cfg.assets:
                host, port = sp.endpoint_of(a.id)
                console.print(f"{a.id:>10} ({a.kind}, {a.profile}) on modbus://{host}:{port} "
                              f"unit {a.unit_id}")
            console.print(f"fault control on {control.url} (vpp sim fault --control "
                          f"{control.url})", soft_wrap=True)
            if forecast_file is not None:
                console.print(f"weather forecasts to {forecast_file}")
            if sc is not None:
                console.print(f"playing scenario {sc.name}: {len(sc.faults)} fault(s), "
                              f"{len(sc.cap)} cap change(s) judged by the meter")
            if clock_file is not None:
                clock_file.write_text(json.dumps(clock.to_json()) + "\n", encoding="utf-8")
            console.print(f"simulated time starts {t0.isoformat()} at ×{speed:g}; Ctrl-C stops")
            sys.stdout.flush()
            try:
                if warmup > 0:
                    await clock.sleep(warmup)
                    sp.plant.advance_to(clock.time())
                    sp.plant.open_books()
                await asyncio.Event().wait()
            finally:
                sp.plant.advance_to(clock.time())
                books.update(sp.plant.finish().as_report())
    try:
        _run(go())
    finally:
        if report is not None and books:
            report.write_text(json.dumps({"site": cfg.site.id, "speed": speed,
                                          "export_cap_w": cfg.pcc.export_cap_w, **books},
                                         indent=2) + "\n", encoding="utf-8")


def _control(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    """A request to a served plant's fault control; a clear message and exit 1 on failure."""
    import json
    import urllib.error
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail: Any = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("detail", detail)
        if isinstance(detail, list):  # pydantic's errors: where and what
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}"
                               for d in detail)
        err.print(f"{method} {url}: {exc.code} {detail}", markup=False, highlight=False,
                  soft_wrap=True)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        err.print(f"no simulated plant's fault control at {url} ({reason}); is vpp sim serve "
                  "running, and on which --control-port?", markup=False, highlight=False,
                  soft_wrap=True)
    raise typer.Exit(1)


ControlUrl = Annotated[str, typer.Option("--control", help="the served plant's fault control")]


@sim_app.command("fault")
def sim_fault(
    device: Annotated[str, typer.Argument(help="asset id, as in the site configuration")],
    kind: Annotated[str, typer.Argument(help="offline, slow, drop, frozen, exception, "
                                             "garbage, trip or cooling")],
    duration_s: Annotated[float | None, typer.Option(
        "--for", help="end it after this many simulated seconds (default: until ended)")
    ] = None,
    delay_s: Annotated[float | None, typer.Option(help="slow: reply delay [s]")] = None,
    code: Annotated[int | None, typer.Option(help="exception: the Modbus exception code")
                    ] = None,
    point: Annotated[str | None, typer.Option(help="garbage: the point")] = None,
    value: Annotated[float | None, typer.Option(
        help="garbage: the value served (nan allowed; default: the 'not implemented' "
             "sentinel)")] = None,
    control: ControlUrl = f"http://127.0.0.1:{CONTROL_PORT}",
) -> None:
    """Break a device of a served plant now (see docs/simulator.md for the kinds)."""
    body: dict[str, Any] = {"device": device, "kind": kind, "duration_s": duration_s,
                            "delay_s": delay_s, "code": code, "point": point, "value": value}
    got = _control("POST", f"{control.rstrip('/')}/faults",
                   {k: v for k, v in body.items() if v is not None})
    until = f"until {got['until']}" if got["until"] else "until ended"
    console.print(f"fault {got['id']}: {got['kind']} on {got['device']} since {got['since']}, "
                  f"{until}", soft_wrap=True)


@sim_app.command("fault-end")
def sim_fault_end(fault_id: Annotated[int, typer.Argument(help="the id vpp sim fault gave")],
                  control: ControlUrl = f"http://127.0.0.1:{CONTROL_PORT}") -> None:
    """End a fault in force on a served plant."""
    got = _control("DELETE", f"{control.rstrip('/')}/faults/{fault_id}")
    console.print(f"fault {got['id']}: {got['kind']} on {got['device']} ended {got['time']}",
                  soft_wrap=True)


@sim_app.command("faults")
def sim_faults(control: ControlUrl = f"http://127.0.0.1:{CONTROL_PORT}") -> None:
    """The faults in force on a served plant, and what was done so far."""
    from rich.table import Table
    got = _control("GET", f"{control.rstrip('/')}/faults")
    def utc(iso: str | None) -> str:
        return "-" if iso is None else datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")

    table = Table("id", "device", "kind", "since (UTC)", "until (UTC)", "detail",
                  title="faults in force")
    for a in got["active"]:
        detail = ", ".join(f"{k} {a[k]}" for k in ("point", "value") if k in a)
        if a["kind"] == "slow":
            detail = f"delay_s {a['delay_s']}"
        elif a["kind"] == "exception":
            detail = f"code {a['code']}"
        table.add_row(str(a["id"]), a["device"], a["kind"], utc(a["since"]), utc(a["until"]),
                      detail)
    console.print(table)
    console.print(f"{len(got['events'])} event(s); kinds: {', '.join(got['kinds'])}",
                  soft_wrap=True)


def _scenario_config(scenario_arg: str, named: str | None) -> Path:
    """The site configuration a scenario runs on: --config, else the scenario's own
    (relative to its file; 'demo' is the demo county)."""
    from sim.scenario import scenario_path
    if named is None or named == "demo":
        return default_demo_config()
    path = Path(named)
    return path if path.is_absolute() else scenario_path(scenario_arg).parent / path


@sim_app.command("run")
def sim_run(
    scenario: Annotated[str, typer.Argument(help="a shipped scenario's name or a scenario "
                                            "file (.toml); `vpp sim scenarios` lists them")],
    report: Annotated[Path, typer.Option(help="directory for report.json and the plots")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="site configuration; "
                                                "default: the scenario's")] = None,
    speed: Annotated[float | None, typer.Option(help="time acceleration (default: the "
                                                "scenario's)")] = None,
    planner: Annotated[str, typer.Option(help="optimal (the controller), perfect (the same "
                                         "model shown the actual weather and load) or "
                                         "reactive (no plan, the real-time limiter alone)")
                       ] = "optimal",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Play a scenario against the real controller over Modbus TCP; write the report and
    plots."""
    _logging(verbose)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sim.scenario import ScenarioError, load_scenario
    from vpp.demo import write_report
    from vpp.live import LiveView
    from vpp.simplots import write_plots
    from vpp.simrun import PLANNERS, ScenarioRun, with_planner
    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    if speed is not None and not 0 < speed <= 10_000:
        err.print(f"--speed {speed} is not allowed: use a value in (0, 10000]")
        raise typer.Exit(2)
    if planner not in PLANNERS:
        err.print(f"--planner {planner} is not allowed: use one of {', '.join(PLANNERS)}")
        raise typer.Exit(2)
    cfg = with_planner(_load(config or _scenario_config(scenario, sc.config)), planner)
    try:
        run = ScenarioRun(sc, cfg, speed=speed, perfect_foresight=planner == "perfect")
    except ValueError as exc:
        err.print(f"scenario {sc.name} does not fit {cfg.site.id}: {exc}", highlight=False)
        raise typer.Exit(1) from None

    async def go() -> None:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[now]}"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task(sc.name, total=1.0, now="")

            def tick() -> None:
                now = run.demo.clock.now().astimezone(sc.start.tzinfo)
                bar.update(task, completed=run.progress, now=now.strftime("%Y-%m-%d %H:%M"))
            async with run:
                await run.wait(on_tick=tick)
            tick()
    _run(go())
    rep = run.report()
    report.mkdir(parents=True, exist_ok=True)
    plots = write_plots(
        run.demo.sim.plant.stats, out_dir=report, tz=cfg.site.timezone,
        generators=[a.id for a in cfg.assets if a.kind in ("pv", "wind")],
        batteries=[a.id for a in cfg.assets if a.kind == "battery"],
        forecasts=run.forecasts.vintages, title=f"{sc.name} on {cfg.site.id}",
        spans=run.fault_spans())
    rep["plots"] = [p.name for p in plots]
    write_report(rep, report / "report.json")
    LiveView.print_report(console, rep)
    console.print(f"report and {len(plots)} plots written to {report}")


@sim_app.command("scenarios")
def sim_scenarios() -> None:
    """List the shipped scenarios."""
    from sim.scenario import load_scenario, shipped_scenarios
    for name in shipped_scenarios():
        sc = load_scenario(name)
        console.print(f"[bold]{name}[/]: {sc.description} ({sc.duration_h:g} h from "
                      f"{sc.start.isoformat()})", highlight=False)


@forecast_app.command("backtest")
def forecast_backtest(
    data: Annotated[Path, typer.Option(help="CSV or Parquet: a timestamp column (ISO 8601), "
                                       "a power column [W], optional weather columns")],
    kind: Annotated[str, typer.Option(help="pv, wind or load")],
    capacity_w: Annotated[float, typer.Option(help="installed capacity [W] (load: its peak)")],
    horizon: Annotated[str, typer.Option(help="ultra-short (0-4 h, every 15 min) or short "
                                         "(72 h, daily)")],
    report: Annotated[Path, typer.Option(help="directory for metrics.json and the plot")],
    exog: Annotated[str | None, typer.Option(
        help="weather-forecast columns to use, comma-separated, or 'none' (default: every "
             "known one present: ghi_w_m2, wind_speed_m_s, temp_air_c)")] = None,
    tz: Annotated[str | None, typer.Option(help="site timezone; naive stamps are read in it "
                                           "(default: the site configuration's)")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="site configuration for the location (default: the demo "
        "county)")] = None,
    latitude: Annotated[float | None, typer.Option(help="site latitude [deg]")] = None,
    longitude: Annotated[float | None, typer.Option(help="site longitude [deg]")] = None,
    altitude_m: Annotated[float | None, typer.Option(help="site altitude [m]")] = None,
    tilt_deg: Annotated[float | None, typer.Option(help="PV tilt [deg] (default: latitude)")]
        = None,
    azimuth_deg: Annotated[float, typer.Option(help="PV azimuth [deg], 180 = south")] = 180.0,
    time_col: Annotated[str, typer.Option(help="timestamp column")] = "timestamp",
    power_col: Annotated[str, typer.Option(help="power column [W]")] = "power_w",
    scorer: Annotated[str, typer.Option(help="daily accuracy rule: north-china or "
                                        "southern-grid")] = "north-china",
    issue_time: Annotated[str, typer.Option(help="short-term issue time, site-local HH:MM")]
        = "08:00",
    min_train_days: Annotated[float, typer.Option(help="days of history before the first "
                                                  "test day")] = 7.0,
    calibration_days: Annotated[float, typer.Option(help="days whose errors set the "
                                                    "quantiles and choose the model")] = 7.0,
    max_days: Annotated[int | None, typer.Option(help="test only the last N days")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Rolling-origin backtest of one series: every candidate model and baseline, graded
    as the grid grades them; writes metrics.json and backtest.png."""
    _logging(verbose)
    from datetime import time as dtime

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from forecasting import HORIZON_STEPS, SCORERS, DataError, Site, backtest, load_series
    from forecasting.backtest import SELECTED
    from forecasting.series import KINDS
    from vpp.forecastplots import write_backtest_plot
    from vpp.jsonutil import jsonable

    def bad(option: str, value: object, allowed: str) -> typer.Exit:
        err.print(f"{option} {value!r} is not allowed: {allowed}", highlight=False)
        return typer.Exit(2)

    if kind not in KINDS:
        raise bad("--kind", kind, f"use one of {', '.join(KINDS)}")
    if horizon not in HORIZON_STEPS:
        raise bad("--horizon", horizon, f"use one of {', '.join(HORIZON_STEPS)}")
    if scorer not in SCORERS:
        raise bad("--scorer", scorer, f"use one of {', '.join(SCORERS)}")
    if not capacity_w > 0:
        raise bad("--capacity-w", capacity_w, "a capacity > 0 W")
    try:
        hh, mm = (int(x) for x in issue_time.split(":"))
        at = dtime(hh, mm)
    except ValueError:
        raise bad("--issue-time", issue_time, "HH:MM, e.g. 08:00") from None
    cfg = _load(config or default_demo_config())
    site = Site(latitude=cfg.site.latitude if latitude is None else latitude,
                longitude=cfg.site.longitude if longitude is None else longitude,
                altitude_m=cfg.site.altitude_m if altitude_m is None else altitude_m,
                tz=tz or cfg.site.timezone)
    try:
        from zoneinfo import ZoneInfo
        ZoneInfo(site.tz)
    except (KeyError, ValueError):
        raise bad("--tz", site.tz, "an IANA timezone, e.g. Asia/Shanghai") from None
    cols = None if exog is None else (() if exog.strip().lower() == "none" else
                                      tuple(c.strip() for c in exog.split(",") if c.strip()))
    try:
        series, rep = load_series(data, kind=kind, capacity_w=capacity_w,  # type: ignore[arg-type]
                                  site=site, time_col=time_col, power_col=power_col, exog=cols,
                                  tilt_deg=tilt_deg, azimuth_deg=azimuth_deg)
    except DataError as exc:
        err.print(f"[bold red]cannot use the data:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print("[bold]data[/]")
    for line in rep.lines():
        console.print(f"  {line}", highlight=False)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[day]}"), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task(f"backtest {horizon}", total=None, day="")

            def tick(done: int, total: int, day: object) -> None:
                bar.update(task, completed=done, total=total, day=str(day))
            res = backtest(series, horizon=horizon, scorer=scorer, issue_time=at,
                           min_train_days=min_train_days, calibration_days=calibration_days,
                           max_days=max_days, progress=tick)
    except ValueError as exc:
        err.print(f"[bold red]cannot backtest:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    report.mkdir(parents=True, exist_ok=True)
    out = res.to_json() | {"data": rep.to_json(), "command": " ".join(sys.argv[1:])}
    (report / "metrics.json").write_text(
        json.dumps(jsonable(out), indent=2, allow_nan=False) + "\n")
    png = write_backtest_plot(res, report / "backtest.png", site.tz)
    cap = f"{capacity_w / 1e6:g} MW" if capacity_w >= 1e6 else f"{capacity_w / 1e3:g} kW"
    table = Table(title=f"{series.name} {horizon} ({res.scorer}; capacity {cap})")
    for c in ("model", "acc.", "4th h" if horizon == "ultra-short" else "days", "nRMSE",
              "pinball", "cover", "skill"):
        table.add_column(c, justify="left" if c == "model" else "right",
                         no_wrap=c == "model")
    ranked = sorted(res.metrics.items(), key=lambda kv: -kv[1].get("accuracy", -1.0))
    for name, m in ranked:
        if not m.get("points"):
            continue
        worst = min(m.get("skill", {}).values(), default=None)  # against the best baseline
        third = f"{m['accuracy_lead_4h']:.1%}" if horizon == "ultra-short" else str(m["days"])
        table.add_row(f"[bold]{name}[/]" if name == SELECTED else name, f"{m['accuracy']:.1%}",
                      third, f"{m['nrmse']:.3f}", f"{m['pinball_mean']:.4f}",
                      f"{m['coverage']['observed']:.0%}",
                      "" if worst is None else f"{worst:+.2f}")
    console.print(table)
    console.print("acc.: mean daily accuracy; pinball: mean over the quantiles, over capacity; "
                  "cover: share inside the outer quantiles; skill: 1 - RMSE / RMSE of the "
                  "best other baseline", style="dim")
    chosen = sorted(set(res.choices.values()))
    console.print(f"chosen per day: {', '.join(chosen)}", highlight=False)
    console.print(f"metrics and plot written to {report} ({png.name})")


@forecast_app.command("sim-data")
def forecast_sim_data(
    out: Annotated[Path, typer.Option(help="directory for one CSV per series")],
    days: Annotated[int, typer.Option(min=3, max=366, help="days of 15-minute data")] = 28,
    start: Annotated[str, typer.Option(help="first day, ISO date (UTC midnight)")]
        = "2026-03-01",
    seed: Annotated[int, typer.Option(help="weather seed")] = 7,
    vintage: Annotated[str, typer.Option(
        help="which weather forecast each step carries: day-ahead (issued 00 UTC the day "
             "before; for short-term backtests) or intraday (the latest issue at least 4 h "
             "before; for ultra-short backtests)")] = "day-ahead",
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                help="site configuration")] = None,
) -> None:
    """Write the simulated site's PV, wind and load series with the day-ahead weather
    forecast, for backtests."""
    from vpp.forecastdata import simulated_series, write_series
    cfg = _load(config or default_demo_config())
    try:
        t0 = datetime.fromisoformat(start).replace(tzinfo=UTC)
    except ValueError:
        err.print(f"--start {start!r} is not allowed: an ISO date, e.g. 2026-03-01")
        raise typer.Exit(2) from None
    from vpp.forecastdata import VINTAGES
    if vintage not in VINTAGES:
        err.print(f"--vintage {vintage!r} is not allowed: use one of {', '.join(VINTAGES)}")
        raise typer.Exit(2)
    paths = write_series(simulated_series(cfg, start=t0, days=days, seed=seed,
                                          vintage=vintage), out)
    for p in paths:
        console.print(f"wrote {p}", highlight=False)


if __name__ == "__main__":
    app()
