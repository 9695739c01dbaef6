"""Async Modbus device drivers; register maps are data files in ``drivers/profiles``."""

from drivers.modbus import Device, DeviceError, Health, ModbusConnection, WriteResult, plan_reads
from drivers.profile import (
    Access,
    Capability,
    Point,
    PollClass,
    Profile,
    ProfileError,
    Table,
    load_profile,
    shipped_profiles,
)
from drivers.registers import RegisterType, WordOrder, decode, encode
from drivers.telemetry import Quality, Sample

__all__ = [
    "Access",
    "Capability",
    "Device",
    "DeviceError",
    "Health",
    "ModbusConnection",
    "Point",
    "PollClass",
    "Profile",
    "ProfileError",
    "Quality",
    "RegisterType",
    "Sample",
    "Table",
    "WordOrder",
    "WriteResult",
    "decode",
    "encode",
    "load_profile",
    "plan_reads",
    "shipped_profiles",
]
