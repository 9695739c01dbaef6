"""The simulated plant: device physics served over real Modbus TCP, for hardware-in-the-loop runs.

``sim`` never imports ``vpp``: it is the plant, and the plant does not know its controller.
"""

from sim.clock import SimClock, WallClock
from sim.plant import Plant, RunStats
from sim.serve import SimulatedPlant
from sim.spec import (
    BatterySpec,
    Endpoint,
    LoadSpec,
    MeterSpec,
    PlantSpec,
    PvSpec,
    WeatherSpec,
    WindSpec,
)

__all__ = [
    "BatterySpec",
    "Endpoint",
    "LoadSpec",
    "MeterSpec",
    "Plant",
    "PlantSpec",
    "PvSpec",
    "RunStats",
    "SimClock",
    "SimulatedPlant",
    "WallClock",
    "WeatherSpec",
    "WindSpec",
]
