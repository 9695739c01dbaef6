"""Commands from outside (HTTP or MQTT): validated, authorised, applied, audited.

One path for every channel: :meth:`Commands.execute` checks the sender's role, validates the
body against the command's schema, applies it to the controller and writes the audit log
entry (who, when, what, result) before the answer goes out. A refused command changes
nothing and says why.

Commands (docs/api.md, docs/mqtt.md):

* ``cap``: ``export_cap_w`` from ``effective`` (default: now); at most the connection's
  configured cap;
* ``grid-instruction``: a demand-response window or a requested export profile;
* ``mode``: ``auto`` (the configured planner) or ``reactive`` (no optimisation: the
  real-time limiter alone, e.g. while the forecasts are in doubt); the cap is enforced in
  every mode;
* ``alarm-ack``: acknowledge an alarm by its key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from vpp.alarms import UnknownAlarmError
from vpp.auth import DeniedError, Permission, Principal, Tokens, authorize
from vpp.instructions import DemandResponse, ExportProfile
from vpp.mqtt import SCHEMA_VERSION, MqttBridge

if TYPE_CHECKING:
    from vpp.controller import Controller

log = logging.getLogger(__name__)

MODES = ("auto", "reactive")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _in_utc(t: datetime) -> datetime:
    try:
        t.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-12:00 is in the year 10000 in UTC
        raise ValueError("lies outside the years 1 to 9999 in UTC") from None
    return t


# an instant with its offset that the controller can compute with
Instant = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class CapCommand(_Body):
    export_cap_w: float = Field(gt=0, allow_inf_nan=False,
                                description="the export cap [W] from `effective` on")
    effective: Instant | None = Field(
        default=None, description="when it takes effect (ISO 8601 with offset); default now")


class ModeCommand(_Body):
    mode: Literal["auto", "reactive"]


class DemandResponseCommand(_Body):
    kind: Literal["demand_response"]
    start: Instant
    end: Instant
    export_reduction_w: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    import_reduction_w: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class ExportProfileCommand(_Body):
    kind: Literal["export_profile"]
    start: Instant
    step_s: int = Field(gt=0, le=86400)
    export_w: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _end_exists(self) -> Self:
        try:
            _in_utc(self.start + timedelta(seconds=self.step_s * len(self.export_w)))
        except (OverflowError, ValueError):
            raise ValueError("its end (start + step_s × len(export_w)) lies past the year "
                             "9999") from None
        return self


class GridInstructionCommand(_Body):
    instruction: Annotated[DemandResponseCommand | ExportProfileCommand,
                           Field(discriminator="kind")]


class AlarmAckCommand(_Body):
    alarm: str = Field(min_length=1, max_length=96)


@dataclass(frozen=True)
class Spec:
    body: type[_Body]
    permission: Permission


SPECS: dict[str, Spec] = {
    "cap": Spec(CapCommand, Permission.SEND_CAP),
    "grid-instruction": Spec(GridInstructionCommand, Permission.SEND_CAP),
    "mode": Spec(ModeCommand, Permission.SET_MODE),
    "alarm-ack": Spec(AlarmAckCommand, Permission.ACK_ALARM),
}


@dataclass
class Outcome:
    """How a command ended: applied (``ok``) or refused with ``status`` and the reason."""

    action: str
    ok: bool
    status: int  # the HTTP status it maps to
    detail: str
    result: dict[str, Any] = field(default_factory=dict)
    audit_id: int | None = None


def validation_reason(exc: ValidationError) -> str:
    """Each problem as ``field: what is wrong (got value)``."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e["loc"]) or "body"
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        parts.append(f"{where}: {e['msg']}{got}")
    return "; ".join(parts)


