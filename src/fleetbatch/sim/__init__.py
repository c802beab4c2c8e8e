"""The device simulator: every device of a fleet file on its own MQTT connection, behaving as
Huawei's device SDK does (spec: device-mqtt), cheaply enough to be any benchmark's load.

`Simulator` runs devices in the current event loop; `fleetbatch.sim.command.run_sim` is the
`fleetbatch sim` command (one process or several).
"""

from fleetbatch.sim.behavior import Behavior, Latency, parse_behavior, resolve, resolve_texts
from fleetbatch.sim.fleet import FleetDevice, FleetFile, load_fleet
from fleetbatch.sim.runner import Simulator
from fleetbatch.sim.stats import SimStats

__all__ = [
    "Behavior",
    "FleetDevice",
    "FleetFile",
    "Latency",
    "SimStats",
    "Simulator",
    "load_fleet",
    "parse_behavior",
    "resolve",
    "resolve_texts",
]
