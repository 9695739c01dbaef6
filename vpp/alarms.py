"""Alarms: conditions the controller sees, raised and cleared as they come and go, each
acknowledged by a person.

An alarm is keyed by what it is about (``device_offline:pv1``, ``pcc_meter_stale``,
``export_cap_exceeded``, ``dispatch_fallback``). Raising an active alarm again changes
nothing; clearing keeps it listed (inactive) until it is acknowledged, so nobody misses an
alarm that came and went overnight. A new raise after a clear needs a new acknowledgement.

Pure bookkeeping: the controller evaluates the conditions, stores and publishes the changes
this returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Alarm:
    key: str
    severity: Severity
    message: str
    active: bool
    raised_at: datetime
    cleared_at: datetime | None = None
    acked_by: str | None = None
    acked_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


class UnknownAlarmError(KeyError):
    pass


class AlarmBook:
    """The alarms to show: active ones, and cleared ones not yet acknowledged."""

    def __init__(self) -> None:
        self._alarms: dict[str, Alarm] = {}

    def load(self, rows: list[dict[str, Any]]) -> None:
        """The stored state (a restart keeps what was raised and not acknowledged)."""
        for r in rows:
            a = Alarm(**{**r, "severity": Severity(r["severity"])})
            if a.active or a.acked_at is None:
                self._alarms[a.key] = a

    def set(self, key: str, active: bool, now: datetime, *, message: str = "",
            severity: Severity = Severity.WARNING) -> Alarm | None:
        """The condition behind ``key`` is (or is not) present; the alarm if it changed."""
        cur = self._alarms.get(key)
        if active:
            if cur is not None and cur.active:
                return None
            new = Alarm(key=key, severity=severity, message=message, active=True,
                        raised_at=now)
        else:
            if cur is None or not cur.active:
                return None
            new = replace(cur, active=False, cleared_at=now)
            if new.acked_at is not None:  # acknowledged and gone: nothing left to show
                del self._alarms[key]
                return new
        self._alarms[key] = new
        return new

    def acknowledge(self, key: str, by: str, now: datetime) -> Alarm:
        cur = self._alarms.get(key)
        if cur is None:
            raise UnknownAlarmError(f"no alarm {key!r} to acknowledge; alarms are "
                               f"{sorted(self._alarms)}")
        new = replace(cur, acked_by=by, acked_at=now)
        if cur.active:
            self._alarms[key] = new
        else:
            del self._alarms[key]
        return new

    def active_keys(self) -> frozenset[str]:
        return frozenset(k for k, a in self._alarms.items() if a.active)

    def listed(self) -> list[Alarm]:
        """Active first (critical before warning), then by time raised, newest first."""
        return sorted(self._alarms.values(), key=lambda a: (
            not a.active, a.severity is not Severity.CRITICAL, -a.raised_at.timestamp()))
