"""Reading a network server's uplink event: ChirpStack v4 and The Things Stack v3 JSON.

Both formats are read leniently: only the fields the bridge uses are looked at, and what a newer
release adds is ignored. Protobuf's JSON mapping (both servers use it) leaves out zero values, so a
missing frame counter is 0, not an error. What cannot be read raises :class:`UplinkError` with a
reason, which the converter counts.

ChirpStack v4 (integration.UplinkEvent): ``deviceInfo.devEui``, ``time``, ``fCnt``, ``object``
(set only when the device profile has a codec), ``rxInfo[].gatewayId/rssi/snr``.
The Things Stack v3 (ApplicationUp): ``end_device_ids.dev_eui``, ``received_at``,
``uplink_message.f_cnt``, ``uplink_message.decoded_payload`` (set only with a payload formatter),
``uplink_message.rx_metadata[].gateway_ids.gateway_id/rssi/snr``, ``uplink_message.received_at``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import Format, normalise_eui


class UplinkError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Gateway:
    gateway_id: str | None
    rssi: float | None
    snr: float | None


@dataclass(frozen=True)
class Uplink:
    dev_eui: str
    time: datetime
    f_cnt: int
    decoded: dict[str, Any] | None
    gateways: tuple[Gateway, ...]

    def best_gateway(self) -> Gateway | None:
        """The gateway that heard it best (highest SNR, then RSSI): the link the device actually has."""
        if not self.gateways:
            return None
        return max(self.gateways, key=lambda g: (g.snr if g.snr is not None else -1e9, g.rssi or -1e9))


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise UplinkError("bad_uplink", f"{where} is missing or not a string")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # Both servers send nanoseconds; Python reads at most microseconds.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UplinkError("bad_uplink", f"{where} {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise UplinkError("bad_uplink", f"{where} {value!r} has no time zone")
    return parsed.astimezone(UTC)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _f_cnt(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise UplinkError("bad_uplink", f"frame counter {value!r} is not a 32-bit unsigned integer")
    return value


def _eui(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UplinkError("bad_uplink", f"{where} is missing")
    try:
        return normalise_eui(value)
    except ValueError as exc:
        raise UplinkError("bad_uplink", f"{where}: {exc}") from None


def _decoded(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UplinkError("bad_uplink", f"{where} is not a JSON object")
    return value


def _chirpstack(doc: dict[str, Any]) -> Uplink:
    info = doc.get("deviceInfo")
    if not isinstance(info, dict):
        raise UplinkError("bad_uplink", "deviceInfo is missing (not a ChirpStack v4 uplink event)")
    gateways = tuple(
        Gateway(str(rx["gatewayId"]) if "gatewayId" in rx else None, _number(rx.get("rssi")), _number(rx.get("snr")))
        for rx in doc.get("rxInfo") or []
        if isinstance(rx, dict)
    )
    return Uplink(
        dev_eui=_eui(info.get("devEui"), "deviceInfo.devEui"),
        time=_time(doc.get("time"), "time"),
        f_cnt=_f_cnt(doc.get("fCnt")),
        decoded=_decoded(doc.get("object"), "object"),
        gateways=gateways,
    )


def _tts(doc: dict[str, Any]) -> Uplink:
    ids = doc.get("end_device_ids")
    up = doc.get("uplink_message")
    if not isinstance(ids, dict) or not isinstance(up, dict):
        raise UplinkError("bad_uplink", "end_device_ids or uplink_message is missing (not a TTS v3 uplink)")
    gateways = []
    for rx in up.get("rx_metadata") or []:
        if not isinstance(rx, dict):
            continue
        gw_ids = rx.get("gateway_ids")
        if not isinstance(gw_ids, dict):
            gw_ids = {}
        gw_id = gw_ids.get("gateway_id") or gw_ids.get("eui")
        gateways.append(Gateway(str(gw_id) if gw_id else None, _number(rx.get("rssi")), _number(rx.get("snr"))))
    # The network server's reception time is the uplink's own; the top-level received_at is when
    # the application server handled it, which differs on a redelivery.
    when = up.get("received_at") or doc.get("received_at")
    return Uplink(
        dev_eui=_eui(ids.get("dev_eui"), "end_device_ids.dev_eui"),
        time=_time(when, "uplink_message.received_at"),
        f_cnt=_f_cnt(up.get("f_cnt")),
        decoded=_decoded(up.get("decoded_payload"), "uplink_message.decoded_payload"),
        gateways=tuple(gateways),
    )


def parse_uplink(payload: bytes, fmt: Format) -> Uplink:
    """The uplink in ``payload``; raises UplinkError (reason ``invalid_json`` or ``bad_uplink``)."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UplinkError("invalid_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise UplinkError("bad_uplink", "the payload is not a JSON object")
    return _chirpstack(doc) if fmt == "chirpstack" else _tts(doc)
