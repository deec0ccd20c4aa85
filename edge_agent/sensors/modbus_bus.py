"""What the Modbus readers (``modbus_tcp``, ``modbus_rtu``) share: register maps, the bus, the probe.

A **register map** is a TOML file per device model (shipped ones in ``edge_agent/sensors/maps/``,
picked by name; a site's own by ``map_file``): the model's serial defaults and one
``[[registers]]`` table per value (address, ``register_type`` holding or input, data type and word order,
``value = raw * scale + offset`` in ``unit``, and the quantity it is). Values leave the reader in
the quantity's canonical unit (:func:`shared.quantities.to_canonical`).

A **bus** is one serial port or one TCP endpoint. Every reader of the process that names the same
one gets the same :class:`ModbusBus`: one pymodbus client and one lock, so probes on one RS-485
pair (or behind one TCP gateway) never have two requests in flight. A probe that times out or
answers with an exception code costs only its own reading: it is counted and logged, and the
other probes on the bus keep their turn.

pymodbus is imported when a bus is first opened (the ``modbus`` extra), so the agent starts and
validates configs without it.
"""

from __future__ import annotations

import logging
import struct
import threading
import tomllib
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.quantities import Quantity, UnknownUnit, to_canonical

logger = logging.getLogger(__name__)

MAPS_DIR = Path(__file__).with_name("maps")
DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
_WORDS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_STRUCT: dict[str, str] = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
MAX_BLOCK = 125  # registers one read request may ask for (Modbus application protocol, 6.3)


class RegisterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    address: Annotated[int, Field(ge=0, le=0xFFFF)] = Field(description="Protocol address (0-based, as on the wire).")
    register_type: Literal["holding", "input"] = "holding"
    data_type: DataType = "uint16"
    word_order: Literal["big", "little"] = Field(
        "big", description="32-bit types: big = high word at the lower address (ABCD), little = CDAB."
    )
    scale: float = 1.0
    offset: float = 0.0
    unit: str
    quantity: Quantity

    @model_validator(mode="after")
    def _unit_known(self) -> RegisterSpec:
        try:
            to_canonical(self.quantity, 0.0, self.unit)
        except UnknownUnit as exc:
            raise ValueError(f"register {self.name!r}: {exc}") from None
        return self

    @property
    def words(self) -> int:
        return _WORDS[self.data_type]


class SerialDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slave_id: Annotated[int, Field(ge=1, le=247)] = 1
    baudrate: int = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class RegisterMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    description: str = ""
    sources: list[str] = Field(description="Where the datasheet facts come from, and which are typical values only.")
    defaults: SerialDefaults = Field(default_factory=SerialDefaults)
    registers: Annotated[list[RegisterSpec], Field(min_length=1)]


def shipped_maps() -> list[str]:
    return sorted(p.stem for p in MAPS_DIR.glob("*.toml"))


def load_register_map(name: str | None = None, path: Path | None = None) -> RegisterMap:
    """A shipped map by ``name`` or a site's own TOML file at ``path``; errors name the file and the key."""
    if path is None:
        if name is None or name not in shipped_maps():
            raise ValueError(
                f"register map {name!r} is not shipped; use one of {', '.join(shipped_maps())} or map_file"
            )
        path = MAPS_DIR / f"{name}.toml"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"register map {path}: {exc}") from None
    try:
        return RegisterMap.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"register map {path}: {exc}") from None


def decode(words: list[int], spec: RegisterSpec) -> float:
    """The register words of one value (as read, lowest address first) -> the value in ``spec.unit``."""
    if len(words) != spec.words:
        raise ValueError(f"{spec.name}: {len(words)} registers for a {spec.data_type}")
    ordered = list(reversed(words)) if spec.word_order == "little" else words
    raw = struct.unpack(_STRUCT[spec.data_type], b"".join(w.to_bytes(2, "big") for w in ordered))[0]
    return float(raw) * spec.scale + spec.offset


@dataclass(frozen=True)
class Block:
    """Adjacent registers of one type read in one request; gaps are never read (many probes refuse them)."""

    register: Literal["holding", "input"]
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]


def plan_blocks(specs: list[RegisterSpec]) -> list[Block]:
    blocks: list[Block] = []
    for kind in ("holding", "input"):
        group = sorted((s for s in specs if s.register_type == kind), key=lambda s: s.address)
        current: list[RegisterSpec] = []
        for spec in group:
            end = current[0].address + sum(s.words for s in current) if current else -1
            if current and spec.address == end and end + spec.words - current[0].address <= MAX_BLOCK:
                current.append(spec)
            else:
                if current:
                    blocks.append(_block(kind, current))
                current = [spec]
        if current:
            blocks.append(_block(kind, current))
    return blocks


def _block(kind: Literal["holding", "input"], specs: list[RegisterSpec]) -> Block:
    return Block(kind, specs[0].address, sum(s.words for s in specs), tuple(specs))


class ModbusClient(Protocol):
    """The part of pymodbus's synchronous clients the bus uses (pymodbus ships types, but the
    response classes vary by function code; this keeps the reader's code typed against what it needs)."""

    def connect(self) -> bool: ...

    def close(self) -> None: ...

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Any: ...

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Any: ...


class ModbusTimeout(OSError):
    """No answer from the slave within the timeout (after the retries)."""


