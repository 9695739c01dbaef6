"""Fault injection at run time over HTTP: the control interface of ``vpp sim serve``.

An engineer (or a test, or ``vpp sim fault``) breaks a device of a served plant while a
controller runs against it, and mends it again:

- ``GET /faults``: the faults in force and everything done so far;
- ``POST /faults``: a :class:`sim.scenario.FaultAction` as JSON; 201 with its id; 422
  naming the field or the reason when the plant cannot suffer it (nothing is changed);
- ``DELETE /faults/{id}``: end a fault in force; 404 when none has this id;
- ``GET /plant``: the simulated time, the cap the meter judges by, and each device's
  values as its registers show them (what the controller should be reading).

Times are simulated POSIX seconds with an ISO 8601 copy. This is a test bench's
interface: it is served on loopback by default and has no authentication.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException

from sim.inject import Active, Event, FaultInjector
from sim.scenario import FaultAction, FaultType


def _iso(t_s: float | None) -> str | None:
    return None if t_s is None else datetime.fromtimestamp(t_s, UTC).isoformat()


def _finite(v: Any) -> Any:
    """JSON has no NaN or infinity: such a value is sent as its name ("nan")."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _active(a: Active) -> dict[str, Any]:
    action = {k: _finite(v) for k, v in a.action.model_dump(mode="json").items()
              if v is not None}
    return {"id": a.fault_id, **action, "since_s": a.since_s, "since": _iso(a.since_s),
            "until_s": a.until_s, "until": _iso(a.until_s)}


def _event(e: Event) -> dict[str, Any]:
    return {"id": e.fault_id, "t_s": e.t_s, "time": _iso(e.t_s), "device": e.device,
            "kind": e.kind, "action": e.action}


def control_app(injector: FaultInjector) -> FastAPI:
    """The HTTP app that injects faults into ``injector``'s plant. Its handlers are
    coroutines: they run in the event loop that steps the plant, never in a thread."""
    app = FastAPI(title="Simulated plant: fault control",
                  description="Break and mend the simulated plant's devices at run time.")
    sim = injector.sim

    @app.get("/faults")
    async def faults() -> dict[str, Any]:
        return {"active": [_active(a) for a in injector.active.values()],
                "events": [_event(e) for e in injector.events],
                "kinds": [k.value for k in FaultType],
                "devices": [d.id for d in sim.spec.devices()]}

    @app.post("/faults", status_code=201)
    async def inject(action: FaultAction) -> dict[str, Any]:
        try:
            fid = injector.inject(action)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return _active(injector.active[fid])

    @app.delete("/faults/{fault_id}")
    async def end(fault_id: int) -> dict[str, Any]:
        if fault_id not in injector.active:
            raise HTTPException(404, f"no fault {fault_id} in force (in force: "
                                f"{', '.join(map(str, injector.active)) or 'none'})")
        injector.end(fault_id)
        return _event(injector.events[-1])

    @app.get("/plant")
    async def plant() -> dict[str, Any]:
        p = sim.plant
        p.advance_to(sim.clock.time())
        return {"t_s": p.t_s, "time": _iso(p.t_s), "speed": sim.clock.speed,
                "export_w": p.export_w, "export_cap_w": p.export_cap_w,
                "devices": {d.id: {k: _finite(v) for k, v in p.device_values(d.id).items()}
                            for d in sim.spec.devices()}}

    return app
