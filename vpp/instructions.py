"""The grid company's instructions, as the plan and the real-time loop take them.

Three kinds, each stamped with when it takes effect:

* **cap**: from ``effective`` on, export ≤ ``export_cap_w`` (until the next cap);
* **demand response**: during ``[start, end)`` reduce export by ``export_reduction_w`` (the
  cap in force, lowered) and/or import by ``import_reduction_w`` (the import limit, lowered);
* **export profile**: a requested export per plan step over ``[start, end)``, which the
  plan tracks at a price (``dispatch.tracking_weight_per_wh``); the cap still wins.

Pure: no I/O, no clock. The controller owns one and asks it for the numbers of each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

# what is kept of the instructions that have ended: enough to explain the last plans
KEEP_ENDED = timedelta(days=2)


def _aware(t: datetime, name: str) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"{name}: {t.isoformat()} has no timezone; give an aware time "
                         "(e.g. 2026-04-15T13:00:00+08:00)")
    return t


@dataclass(frozen=True, kw_only=True)
class DemandResponse:
    start: datetime
    end: datetime
    export_reduction_w: float = 0.0
    import_reduction_w: float = 0.0

    def __post_init__(self) -> None:
        _aware(self.start, "start")
        _aware(self.end, "end")
        if not self.end > self.start:
            raise ValueError(f"demand response: end {self.end.isoformat()} must come after "
                             f"start {self.start.isoformat()}")
        for name in ("export_reduction_w", "import_reduction_w"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"demand response: {name} = {v} must be a number ≥ 0 W")
        if self.export_reduction_w == 0 and self.import_reduction_w == 0:
            raise ValueError("demand response: give export_reduction_w or import_reduction_w "
                             "(> 0 W)")


@dataclass(frozen=True, kw_only=True)
class ExportProfile:
    start: datetime
    step_s: int
    export_w: tuple[float, ...]

    def __post_init__(self) -> None:
        _aware(self.start, "start")
        if not self.export_w:
            raise ValueError("export profile: export_w is empty")
        bad = [i for i, v in enumerate(self.export_w) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"export profile: export_w[{bad[0]}] = {self.export_w[bad[0]]} "
                             "is not a number")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.step_s * len(self.export_w))


class GridInstructions:
    """Caps, demand-response windows and requested export profiles in force or to come."""

    def __init__(self, *, export_cap_w: float, import_limit_w: float) -> None:
        self.base_cap_w = export_cap_w
        self.base_import_w = import_limit_w
        self.caps: list[tuple[datetime, float]] = []  # (effective, cap)
        self.responses: list[DemandResponse] = []
        self.profiles: list[ExportProfile] = []

    # -- instructing ----------------------------------------------------------------------

    def set_cap(self, effective: datetime, export_cap_w: float) -> None:
        _aware(effective, "effective")
        if not (math.isfinite(export_cap_w) and export_cap_w > 0):
            raise ValueError(f"export_cap_w must be > 0 W, got {export_cap_w}")
        self.caps = sorted([*(c for c in self.caps if c[0] != effective),
                            (effective, export_cap_w)])

    def add_demand_response(self, dr: DemandResponse) -> None:
        self.responses = sorted([*self.responses, dr], key=lambda d: d.start)

    def set_profile(self, profile: ExportProfile) -> None:
        """A new profile replaces the steps of older ones it covers."""
        self.profiles = [p for p in self.profiles
                         if p.end <= profile.start or p.start >= profile.end] + [profile]

    def forget_before(self, t: datetime) -> None:
        """Drop what ended more than :data:`KEEP_ENDED` before ``t`` (caps: all but the
        last one in force)."""
        old = t - KEEP_ENDED
        past = [c for c in self.caps if c[0] <= old]
        self.caps = past[-1:] + [c for c in self.caps if c[0] > old]
        self.responses = [d for d in self.responses if d.end > old]
        self.profiles = [p for p in self.profiles if p.end > old]

    # -- reading --------------------------------------------------------------------------

    def cap_at(self, t: datetime) -> float:
        """The cap in force at ``t`` [W], demand response included."""
        cap = self.base_cap_w
        for effective, c in self.caps:
            if effective > t:
                break
            cap = c
        cut = sum(d.export_reduction_w for d in self.responses if d.start <= t < d.end)
        return max(0.0, cap - cut)

    def import_limit_at(self, t: datetime) -> float:
        cut = sum(d.import_reduction_w for d in self.responses if d.start <= t < d.end)
        return max(0.0, self.base_import_w - cut)

    def changes_after(self, t: datetime) -> list[tuple[datetime, float]]:
        """(time, cap) of every change of the cap after ``t``."""
        times = sorted({*(c[0] for c in self.caps), *(d.start for d in self.responses),
                        *(d.end for d in self.responses)})
        return [(x, self.cap_at(x)) for x in times if x > t]

    def lowest_cap_from(self, t: datetime) -> float:
        return min([self.cap_at(t), *(c for _, c in self.changes_after(t))])

    def step_values(self, start: datetime, steps: int, step_s: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per plan step: the lowest cap in force during it, the lowest import limit, and the
        requested export (NaN where none; None when no profile touches the plan)."""
        edges = [start + timedelta(seconds=k * step_s) for k in range(steps + 1)]
        changes = sorted({*(c[0] for c in self.caps), *(d.start for d in self.responses),
                          *(d.end for d in self.responses)})
        cap, imp = np.empty(steps), np.empty(steps)
        for k in range(steps):
            lo, hi = edges[k], edges[k + 1]
            inside = [lo, *(x for x in changes if lo < x < hi)]
            cap[k] = min(self.cap_at(x) for x in inside)
            imp[k] = min(self.import_limit_at(x) for x in inside)
        track: np.ndarray | None = None
        for p in self.profiles:
            for k in range(steps):
                mid = edges[k] + timedelta(seconds=step_s / 2)
                if p.start <= mid < p.end:
                    if track is None:
                        track = np.full(steps, np.nan)
                    i = int((mid - p.start).total_seconds() // p.step_s)
                    track[k] = p.export_w[i]
        return cap, imp, track


# -- as stored (a restart resumes them) ------------------------------------------------------

Instruction = tuple[datetime, float] | DemandResponse | ExportProfile  # a cap: (effective, W)


def to_record(ins: Instruction) -> tuple[str, datetime | None, dict[str, Any]]:
    """(kind, when it stops mattering (None: a cap, in force until the next), JSON body)."""
    if isinstance(ins, DemandResponse):
        return "demand_response", ins.end, {
            "start": ins.start.isoformat(), "end": ins.end.isoformat(),
            "export_reduction_w": ins.export_reduction_w,
            "import_reduction_w": ins.import_reduction_w}
    if isinstance(ins, ExportProfile):
        return "export_profile", ins.end, {"start": ins.start.isoformat(),
                                           "step_s": ins.step_s, "export_w": list(ins.export_w)}
    effective, cap_w = ins
    return "cap", None, {"effective": effective.isoformat(), "export_cap_w": cap_w}


def apply_record(book: GridInstructions, kind: str, b: dict[str, Any]) -> None:
    """Put a stored instruction back (as it was given: in the order they were)."""
    if kind == "cap":
        book.set_cap(datetime.fromisoformat(str(b["effective"])), float(b["export_cap_w"]))
    elif kind == "demand_response":
        book.add_demand_response(DemandResponse(
            start=datetime.fromisoformat(str(b["start"])),
            end=datetime.fromisoformat(str(b["end"])),
            export_reduction_w=float(b["export_reduction_w"]),
            import_reduction_w=float(b["import_reduction_w"])))
    elif kind == "export_profile":
        book.set_profile(ExportProfile(
            start=datetime.fromisoformat(str(b["start"])), step_s=int(b["step_s"]),
            export_w=tuple(float(v) for v in b["export_w"])))
    else:
        raise ValueError(f"stored instruction of unknown kind {kind!r}")
