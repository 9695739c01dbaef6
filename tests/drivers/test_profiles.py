"""Profiles load and validate; reads are coalesced within the protocol's limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import Capability, PollClass, load_profile, plan_reads, shipped_profiles
from drivers.profile import ProfileError, load_profile_file

EXPECTED_CAPABILITIES = {
    "generic-pv": {Capability.READS_ACTIVE_POWER, Capability.SETS_ACTIVE_POWER_LIMIT},
    "generic-wind": {Capability.READS_ACTIVE_POWER, Capability.SETS_ACTIVE_POWER_LIMIT},
    "generic-battery": {Capability.READS_ACTIVE_POWER, Capability.ACCEPTS_POWER_SETPOINT,
                        Capability.HAS_SOC},
    "generic-load": {Capability.READS_ACTIVE_POWER},
    "generic-flex-load": {Capability.READS_ACTIVE_POWER, Capability.ACCEPTS_POWER_SETPOINT},
    "generic-meter": {Capability.READS_EXPORT},
    "huawei-sun2000": {Capability.READS_ACTIVE_POWER, Capability.SETS_ACTIVE_POWER_LIMIT},
}


def test_every_shipped_profile_loads() -> None:
    names = shipped_profiles()
    assert set(EXPECTED_CAPABILITIES) <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name
        assert p.capabilities == EXPECTED_CAPABILITIES[name]


def test_reads_are_coalesced() -> None:
    p = load_profile("generic-battery")
    fast = [pt for pt in p.points if pt.poll == PollClass.FAST]
    # adjacent points merge (active_power_w 0-1 and soc 2); status (11) is read apart, since
    # a device may refuse a read that touches unmapped registers
    blocks = plan_reads(fast)
    assert [(b.table.value, b.start, b.count) for b in blocks] == [
        ("holding", 0, 2), ("input", 0, 3), ("input", 11, 1)]
    # a device known to accept holes can be read in one request
    merged = plan_reads(fast, max_gap=8)
    assert [(b.table.value, b.start, b.count) for b in merged] == [("holding", 0, 2),
                                                                   ("input", 0, 12)]
    wide = plan_reads(p.points, max_registers=4)
    assert all(b.count <= 4 for b in wide)
    assert sum(len(b.points) for b in wide) == len(p.points)


@pytest.mark.parametrize(("body", "message"), [
    ("points:\n  - {name: a, table: input, address: 0, type: u32}\n"
     "  - {name: b, table: input, address: 1, type: u16}\n", "points a and b overlap"),
    ("points:\n  - {name: a, table: input, address: 0, type: u16, access: rw}\n",
     "input registers cannot be written"),
    ("points:\n  - {name: a, table: holding, address: 0, type: u16, scale: 0}\n",
     "scale 0 is not allowed"),
    ("points:\n  - {name: a, table: holding, address: 0, type: u17}\n", "type"),
])
def test_bad_profile_is_named(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nkind: pv\n" + body)
    with pytest.raises(ProfileError, match=message):
        load_profile_file(f)


def test_unknown_profile_lists_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="generic-pv"):
        load_profile("no-such-device")
