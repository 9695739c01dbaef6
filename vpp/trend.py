"""The recent past at a coarse step, in memory: what the operator console draws.

One point per ``step_s`` of clock time (the first control step in each): PCC export, the
cap, the plan's expected export, the uncontrolled export (what export would be with no
curtailment and no storage), curtailment and each battery's SOC. Bounded by ``keep_s``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class TrendPoint:
    ts: datetime
    export_w: float | None
    export_cap_w: float
    planned_export_w: float | None
    uncontrolled_export_w: float | None
    curtailed_w: float | None
    soc: dict[str, float | None]


class Trend:
    def __init__(self, *, step_s: float = 60.0, keep_s: float = 24 * 3600.0) -> None:
        self.step_s = step_s
        self._points: deque[TrendPoint] = deque(maxlen=max(1, int(keep_s / step_s)))

    def due(self, now: datetime) -> bool:
        return not self._points or (now - self._points[-1].ts).total_seconds() >= self.step_s

    def add(self, point: TrendPoint) -> None:
        self._points.append(point)

    def since(self, t: datetime) -> dict[str, Any]:
        """Columns of the points at or after ``t``."""
        pts = [p for p in self._points if p.ts >= t]
        socs = sorted({k for p in pts for k in p.soc})
        return {
            "step_s": self.step_s,
            "ts": [p.ts for p in pts],
            "export_w": [p.export_w for p in pts],
            "export_cap_w": [p.export_cap_w for p in pts],
            "planned_export_w": [p.planned_export_w for p in pts],
            "uncontrolled_export_w": [p.uncontrolled_export_w for p in pts],
            "curtailed_w": [p.curtailed_w for p in pts],
            "soc": {b: [p.soc.get(b) for p in pts] for b in socs},
        }

    def last_hours(self, now: datetime, hours: float) -> dict[str, Any]:
        return self.since(now - timedelta(hours=hours))
