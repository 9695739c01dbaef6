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
    time held; a reader in another thread never sees time go back."""
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
    assert 0.0 < after - during < 30.0
    assert 0.25 <= clock.held_wall_s <= 0.35
    assert clock.stalled_wall_s == clock.held_wall_s
    assert 0.25 <= clock.longest_stall_wall_s <= 0.35
    assert len(seen) > 100 and all(b >= a for a, b in itertools.pairwise(seen))
    with pytest.raises(ValueError, match="cannot be shared"):
        clock.to_json()


async def test_an_unpaced_clock_runs_with_the_wall_and_a_paced_one_when_the_loop_is_free() -> None:
    free = SimClock(start=START, speed=50.0)
    paced = SimClock(start=START, speed=50.0)
    pacer = asyncio.create_task(paced.pace())
    try:
        await asyncio.sleep(0.01)
        stall_the_loop(0.1)
        assert free.elapsed_s() == pytest.approx(5.5, abs=1.0)  # ×50 through the stall
        await asyncio.sleep(0.2)
    finally:
        pacer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pacer
    assert paced.held_wall_s > 0.05
    # after the stall the paced clock ran with the wall again: 0.2 s wall is 10 s
    assert free.elapsed_s() - paced.elapsed_s() == pytest.approx(
        50.0 * paced.held_wall_s, abs=0.01)
    assert paced.held_wall_s < 0.1


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
        assert 2.0 < clock.time() - at < 10.0
        assert clock.held_wall_s >= 0.1 and clock.stalled_wall_s < 0.05
        if pacer is not None:
            pacer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pacer
