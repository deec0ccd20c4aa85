"""A simulated Modbus probe: pymodbus's own server serving register values, over TCP or serial.

The demo runs one (``python -m cropwatch.demo.modbus_probe --port N``) serving a three-in-one soil
probe and an NPK probe whose values drift, read by one demo agent through the ``modbus_tcp``
reader; the Modbus tests and ``bench/modbus.py`` use :class:`ProbeServer` as the probe on the bus.
A slave listed in ``silent`` never answers (a dead probe: the master times out); reading an
address the slave does not define answers exception code 2 (illegal data address).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import signal
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Table = str  # "holding" or "input"
Registers = Mapping[tuple[Table, int], int]  # (table, address) -> 16-bit word


def words(value: float, data_type: str, word_order: str = "big") -> list[int]:
    """The register words a probe sends for ``value`` (the inverse of the reader's decode)."""
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}[data_type]
    raw = struct.pack(fmt, value if data_type == "float32" else round(value))
    out = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(out)) if word_order == "little" else out


class ProbeServer:
    """pymodbus's server on its own thread and event loop; ``set`` changes what a slave reports."""

    def __init__(
        self,
        slaves: Mapping[int, Registers],
        *,
        tcp: tuple[str, int] | None = None,
        serial_port: str | None = None,
        baudrate: int = 9600,
        silent: Iterable[int] = (),
    ) -> None:
        if (tcp is None) == (serial_port is None):
            raise ValueError("give tcp=(host, port) or serial_port")
        self.store: dict[int, dict[tuple[Table, int], int]] = {s: dict(r) for s, r in slaves.items()}
        self.tcp, self.serial_port, self.baudrate = tcp, serial_port, baudrate
        self.silent = set(silent)
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._done = asyncio.Event()  # bound to the server's loop at first use (Python 3.10+)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modbus-probe", daemon=True)
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def set(self, slave: int, table: Table, address: int, values: list[int]) -> None:
        for i, w in enumerate(values):
            self.store[slave][(table, address + i)] = w & 0xFFFF

    def _devices(self) -> list[Any]:
        from pymodbus.simulator import SimData, SimDevice
        from pymodbus.simulator.simutils import DataType

        devices = []
        for slave, regs in self.store.items():
            blocks: dict[Table, list[Any]] = {"holding": [], "input": []}
            for table in blocks:
                for address in sorted(a for t, a in regs if t == table):
                    blocks[table].append(SimData(address, values=[regs[(table, address)]], datatype=DataType.REGISTERS))
            bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
            none = [SimData(0, count=1, datatype=DataType.INVALID)]
            devices.append(
                SimDevice(
                    id=slave,
                    simdata=(bits, list(bits), blocks["holding"] or none, blocks["input"] or list(none)),
                    action=self._action(slave),
                )
            )
        return devices

    def _action(self, slave: int) -> Any:
        # Called by pymodbus before it answers a request: copy the current values into its block.
        async def fresh(
            function_code: int, start: int, address: int, count: int, current: list[int], set_values: Any
        ) -> None:
            table = "input" if function_code == 4 else "holding"
            regs = self.store[slave]
            for i in range(count):
                value = regs.get((table, address + i))
                if value is not None:
                    current[address + i - start] = value

        return fresh

    def _drop_silent(self, sending: bool, packet: bytes) -> bytes:
        if sending and packet:
            unit = packet[6] if self.tcp is not None and len(packet) > 6 else packet[0]
            if unit in self.silent:
                return b""
        return packet

    def _run(self) -> None:
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        async def serve() -> None:
            if self.tcp is not None:
                self._server = ModbusTcpServer(self._devices(), address=self.tcp, trace_packet=self._drop_silent)
            else:
                self._server = ModbusSerialServer(
                    self._devices(), port=self.serial_port or "", baudrate=self.baudrate, trace_packet=self._drop_silent
                )
            await self._server.serve_forever(background=True)
            self._ready.set()
            await self._done.wait()

        try:
            self._loop.run_until_complete(serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> ProbeServer:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"the Modbus probe server did not start: {self._error!r}")
        return self

    async def _shutdown(self) -> None:
        await self._server.shutdown()
        self._server = None
        self._done.set()

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._thread.join(10)

    def __enter__(self) -> ProbeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def demo_values(t: float, rng: random.Random) -> dict[int, dict[int, int]]:
    """Plausible drifting readings at time ``t`` (seconds), as register words per slave: a
    soil_mte_3in1 at slave 1 and a soil_npk at slave 2 (edge_agent/sensors/maps/)."""
    day = math.sin(t / 86400 * 2 * math.pi)
    slow = math.sin(t / 600)
    moisture = 28 + 4 * slow + rng.gauss(0, 0.3)
    temperature = 17 + 5 * day + rng.gauss(0, 0.2)
    ec = 850 + 60 * slow + rng.gauss(0, 10)
    return {
        1: {0: round(moisture * 10), 1: words(temperature * 10, "int16")[0], 2: round(ec)},
        2: {
            0x1E: round(42 + 3 * slow + rng.gauss(0, 1)),
            0x1F: round(18 + rng.gauss(0, 1)),
            0x20: round(95 + rng.gauss(0, 2)),
        },
    }


