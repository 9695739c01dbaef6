"""Command payloads under arbitrary JSON and arbitrary bytes.

Every command of ``vpp.commands.SPECS`` goes through ``Commands.execute`` with an admin's
principal, into a real controller (built as ``tests/vpp/test_api.py`` builds it, not
running) with real storage: bodies are any JSON, and JSON shaped like the command's with
its values mutated (datetimes at the ends of the calendar, NaN, huge numbers, deep
nesting). ``execute`` never raises; a refusal says why and changes neither the grid
instructions nor the operating mode; what is accepted leaves instructions the planner can
read. Then MQTT: any bytes on any ``cmd/…`` topic through ``MqttCommands`` into an
``MqttBridge`` that is never connected: exactly one answer each, on ``…/ack``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import given, note
from hypothesis import strategies as st

from sim import SimClock
from tests.conftest import DEMO_CONFIG
from tests.fuzz import FUZZ
from vpp.auth import Principal, Role, Tokens
from vpp.commands import SPECS, Commands, MqttCommands
from vpp.config import load_config
from vpp.controller import Controller
from vpp.mqtt import MqttBridge
from vpp.storage import Storage

T0 = datetime(2026, 4, 15, 4, tzinfo=UTC)
ADMIN = Principal("fuzz-admin", Role.ADMIN)


# -- what is sent --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)),
                           timezone(timedelta(hours=8)), timezone(timedelta(minutes=-30))])
instants = st.one_of(
    st.datetimes(timezones=offsets).map(datetime.isoformat),  # years 1 to 9999
    st.datetimes(min_value=datetime(2026, 4, 14), max_value=datetime(2026, 4, 20),
                 timezones=offsets).map(datetime.isoformat),
    st.sampled_from(["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
                     "2026-04-15T05:00:00", "2026-04-15", "now", ""]),
    json_scalars)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30),
                    10**30), st.sampled_from([0, -1, 1e6, 35e6, 1e300, 5e-324]), json_scalars)
deep = st.integers(10, 3000).map(lambda n: json.loads("[" * min(n, 900) + "]" * min(n, 900)))


def shaped(required: dict[str, st.SearchStrategy[Any]],
           optional: dict[str, st.SearchStrategy[Any]] | None = None
           ) -> st.SearchStrategy[dict[str, Any]]:
    """A body of the command's shape: mostly with its required keys, now and then without
    some, or with a key no command has."""
    extra = {**(optional or {}), "surprise": json_values}
    whole = st.fixed_dictionaries(required, optional=optional or {})
    return st.one_of(*[whole] * 4, st.fixed_dictionaries({}, optional={**required, **extra}))


def near(valid: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value (so that what follows validation is reached), else a wrong one."""
    return st.one_of(*[valid] * 5, wrong)


aware = st.datetimes(timezones=offsets).map(datetime.isoformat)  # years 1 to 9999
soon = st.datetimes(min_value=datetime(2026, 4, 14), max_value=datetime(2026, 4, 20),
                    timezones=offsets).map(datetime.isoformat)
ends = st.sampled_from(["9999-12-31T23:59:59-12:00", "9999-12-31T00:00:00+00:00",
                        "0001-01-01T00:00:00+14:00"])
times = near(st.one_of(aware, soon, ends), instants)  # the calendar's ends as often as not
watts = near(st.floats(0, 1e8) | st.sampled_from([0, 1e6, 35e6, 5e-324]), numbers)
demand_response = shaped({"kind": st.just("demand_response"), "start": times, "end": times},
                         {"export_reduction_w": watts, "import_reduction_w": watts})
export_profile = shaped({"kind": st.just("export_profile"), "start": times,
                         "step_s": near(st.integers(1, 86400), st.integers() | json_scalars),
                         "export_w": near(st.lists(st.floats(0, 1e8), min_size=1, max_size=30),
                                          st.lists(numbers, max_size=30) | json_values)})
instruction = st.one_of(demand_response, export_profile, demand_response, export_profile,
                        json_values)
