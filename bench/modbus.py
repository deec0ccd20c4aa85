"""Readings per second one gateway sustains from a Modbus TCP bus: N probes on one endpoint served
by pymodbus's own server (cropwatch/demo/modbus_probe.py), polled through the ``modbus_tcp`` reader,
against a baseline of raw pymodbus client reads of the same registers in the same process.

    python bench/modbus.py                    # 8 probes (soil_mte_3in1, 3 registers each), 5 s per mode
    python bench/modbus.py --probes 32 --seconds 10

A "reading" is one value (a register map entry) delivered in its canonical unit; one probe poll is
one request of 3 registers. Both modes use one TCP connection and poll the probes in turn, as the
shared bus lock makes the agent do; the ratio is the reader's cost (plan, lock, decode, unit
conversion, error accounting) over the bare request. A real RS-485 line is far slower than either:
at 9600 baud one such request (8 bytes) and its answer (11 bytes) take about 27 ms of line time
with the silences between frames (~110 readings/s at most), so on a serial bus the line, not the
reader, is the limit.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cropwatch.demo.modbus_probe import ProbeServer, words
from edge_agent.sensors import READERS, build_reader
from edge_agent.sensors.modbus_bus import ModbusProbeReader


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(poll: Callable[[], int], seconds: float) -> tuple[float, int]:
    """Readings per second of ``poll`` (which returns the readings one round delivered) over ``seconds``."""
    poll()  # connect and warm up outside the clock
    readings = rounds = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        readings += poll()
        rounds += 1
    return readings / (time.perf_counter() - start), rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    port = free_port()
    slaves = {
        i: {("holding", 0): 283 + i, ("holding", 1): words(-101, "int16")[0], ("holding", 2): 1250}
        for i in range(1, args.probes + 1)
    }
    with ProbeServer(slaves, tcp=("127.0.0.1", port)):
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        client.connect()

        def raw_round() -> int:
            n = 0
            for slave in slaves:
                reply = client.read_holding_registers(0, count=3, device_id=slave)
                if reply.isError():
                    raise RuntimeError(f"slave {slave}: {reply}")
                n += len(reply.registers)
            return n

        readers: list[ModbusProbeReader] = []
        for slave in slaves:
            r = build_reader(
                READERS.parse({"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "map": "soil_mte_3in1",
                               "slave_id": slave, "timeout_s": 2})
            )  # fmt: skip
            assert isinstance(r, ModbusProbeReader)
            readers.append(r)

        def reader_round() -> int:
            return sum(len(r.read()) for r in readers)

        # Interleaved halves, so both modes see the same background load on a shared machine.
        half = args.seconds / 2
        raw, via = [], []
        for _ in range(2):
            raw.append(rate(raw_round, half))
            via.append(rate(reader_round, half))
        client.close()
        for r in readers:
            r.close()
    raw_rate = sum(x for x, _ in raw) / len(raw)
    via_rate = sum(x for x, _ in via) / len(via)
    print(f"probes on one Modbus TCP endpoint: {args.probes} (3 registers each, one request per probe poll)")
    print(f"raw pymodbus client reads : {raw_rate:8.0f} readings/s ({raw_rate / 3:7.0f} requests/s)")
    print(f"modbus_tcp reader         : {via_rate:8.0f} readings/s ({via_rate / 3:7.0f} requests/s)")
    print(f"reader / raw              : {via_rate / raw_rate:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