# What the demo adds to one agent's config: the two probes on one bus, each its own sensors source.
DEMO_SOURCES = """
# A simulated RS-485 bus behind a Modbus TCP gateway (cropwatch/demo/modbus_probe.py): two probes,
# one connection, requests in turn.
[[sources]]
type = "sensors"
name = "modbus-soil"
interval_s = 15.0

[sources.reader]
type = "modbus_tcp"
host = "127.0.0.1"
port = {port}
map = "soil_mte_3in1"
slave_id = 1

[[sources.channels]]
sensor = "probe1"
quantity = "soil_moisture"

[[sources.channels]]
sensor = "probe1"
quantity = "soil_temperature"

[[sources.channels]]
sensor = "probe1"
quantity = "soil_ec"

[[sources]]
type = "sensors"
name = "modbus-npk"
interval_s = 15.0

[sources.reader]
type = "modbus_tcp"
host = "127.0.0.1"
port = {port}
map = "soil_npk"
slave_id = 2

[[sources.channels]]
sensor = "npk1"
quantity = "nitrogen"

[[sources.channels]]
sensor = "npk1"
quantity = "phosphorus"

[[sources.channels]]
sensor = "npk1"
quantity = "potassium"
"""


def drifting_probe(port: int, host: str = "127.0.0.1", every_s: float = 2.0) -> ProbeServer:
    """The demo's two probes on ``host:port``, their values drifting every ``every_s`` seconds."""
    rng = random.Random(7)
    slaves = {s: {("holding", a): w for a, w in regs.items()} for s, regs in demo_values(time.time(), rng).items()}
    server = ProbeServer(slaves, tcp=(host, port)).start()

    def drift() -> None:
        while server.running:
            time.sleep(every_s)
            for slave, regs in demo_values(time.time(), rng).items():
                for address, word in regs.items():
                    server.set(slave, "holding", address, [word])

    threading.Thread(target=drift, name="modbus-probe-drift", daemon=True).start()
    return server


def start_demo_probe(agent_config: Path, port: int) -> ProbeServer:
    """Serve the demo's probes on ``port`` (threads of the demo process, like the photo dropper) and
    add their sources to the agent config at ``agent_config``."""
    server = drifting_probe(port)
    with agent_config.open("a", encoding="utf-8") as fh:
        fh.write(DEMO_SOURCES.format(port=port))
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cropwatch.demo.modbus_probe", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between value updates")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = drifting_probe(args.port, args.host, args.every)
    logger.info("simulated Modbus probes on %s:%d (slave 1 soil_mte_3in1, slave 2 soil_npk)", args.host, args.port)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
