"""Modbus TCP probes: a probe with an Ethernet port, or RS-485 probes behind a Modbus TCP gateway.

One reader per probe (slave id + register map); readers naming the same host and port share one
connection and take turns on it (edge_agent/sensors/modbus_bus.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from . import READERS, ReaderSettings
from .modbus_bus import ModbusBus, ModbusProbeReader, ProbeSettings, RegisterMap, acquire_bus, bus_client


class ModbusTcpReaderSettings(ReaderSettings, ProbeSettings):
    type: Literal["modbus_tcp"] = "modbus_tcp"
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502


class ModbusTcpReader(ModbusProbeReader):
    def __init__(self, settings: ModbusTcpReaderSettings) -> None:
        super().__init__(settings, self._open)
        self.tcp = settings

    def _open(self, regmap: RegisterMap) -> ModbusBus:
        s = self.tcp
        return acquire_bus(
            ("tcp", s.host, s.port),
            f"modbus tcp {s.host}:{s.port}",
            lambda: bus_client("tcp", host=s.host, port=s.port, timeout=s.timeout_s),
            (s.timeout_s,),
        )


READERS.register(ModbusTcpReaderSettings, ModbusTcpReader)