class Commands:
    """The one owner of applying commands to a controller."""

    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl

    async def execute(self, principal: Principal | None, channel: str, action: str,
                      body: Any, *, refused: Outcome | None = None) -> Outcome:
        """Apply (unless the channel already ``refused`` it, e.g. unreadable), then audit."""
        out = refused
        if out is None:
            try:
                out = self._run(principal, action, body)
            except DeniedError as exc:
                out = Outcome(action, False, exc.status, exc.reason)
        if out.ok and not await self.ctrl.settle():
            out.detail += " (applied, but storing it failed: a restart would not resume it)"
        who = principal.name if principal else "unauthenticated"
        role = principal.role.value if principal else "-"
        params = body if isinstance(body, dict) else {"body": repr(body)[:200]}
        params = {k: v for k, v in params.items() if k != "token"}
        st = self.ctrl.storage
        if st is not None:
            try:
                out.audit_id = await asyncio.to_thread(
                    st.write_audit, ts=self.ctrl.clock.now(), actor=who, role=role,
                    channel=channel, action=action, params=params, ok=out.ok,
                    detail=out.detail)
            except Exception:  # applied is applied: the answer says the audit failed
                log.exception("audit log write failed for %s by %s", action, who)
                out.detail += " (the audit log could not be written)"
        (log.info if out.ok else log.warning)("command %s by %s (%s, %s): %s", action, who,
                                              role, channel, out.detail)
        return out

    def _run(self, principal: Principal | None, action: str, body: Any) -> Outcome:
        spec = SPECS.get(action)
        if spec is None:
            return Outcome(action, False, 404,
                           f"unknown command {action!r}; commands are {sorted(SPECS)}")
        authorize(principal, spec.permission)
        assert principal is not None
        if not isinstance(body, dict):
            return Outcome(action, False, 422, "the body must be a JSON object")
        try:
            cmd = spec.body.model_validate(body)
        except ValidationError as exc:
            return Outcome(action, False, 422, validation_reason(exc))
        try:
            detail, result = self._apply(principal, cmd)
        except UnknownAlarmError as exc:
            return Outcome(action, False, 404, str(exc.args[0]))
        except ValueError as exc:
            return Outcome(action, False, 422, str(exc))
        return Outcome(action, True, 200, detail, result)

    def _apply(self, who: Principal, cmd: _Body) -> tuple[str, dict[str, Any]]:
        ctrl = self.ctrl
        now = ctrl.clock.now()
        if isinstance(cmd, CapCommand):
            limit = ctrl.config.pcc.export_cap_w
            if cmd.export_cap_w > limit:
                raise ValueError(f"export_cap_w: {cmd.export_cap_w:g} W is above the "
                                 f"connection's cap ({limit:g} W, pcc.export_cap_w)")
            effective = cmd.effective or now
            ctrl.instruct_cap(effective, cmd.export_cap_w)
            return (f"export cap {cmd.export_cap_w / 1e6:g} MW from {effective.isoformat()}",
                    {"export_cap_w": cmd.export_cap_w, "effective": effective})
        if isinstance(cmd, GridInstructionCommand):
            ins = cmd.instruction
            if isinstance(ins, DemandResponseCommand):
                ctrl.instruct_demand_response(DemandResponse(
                    start=ins.start, end=ins.end, export_reduction_w=ins.export_reduction_w,
                    import_reduction_w=ins.import_reduction_w))
                return (f"demand response {ins.start.isoformat()} to {ins.end.isoformat()}",
                        ins.model_dump())
            ctrl.instruct_export_profile(ExportProfile(
                start=ins.start, step_s=ins.step_s, export_w=tuple(ins.export_w)))
            return (f"export profile of {len(ins.export_w)} steps from {ins.start.isoformat()}",
                    {"start": ins.start, "step_s": ins.step_s, "steps": len(ins.export_w)})
        if isinstance(cmd, ModeCommand):
            before = ctrl.set_operating_mode(cmd.mode)
            return f"operating mode {cmd.mode} (was {before})", {"mode": cmd.mode,
                                                                 "previous": before}
        if isinstance(cmd, AlarmAckCommand):
            alarm = ctrl.acknowledge_alarm(cmd.alarm, who.name)
            return f"alarm {cmd.alarm} acknowledged", alarm.as_dict()
        raise AssertionError(type(cmd))



class MqttCommands:
    """Commands arriving on ``{prefix}/{site}/cmd/{command}``, answered on ``…/ack``.

    The payload is the command's body plus ``token`` (the sender's bearer token: MQTT
    3.1.1 does not tell a subscriber who published), an optional ``id`` the answer echoes,
    and ``schema`` (1, optional).
    """

    def __init__(self, commands: Commands, tokens: Tokens | None, mqtt: MqttBridge) -> None:
        self.commands, self.tokens, self.mqtt = commands, tokens, mqtt

    async def __call__(self, subtopic: str, payload: bytes) -> None:
        action = subtopic.strip("/")
        ident: Any = None
        token: Any = None
        refused = None
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[…" nested deep
            body = {"payload": payload[:200].decode(errors="replace")}
            refused = Outcome(action, False, 422, f"the payload is not JSON: {exc}")
        if isinstance(body, dict):
            ident = body.pop("id", None)
            token = body.pop("token", None)
            schema = body.pop("schema", SCHEMA_VERSION)
            if refused is None and schema != SCHEMA_VERSION:
                refused = Outcome(action, False, 422, f"schema: {schema!r} is not "
                                                      f"supported; send {SCHEMA_VERSION}")
        who = (await self.tokens.principal(token) if self.tokens is not None
               and isinstance(token, str) else None)
        out = await self.commands.execute(who, "mqtt", action, body, refused=refused)
        self.mqtt.publish(f"cmd/{action}/ack", {
            "id": ident, "command": action, "ok": out.ok, "status": out.status,
            "detail": out.detail, "result": out.result, "audit_id": out.audit_id,
            "at": self.commands.ctrl.clock.now()}, qos=1)