class ModbusExceptionReply(OSError):
    """The slave answered with a Modbus exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ModbusBus:
    """One serial port or TCP endpoint: one client, one lock, shared by every reader naming it."""

    def __init__(
        self, key: Hashable, describe: str, make_client: Callable[[], ModbusClient], settings: Hashable
    ) -> None:
        self.key = key
        self.describe = describe
        self.settings = settings
        self._make_client = make_client
        self._client: ModbusClient | None = None
        self.lock = threading.Lock()
        self.users = 0
        self.requests = 0

    def read(self, block: Block, slave_id: int) -> list[int]:
        """One request, holding the bus; raises ModbusTimeout, ModbusExceptionReply or OSError."""
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        with self.lock:
            self.requests += 1
            client = self._connected()
            fn = client.read_holding_registers if block.register == "holding" else client.read_input_registers
            try:
                reply = fn(block.address, count=block.count, device_id=slave_id)
            except ModbusIOException as exc:
                raise ModbusTimeout(f"{self.describe} slave {slave_id}: no answer ({exc})") from None
            except ConnectionException as exc:
                self._drop()
                raise OSError(f"{self.describe}: connection lost ({exc})") from None
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            raise ModbusExceptionReply(
                f"{self.describe} slave {slave_id}: exception code {code} reading {block.count} {block.register} "
                f"registers at {block.address}",
                code,
            )
        words = [int(w) for w in reply.registers]
        if len(words) != block.count:
            raise OSError(f"{self.describe} slave {slave_id}: {len(words)} registers for {block.count} asked")
        return words

    def _connected(self) -> ModbusClient:
        if self._client is None:
            client = self._make_client()
            if not client.connect():
                client.close()
                raise OSError(f"cannot open {self.describe}")
            self._client = client
        return self._client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        with self.lock:
            self._drop()


_BUSES: dict[Hashable, ModbusBus] = {}
_BUSES_LOCK = threading.Lock()


def acquire_bus(key: Hashable, describe: str, make_client: Callable[[], ModbusClient], settings: Hashable) -> ModbusBus:
    """The process's bus for ``key``, made on first use; readers of one bus must agree on its settings."""
    with _BUSES_LOCK:
        bus = _BUSES.get(key)
        if bus is None:
            bus = _BUSES[key] = ModbusBus(key, describe, make_client, settings)
        elif bus.settings != settings:
            raise ValueError(
                f"{describe} is shared by readers with different settings ({bus.settings} and {settings}); "
                "every probe on one bus must use the same line settings and timeout"
            )
        bus.users += 1
        return bus


def release_bus(bus: ModbusBus) -> None:
    with _BUSES_LOCK:
        bus.users -= 1
        if bus.users <= 0:
            _BUSES.pop(bus.key, None)
            bus.close()


class ProbeSettings(BaseModel):
    """What both Modbus readers take besides where the bus is."""

    map: str | None = Field(None, description="A shipped register map by name (edge_agent/sensors/maps/).")
    map_file: Path | None = Field(None, description="A register map of your own (TOML), relative to the config.")
    slave_id: Annotated[int, Field(ge=1, le=247)] | None = Field(None, description="Default: the map's.")
    timeout_s: Annotated[float, Field(gt=0)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1

    @model_validator(mode="after")
    def _one_map(self) -> ProbeSettings:
        if (self.map is None) == (self.map_file is None):
            raise ValueError(f"name exactly one of map (shipped: {', '.join(shipped_maps())}) or map_file")
        if self.map is not None:
            load_register_map(self.map)  # an unknown name fails at config check, not at the first poll
        return self


class ModbusProbeReader:
    """One probe (slave id + register map) on a shared bus; ``read`` returns canonical values by quantity."""

    def __init__(self, settings: ProbeSettings, open_bus: Callable[[RegisterMap], ModbusBus]) -> None:
        self.settings = settings
        self.regmap = load_register_map(settings.map, settings.map_file)
        self.slave_id = settings.slave_id or self.regmap.defaults.slave_id
        self.blocks = plan_blocks(self.regmap.registers)
        self._open_bus = open_bus
        self._bus: ModbusBus | None = None
        self.errors: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()

    def read(self) -> dict[str, float]:
        if self._bus is None:
            self._bus = self._open_bus(self.regmap)
        bus = self._bus
        out: dict[str, float] = {}
        failures: list[str] = []
        for block in self.blocks:
            try:
                words = self._read_block(bus, block)
            except OSError as exc:
                failures.append(str(exc))
                continue
            at = 0
            for spec in block.specs:
                value = decode(words[at : at + spec.words], spec)
                at += spec.words
                out[spec.quantity] = to_canonical(spec.quantity, value, spec.unit)
        if failures and not out:
            raise OSError("; ".join(failures))
        for message in failures:
            logger.warning("%s (%s): %s; the other registers were read", self.regmap.model, bus.describe, message)
        return out

    def _read_block(self, bus: ModbusBus, block: Block) -> list[int]:
        tries = 0
        while True:
            tries += 1
            try:
                return bus.read(block, self.slave_id)
            except ModbusTimeout:
                self.errors["modbus_timeout"] += 1
                if tries > self.settings.retries:
                    raise
            except ModbusExceptionReply as exc:
                # A slave that answers with an exception answers the same again: no retry.
                self.errors[f"modbus_exception_{exc.code}"] += 1
                raise

    def take_errors(self) -> dict[str, int]:
        """Errors since the last call, for the agent's error counters."""
        fresh = {k: v - self._reported[k] for k, v in self.errors.items() if v > self._reported[k]}
        self._reported = Counter(self.errors)
        return fresh

    def close(self) -> None:
        if self._bus is not None:
            release_bus(self._bus)
            self._bus = None


def bus_client(kind: str, **kwargs: Any) -> ModbusClient:
    """A pymodbus synchronous client; retries are the reader's (per probe), so pymodbus makes none."""
    try:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    except ModuleNotFoundError as exc:
        raise OSError(f"the Modbus readers need pymodbus: install cropwatch[modbus] ({exc})") from None
    cls = ModbusTcpClient if kind == "tcp" else ModbusSerialClient
    return cast(ModbusClient, cls(retries=0, **kwargs))
