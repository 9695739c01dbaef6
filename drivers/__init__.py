"""Async Modbus device drivers; register maps are data files in ``drivers/profiles``."""

from drivers.connection import DeviceError, ExceptionReply, ModbusConnection
from drivers.device import Device, Health, WriteError, WriteResult, plan_reads
from drivers.profile import (
    Access,
    Capability,
    Heartbeat,
    Point,
    PollClass,
    Profile,
    ProfileError,
    Table,
    load_profile,
    shipped_profiles,
)
from drivers.registers import RegisterType, WordOrder, decode, encode
from drivers.samples import SampleQueue
from drivers.telemetry import Quality, Sample

__all__ = [
    "Access",
    "Capability",
    "Device",
    "DeviceError",
    "ExceptionReply",
    "Health",
    "Heartbeat",
    "ModbusConnection",
    "Point",
    "PollClass",
    "Profile",
    "ProfileError",
    "Quality",
    "RegisterType",
    "Sample",
    "SampleQueue",
    "Table",
    "WordOrder",
    "WriteError",
    "WriteResult",
    "decode",
    "encode",
    "load_profile",
    "plan_reads",
    "shipped_profiles",
]
