"""CPU of ``Device.poll`` without I/O: the drivers' own work per poll, alone.

A stub connection hands back the benchmark device's 60 registers (see
``bench.modbus_poll``) at once, so no socket, pymodbus or event-loop wait is timed: only
``Device.poll`` itself (block decode, scale factors, quality checks, the latest values). The
difference to the client CPU per poll of ``bench.modbus_poll`` is the cost of the request
path (``ModbusConnection``, pymodbus, asyncio).

Usage::

    python -m bench.device_decode [--polls 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import struct
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from bench.modbus_poll import ConstantUnit, _ignore_write, bench_profile, unit_values
from drivers.device import Device
from drivers.profile import PollClass, Table
from drivers.telemetry import Quality

UNIT_ID = 5


class StubConnection:
    """Answers every read at once with the registers the benchmark server would send."""

    timeout_s = 1.0

    def __init__(self, words: list[int], unit_id: int) -> None:
        self.words = words
        self.unit_id = unit_id

    def submit_read(self, table: Table, address: int, count: int, unit_id: int,
                    deliver: Callable[[bytes | None, Exception | None], None]) -> None:
        """Hands over the reply frame a device would send (MBAP header, function, byte
        count, data) at once."""
        fc = 3 if table is Table.HOLDING else 4
        deliver(struct.pack(">HHHBBB", 1, 0, 3 + 2 * count, unit_id, fc, 2 * count)
                + struct.pack(f">{count}H", *self.words[address : address + count]), None)


async def cpu_per_poll(polls: int) -> tuple[float, float]:
    """Microseconds of process CPU per ``await Device.poll()`` and per
    ``Device.start_poll()`` (what the Poller runs), after checking the decoded values."""
    profile = bench_profile()
    unit = ConstantUnit(profile, partial(unit_values, profile, UNIT_ID), _ignore_write)
    count = sum(p.registers for p in profile.points)
    conn = StubConnection(unit.read(Table.INPUT, 0, count), UNIT_ID)
    dev = Device(asset_id="bench", profile=profile, connection=conn,  # type: ignore[arg-type]
                 unit_id=UNIT_ID, now=partial(datetime.now, UTC))
    out = await dev.poll(PollClass.FAST)
    expected = unit_values(profile, UNIT_ID)
    wrong = [k for k, v in expected.items() if out[k].quality is not Quality.GOOD
             or not math.isclose(out[k].value or 0.0, v, rel_tol=1e-6, abs_tol=1e-6)]
    if wrong:
        raise SystemExit(f"decoded values differ from the served ones: {wrong}")
    c0 = time.process_time()
    for _ in range(polls):
        await dev.poll(PollClass.FAST)
    awaited = (time.process_time() - c0) / polls * 1e6
    results: list[object] = []
    c0 = time.process_time()
    for _ in range(polls):
        dev.start_poll(PollClass.FAST, results.append)
    engine = (time.process_time() - c0) / polls * 1e6
    if len(results) != polls or any(isinstance(r, Exception) for r in results):
        raise SystemExit("start_poll did not complete every poll")
    return awaited, engine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.device_decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polls", type=int, default=20_000, help="polls per repeat")
    ap.add_argument("--repeat", type=int, default=3, help="repeats; the median is reported")
    args = ap.parse_args(argv)
    if not 1 <= args.polls <= 1_000_000 or not 1 <= args.repeat <= 20:
        ap.error("--polls must be within 1..1000000 and --repeat within 1..20")
    runs = [asyncio.run(cpu_per_poll(args.polls)) for _ in range(args.repeat)]
    for k, what in enumerate(("await Device.poll()", "Device.start_poll()")):
        vals = sorted(r[k] for r in runs)
        print(f"{what} without I/O (36 points, 60 registers): median "
              f"{vals[len(vals) // 2]:.1f} µs CPU per poll; runs: "
              + ", ".join(f"{v:.1f}" for v in vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
