"""The fault matrix: faults done to a running demo county, each measured on the simulator.

Each row is a small async function over a :class:`Probe`, a running :class:`vpp.demo.Demo`
of the demo county at a clear midday (the plant alone would export about twice the cap)
in accelerated time. :func:`run_row` starts the demo, waits for the first plan and for
normal control with the export pressing on the cap, opens the meter's books, runs the
row's fault for its duration, waits for the controller to be back in normal control, and
measures:

- **violation s**: seconds the simulator's PCC meter saw export above the cap × 1.01 (the
  run report's tolerance), from the books' opening (just before the fault) to the end of
  the observation after recovery;
- **data lost**: what the row counts (``Row.lost``), from the running parts themselves;
- **recovery s**: simulated seconds from the fault's end to the first control step of a
  stretch of normal control (:meth:`Probe.normal`).

A row meets its goal with no violation second, nothing lost, and recovery within
:data:`RECOVERY_LIMIT_S`. Rows measured by a test of their own (two processes, a real
PostgreSQL) run that test. ``vpp fault-matrix`` runs the rows and writes the table
(docs/reliability.md); tests/faults/test_matrix.py runs each in-process row. It is a test
bench's tool: it needs the ``dev`` extra (httpx; pytest for the rows measured by tests).

Modules: :mod:`.probe` (running a row and measuring it), :mod:`.rows` (the faults),
:mod:`.table` (the table and the document).
"""

from vpp.faultmatrix.probe import (
    RECOVERY_LIMIT_S,
    SPEED,
    Probe,
    Result,
    Row,
    run_matrix,
    run_row,
)
from vpp.faultmatrix.rows import ROWS, row_named
from vpp.faultmatrix.table import table_lines, write_doc

__all__ = ["RECOVERY_LIMIT_S", "ROWS", "SPEED", "Probe", "Result", "Row", "row_named",
           "run_matrix", "run_row", "table_lines", "write_doc"]
