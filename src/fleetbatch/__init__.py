"""fleetbatch: batch tasks over IoT device fleets, with Huawei IoTDA-compatible interfaces."""

__version__ = "0.1.0"
