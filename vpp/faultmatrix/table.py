"""The fault matrix as a table, and the document that holds it (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

from sim.plant import VIOLATION_TOLERANCE_RATIO
from vpp.config import SiteConfig
from vpp.demo import auto_control_interval_s
from vpp.faultmatrix.probe import (
    OBSERVE_S,
    PRE_FAULT_S,
    RECOVERY_LIMIT_S,
    STABLE_S,
    Result,
    matrix_config,
)
from vpp.faultmatrix.rows import ROWS


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def table_lines(results: list[Result]) -> list[str]:
    """The table in Markdown, a row per result."""
    lines = ["| row | fault | duration s | violation s | data lost | recovery s | goal |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| `{r.row}` | {r.fault} | {_num(r.duration_s)} | "
                     f"{_num(r.violation_s, '{:.1f}')} | {_num(r.lost, '{:d}')} | "
                     f"{_num(r.recovery_s)} | {r.goal} |")
    return lines


INTRO = """# Reliability: the fault matrix

Each row is a fault done to a running demo county (`vpp.faultmatrix`): the simulated plant
served over Modbus TCP, the real controller with its storage (SQLite), embedded MQTT broker
and HTTP API, on one accelerated clock (×{speed:g}; a control step of {step:g} simulated s).
The county is at a clear midday from 11:30: the plant alone would export about twice the
{cap:g} MW cap, so a fault that loses control shows on the meter. A row starts a fresh demo,
waits for the first plan and for normal control with the export near the cap, opens the
meter's books {pre:.0f} s before the fault, does the fault for its duration, waits until the
controller is back in normal control, and watches {observe:.0f} s more. Two rows are
measured by tests of their own (two processes; a real PostgreSQL), which the command runs.

How the faults are done: a device's through the simulator's fault injector
(`sim.inject.FaultInjector`, as `vpp sim fault` does); the solver's by replacing the
running controller's `dispatcher.solve` for the fault's duration (a solver that is not
installed, as `tests/e2e/test_dispatch_faults.py` configures for a whole run; or a solve
held 1.5 × `dispatch.late_s` in the compute thread, with `late_s` 1 s of wall time in that
row); the broker's by stopping the embedded broker and starting it on its port; the flood
with httpx from a thread and event loop of its own; the clock's by stepping the
controller's clock (the demo's `SteppedClock`; the plant's runs on); the reload's through
`Services.reload`, the path `vpp run` takes on SIGHUP.

- **violation s**: seconds the simulator's PCC meter saw export above the cap × {tol:g}
  (the run report's `cap_violation_s`), from the books' opening to the end.
- **data lost**: what was accepted or acknowledged and is not where it should be, counted
  from the parts themselves. Every in-process row counts the telemetry samples the bounded
  sample queue dropped (its counter), storage writes that failed
  (`vpp_storage_errors_total`), MQTT messages the bridge dropped (its counter), and the
  QoS 1 messages waiting in the outbox file at the fault's end that are still there at the
  end; a row's note says what else it counts, and a row measured by its own test what
  that test asserts.
- **recovery s**: simulated seconds from the fault's end to the first control step of
  {stable:.0f} s of normal control: the API's health would say `ok` (every device online,
  the PCC measured, the last solve usable, the optimiser's plan in force), the plan
  holding a step for now, no asset held, the export not estimated, MQTT connected, and
  the row's own condition.

The goal of every row: no violation second, nothing lost, and back in normal control
within {limit:.0f} s. One fault is sudden in a way no control step can foresee: a charging
battery's trip throws its charging onto the PCC at once. Its row allows the seconds the
loop's reaction takes at best (its note gives the bound and how it is found); keeping even
those off the meter takes a standing export reserve of the battery's charging, or an
inter-trip at the plant. A row that fails its goal says why; a fault the matrix cannot do
yet is listed as FAILS. Produced by

```sh
{command}
```

(`make reliability`); `tests/faults/test_matrix.py` runs each in-process row and asserts
its goal; a row that fails it today is expected to fail there, with the finding in its
note (strictly, unless it fails in some runs only: once the controller meets the goal,
the test says so). The numbers vary by a few seconds between runs: the control steps are
timed by the event loop on the wall clock (docs/simulator.md, Determinism).
"""


def write_doc(results: list[Result], path: Path, *, speed: float, command: str,
              config: SiteConfig) -> None:
    """Write the document: what is measured and how, the table, a note per row."""
    cfg = matrix_config(config)
    text = INTRO.format(speed=speed, step=auto_control_interval_s(cfg, speed),
                        cap=cfg.pcc.export_cap_w / 1e6, pre=PRE_FAULT_S, observe=OBSERVE_S,
                        tol=1 + VIOLATION_TOLERANCE_RATIO, stable=STABLE_S,
                        limit=RECOVERY_LIMIT_S, command=command)
    lines = [text, "## The matrix", "", *table_lines(results), "", "## Notes", ""]
    rows = {r.name: r for r in ROWS}
    for r in results:
        row = rows.get(r.row)
        wall = f" ({r.wall_s:.0f} s wall)" if r.wall_s else ""
        lost = "" if row is None or not row.lost else (
            f" Data lost: {row.lost}." if row.external else f" Data lost also counts {row.lost}.")
        extra = "".join(f" {n[0].upper()}{n[1:]}." for n in r.notes)
        known = "" if row is None or not row.known else (
            f" Known {'intermittent ' if row.intermittent else ''}failure (a finding for the "
            f"controller): {row.known}.")
        lines.append(f"- `{r.row}`{wall}: {r.goal}.{known}{lost}{extra}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