BODIES: dict[str, st.SearchStrategy[Any]] = {
    "cap": shaped({"export_cap_w": near(st.floats(1, 35e6), numbers)}, {"effective": times}),
    "grid-instruction": shaped({"instruction": instruction}),
    "mode": shaped({"mode": near(st.sampled_from(["auto", "reactive"]),
                                 st.sampled_from(["AUTO", ""]) | json_scalars)}),
    "alarm-ack": shaped({"alarm": near(st.sampled_from(["pcc_meter_stale", "fallback_plan"]),
                                       json_scalars)}),
}
assert set(BODIES) == set(SPECS), "a command without its fuzzed body"


def bodies(action: str) -> st.SearchStrategy[Any]:
    return st.one_of(*[BODIES[action]] * 6, json_values, deep,
                     deep.map(lambda d: {"export_cap_w": d}))


# -- the controller ------------------------------------------------------------------------

@dataclass
class Harness:
    runner: asyncio.Runner
    ctrl: Controller
    commands: Commands
    storage: Storage

    def state(self) -> tuple[Any, ...]:
        ins = self.ctrl.instructions
        return (list(ins.caps), list(ins.responses), list(ins.profiles),
                self.ctrl.state.operating_mode)

    def check_usable(self) -> None:
        """The planner's and the real-time loop's reads of the instructions still work."""
        now = self.ctrl.clock.now()
        cap = self.ctrl.export_cap_at(now)
        assert math.isfinite(cap) and cap >= 0
        assert math.isfinite(self.ctrl.lowest_cap_w())
        caps, imports, _ = self.ctrl.instructions.step_values(now, 96, 900)
        assert all(math.isfinite(x) for x in [*caps, *imports])


@contextmanager
def harness(tmp: Path) -> Iterator[Harness]:
    runner = asyncio.Runner()
    storage = Storage(f"sqlite:///{tmp / 'vpp.sqlite'}")

    async def make() -> Controller:  # asyncio objects of the controller belong to the loop
        return Controller(load_config(DEMO_CONFIG), clock=SimClock(start=T0, speed=1.0),
                          storage=storage)

    ctrl = runner.run(make())
    try:
        yield Harness(runner, ctrl, Commands(ctrl), storage)
    finally:
        runner.run(ctrl.close())
        storage.close()
        runner.close()


def test_any_body_of_any_command_is_applied_or_refused_with_a_reason(tmp_path: Path) -> None:
    with harness(tmp_path) as h:

        @FUZZ
        @given(data=st.data(), action=st.sampled_from(sorted(SPECS)))
        def run(data: st.DataObject, action: str) -> None:
            body = data.draw(bodies(action), label="body")
            before = h.state()
            out = h.runner.run(h.commands.execute(ADMIN, "fuzz", action, body))
            note(f"{out}")
            assert out.action == action
            if out.ok:
                assert out.status == 200
                h.check_usable()
                json.dumps(out.result, default=str, allow_nan=False)  # an answer can be sent
            else:
                assert 400 <= out.status < 500 and out.detail.strip(), out
                assert h.state() == before, "a refused command changed the controller"

        run()


# -- over MQTT -----------------------------------------------------------------------------

class Recording(MqttBridge):
    """A bridge that is never connected: what it would publish is kept."""

    def __init__(self) -> None:
        super().__init__(host="127.0.0.1", port=1, site="demo-county")
        self.sent: list[tuple[str, dict[str, Any], int]] = []

    def publish(self, subtopic: str, payload: dict[str, Any], *, qos: int = 0,
                retain: bool = False) -> None:
        super().publish(subtopic, payload, qos=qos, retain=retain)  # it must serialise
        self.sent.append((subtopic, payload, qos))


subtopics = st.one_of(st.sampled_from(sorted(SPECS)),
                      st.text(st.characters(blacklist_characters="+#\x00"), max_size=12))


