"""The simulated clock: accelerated time, and time held while the event loop is stalled."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from sim.clock import PACE_TICK_WALL_S, SimClock, pace_max_lag_wall_s

START = datetime(2026, 4, 15, 3, 0, tzinfo=UTC)


def stall_the_loop(wall_s: float) -> None:
    """A blocking call on the event loop (what a long GC pause or the host does to it)."""
    time.sleep(wall_s)


async def test_a_stalled_loop_holds_simulated_time_and_time_never_goes_back() -> None:
    """A stall of 300 ms wall at ×100 would be 30 simulated s: paced, the clock moves at
    most its allowance during it, is continuous when the loop comes back, and counts the
    time held; a reader in another thread never sees time go back. (Bounds from below
    only: a busy machine stalls the loop more, never less.)"""
    free = SimClock(start=START, speed=100.0)
    clock = SimClock(start=START, speed=100.0)
    pacer = asyncio.create_task(clock.pace(max_lag_wall_s=0.01))
    seen: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(clock.time())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        await asyncio.sleep(0.05)
        before = clock.elapsed_s()
        stall_the_loop(0.3)
        during = clock.elapsed_s()
        await asyncio.sleep(0.05)
        after = clock.elapsed_s()
    finally:
        done.set()
        reader.join()
        pacer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pacer
    allowance_s = (0.01 + PACE_TICK_WALL_S) * clock.speed
    assert during - before <= allowance_s + 1e-6  # not the 30 s an unheld clock moves
    assert after > during  # it runs again once the loop does
    assert clock.held_wall_s >= 0.3 - 0.01 - PACE_TICK_WALL_S
    assert clock.longest_stall_wall_s >= 0.3 - 0.01 - PACE_TICK_WALL_S
    assert clock.stalled_wall_s == clock.held_wall_s  # nothing held by hand
    # what it held is exactly what it lags a clock that was never held
    assert free.elapsed_s() - clock.elapsed_s() == pytest.approx(
        clock.speed * clock.held_wall_s, abs=0.01)
    assert len(seen) > 100 and all(b >= a for a, b in itertools.pairwise(seen))
    with pytest.raises(ValueError, match="cannot be shared"):
        clock.to_json()


async def test_sleep_until_waits_out_time_held_meanwhile() -> None:
    """A sleeper never wakes before its simulated time, however long the clock was held."""
    clock = SimClock(start=START, speed=100.0)
    pacer = asyncio.create_task(clock.pace(max_lag_wall_s=0.005))
    try:
        target = clock.now() + timedelta(seconds=10.0)  # 0.1 s wall when nothing stalls
        sleeper = asyncio.create_task(clock.sleep_until(target))
        await asyncio.sleep(0.02)
        stall_the_loop(0.15)  # longer than the sleep's wall time
        await sleeper
        assert clock.now() >= target
    finally:
        pacer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pacer


def test_a_shared_clock_cannot_be_paced_and_the_allowance_is_one_simulated_second() -> None:
    shared = SimClock(start=START, speed=60.0, wall_epoch_s=time.time())
    with pytest.raises(ValueError, match="shared with other processes"):
        asyncio.run(shared.pace())
    assert SimClock.from_json(shared.to_json()).time() == pytest.approx(shared.time(), abs=1.0)
    assert pace_max_lag_wall_s(200.0) == 0.005  # 1/200 s
    assert pace_max_lag_wall_s(25.0) == pytest.approx(0.04)
    assert pace_max_lag_wall_s(1.0) == 0.05
    assert pace_max_lag_wall_s(600.0) == 0.005  # floor: the loop's own work


async def test_a_clock_held_by_hand_stands_still_paced_or_not_and_is_no_stall() -> None:
    for paced in (False, True):
        clock = SimClock(start=START, speed=100.0)
        pacer = asyncio.create_task(clock.pace()) if paced else None
        await asyncio.sleep(0.01)
        clock.hold()
        at = clock.time()
        await asyncio.sleep(0.1)  # 10 simulated s, if it ran
        assert clock.time() == at
        clock.release()
        await asyncio.sleep(0.05)
        assert clock.time() > at
        # the time held by hand is held, and no stall of the loop
        assert clock.held_wall_s - clock.stalled_wall_s >= 0.1
        if pacer is not None:
            pacer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pacer
