"""Modbus RTU probes on an RS-485 serial port (a USB adapter or a HAT on the gateway).

One reader per probe (slave id + register map); readers naming the same port share one open port
and never overlap requests (edge_agent/sensors/modbus_bus.py). Baud rate, parity and the like
default to the register map's (the probe's factory settings); every probe on a port must agree.
"""

from __future__ import annotations

from typing import Literal

from . import READERS, ReaderSettings
from .modbus_bus import ModbusBus, ModbusProbeReader, ProbeSettings, RegisterMap, acquire_bus, bus_client


class ModbusRtuReaderSettings(ReaderSettings, ProbeSettings):
    type: Literal["modbus_rtu"] = "modbus_rtu"
    port: str = "/dev/ttyUSB0"
    baudrate: int | None = None
    bytesize: Literal[7, 8] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None


class ModbusRtuReader(ModbusProbeReader):
    def __init__(self, settings: ModbusRtuReaderSettings) -> None:
        super().__init__(settings, self._open)
        self.rtu = settings

    def _open(self, regmap: RegisterMap) -> ModbusBus:
        s, d = self.rtu, regmap.defaults
        line = (
            s.baudrate or d.baudrate,
            s.bytesize or d.bytesize,
            s.parity or d.parity,
            s.stopbits or d.stopbits,
        )
        baudrate, bytesize, parity, stopbits = line
        return acquire_bus(
            ("rtu", s.port),
            f"modbus rtu {s.port}",
            lambda: bus_client(
                "rtu",
                port=s.port,
                baudrate=baudrate,
                bytesize=bytesize,
                parity=parity,
                stopbits=stopbits,
                timeout=s.timeout_s,
            ),
            (*line, s.timeout_s),
        )


READERS.register(ModbusRtuReaderSettings, ModbusRtuReader)