def payloads(token: str) -> st.SearchStrategy[bytes]:
    envelope = st.fixed_dictionaries({}, optional={
        "token": st.sampled_from([token, "vpp_not-a-token", ""]) | json_scalars,
        "id": json_values, "schema": st.sampled_from([1, 2, "1"]) | json_scalars})
    shaped_body = st.tuples(st.sampled_from(sorted(SPECS)).flatmap(lambda a: BODIES[a]),
                            envelope).map(lambda be: {**be[0], **be[1]}
                                          if isinstance(be[0], dict) else be[0])
    return st.one_of(
        st.binary(max_size=200),
        shaped_body.map(lambda b: json.dumps(b, allow_nan=True).encode()),
        st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n),  # deeper than Python goes
        st.integers(1, 5000).map(lambda n: b'{"id": ' + b"1" * n + b"}"),
        st.sampled_from([b"", b"null", b"{}", b'"x"', b"\xff\xfe{}", b"NaN", b"[1e999]"]))


def test_any_mqtt_payload_is_answered_once_on_ack(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        tokens = Tokens(h.storage)
        token = tokens.create("fuzz-admin", "admin", T0)
        bridge = Recording()
        on_command = MqttCommands(h.commands, tokens, bridge)

        @FUZZ
        @given(subtopic=subtopics, payload=payloads(token))
        def run(subtopic: str, payload: bytes) -> None:
            note(repr(payload[:300]))
            before = h.state()
            bridge.sent.clear()
            h.runner.run(on_command(subtopic, payload))
            assert len(bridge.sent) == 1, bridge.sent
            topic, answer, qos = bridge.sent[0]
            assert topic == f"cmd/{subtopic.strip('/')}/ack" and qos == 1
            assert isinstance(answer["ok"], bool) and isinstance(answer["detail"], str)
            if not answer["ok"]:
                assert answer["detail"].strip() and 400 <= answer["status"] < 500, answer
                assert h.state() == before, "a refused command changed the controller"

        run()
        bridge.close()


# -- what the fuzzers found, kept as plain tests -------------------------------------------

def test_an_export_profile_ending_past_the_year_9999_is_refused(tmp_path: Path) -> None:
    # found: ExportProfile.end overflowed (OverflowError out of Commands.execute)
    body = {"instruction": {"kind": "export_profile", "start": "9999-12-31T23:59:59-12:00",
                            "step_s": 1, "export_w": [0.0]}}
    with harness(tmp_path) as h:
        before = h.state()
        out = h.runner.run(h.commands.execute(ADMIN, "fuzz", "grid-instruction", body))
        assert (out.ok, out.status) == (False, 422)
        assert "instruction.export_profile.start: Value error, lies outside the years 1 to " \
               "9999 in UTC" in out.detail
        body["instruction"]["start"] = "9999-12-31T00:00:00+00:00"
        body["instruction"]["step_s"] = 86400
        out = h.runner.run(h.commands.execute(ADMIN, "fuzz", "grid-instruction", body))
        assert (out.ok, out.status) == (False, 422)
        assert "its end (start + step_s × len(export_w)) lies past the year 9999" in out.detail
        assert h.state() == before


def test_a_cap_effective_outside_the_utc_calendar_is_refused(tmp_path: Path) -> None:
    # hardened with it: such a cap was accepted, an instant no UTC clock reaches
    with harness(tmp_path) as h:
        before = h.state()
        for effective in ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"):
            out = h.runner.run(h.commands.execute(ADMIN, "fuzz", "cap", {
                "export_cap_w": 1e6, "effective": effective}))
            assert (out.ok, out.status) == (False, 422) and "effective" in out.detail
        assert h.state() == before


def test_an_mqtt_payload_nested_too_deep_is_answered_not_raised(tmp_path: Path) -> None:
    # found: json.loads raised RecursionError out of MqttCommands for b"[" * 100000
    with harness(tmp_path) as h:
        bridge = Recording()
        on_command = MqttCommands(h.commands, Tokens(h.storage), bridge)
        h.runner.run(on_command("cap", b"[" * 100_000 + b"]" * 100_000))
        ((topic, answer, _),) = bridge.sent
        assert topic == "cmd/cap/ack" and answer["status"] == 422
        assert answer["detail"].startswith("the payload is not JSON: maximum recursion depth")
        bridge.close()
