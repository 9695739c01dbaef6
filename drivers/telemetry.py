"""The telemetry sample: the small type shared by the drivers, the controller and storage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Quality(StrEnum):
    """How far a value can be trusted.

    good: read now, decoded, inside its physical range.
    stale: the last good value, older than its poll class allows.
    bad: read, but a sentinel, NaN or outside its physical range: never use it.
    missing: never read, or the device did not answer.
    """

    GOOD = "good"
    STALE = "stale"
    BAD = "bad"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Sample:
    """One decoded value of one point, in SI units, with its read time and quality."""

    asset_id: str
    point: str
    value: float | None
    unit: str
    ts: datetime
    quality: Quality

    @property
    def usable(self) -> bool:
        """Only a good value may be used as a measurement."""
        return self.quality is Quality.GOOD and self.value is not None
