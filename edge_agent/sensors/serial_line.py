"""Serial sensors: one line per sample of ``quantity=value`` pairs, the simplest protocol a
microcontroller can speak (``soil_moisture=31.2 air_temperature=18.4``, spaces or commas between).

pyserial is optional: imported when the port is first opened; without it the tty is read as a file.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Protocol

from pydantic import Field

from . import READERS, ReaderSettings


class SerialReaderSettings(ReaderSettings):
    type: Literal["serial"] = "serial"
    port: str = "/dev/ttyUSB0"
    baudrate: int = 9600
    timeout_s: Annotated[float, Field(gt=0)] = 2.0


class _LineDevice(Protocol):
    def readline(self) -> bytes: ...

    def close(self) -> None: ...


def parse_line(line: str) -> dict[str, float]:
    """``a=1.5, b=2`` -> {"a": 1.5, "b": 2.0}; pairs that do not parse are skipped."""
    out: dict[str, float] = {}
    for part in line.replace(",", " ").split():
        key, sep, value = part.partition("=")
        if not sep:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number):
            out[key.strip()] = number
    return out


class SerialReader:
    """Reads one line from a serial port (pyserial when installed, else the tty as a file)."""

    def __init__(self, settings: SerialReaderSettings) -> None:
        self.settings = settings
        self._dev: _LineDevice | None = None

    def _open(self) -> _LineDevice:
        s = self.settings
        try:
            import serial  # type: ignore[import-untyped]

            device: _LineDevice = serial.Serial(s.port, s.baudrate, timeout=s.timeout_s)
            return device
        except ModuleNotFoundError:
            return open(s.port, "rb", buffering=0)

    def read(self) -> dict[str, float]:
        if self._dev is None:
            self._dev = self._open()
        raw = self._dev.readline()
        return parse_line(raw.decode("ascii", errors="replace"))

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None


READERS.register(SerialReaderSettings, SerialReader)
