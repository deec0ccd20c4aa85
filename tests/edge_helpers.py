"""Helpers for the agent's tests: agent configs, a recording subscriber, image files."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.image import encode_jpeg
from shared.messages import parse_device_message
from shared.topics import parse_topic

FARM, DEVICE = "farm1", "dev1"


def broker_user_lines() -> list[str]:
    """``user root`` for a private Mosquitto started as root, unless the fixture already adds it.

    Mosquitto started as root drops to the `mosquitto` user, which cannot write into a test's 0700
    temp folder: no persistence (sessions lost on restart), no log, no password file. Newer
    tests/services.py adds the line itself (``run_as_me``), and Mosquitto refuses it twice.
    """
    from tests import services

    if hasattr(services, "run_as_me") or os.geteuid() != 0:
        return []
    return ["user root"]


def agent_config(tmp_path: Path, port: int, models: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A config document for an agent on a local broker; ``models`` from :func:`model_section`."""
    doc: dict[str, Any] = {
        "device": {"farm_id": FARM, "device_id": DEVICE},
        "data_dir": str(tmp_path / "data"),
        # A fresh client id per test: a persistent session from an earlier test must not leak in.
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "client_id": f"cw-test-{uuid.uuid4().hex[:12]}",
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "keepalive_s": 5,
        },
        "heartbeat": {"interval_s": 3600},
        "log": {"format": "text", "level": "info"},
        **models,
    }
    doc.update(sections)
    return doc


def model_section(classifier, yield_model=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    doc: dict[str, Any] = {
        "trust": {"public_keys": [str(classifier.public_key)]},
        "models": [{"manifest": str(classifier.manifest_path), "threads": 1}],
    }
    if yield_model is not None:
        doc["yield"] = {
            "enabled": True,
            "model": {"manifest": str(yield_model.manifest_path), "threads": 1},
            "season_start": "2026-10-01",
            "interval_s": 3600,
        }
    return doc


def to_toml(doc: dict[str, Any]) -> str:
    """Just enough TOML for agent configs (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(prefix: str, d: dict[str, Any]) -> None:
        plain = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_list(v)}
        for k, v in plain.items():
            lines.append(f"{k} = {scalar(v)}")
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                lines.append(f"\n[{name}]")
                table(name, v)
            elif _is_table_list(v):
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    table(name, item)

    table("", doc)
    return "\n".join(lines) + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def leaf_files(folder: Path, team_data: Path | None, count: int, start: int = 0) -> list[Path]:
    """Copy real leaf photos (the team sample) into ``folder`` as 0000.jpg, 0001.jpg, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted((team_data / "leaf_sample").rglob("*.JPG")) if team_data else []
    out = []
    for i in range(start, start + count):
        target = folder / f"{i:04d}.jpg"
        tmp = folder / f".{i:04d}.tmp"
        if photos:
            shutil.copy(photos[i % len(photos)], tmp)
        else:
            import numpy as np

            tmp.write_bytes(encode_jpeg(np.full((64, 64, 3), (40, 150 + i % 50, 40), np.uint8)))
        tmp.rename(target)  # appears complete, as a camera trap's rename would
        out.append(target)
    return out


class Recorder:
    """A subscriber that keeps every message it gets, with a persistent session across broker restarts."""

    def __init__(
        self,
        port: int,
        topic: str = f"cropwatch/v1/{FARM}/{DEVICE}/#",
        client_id: str = "recorder",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        # Copies the broker re-sent to this subscriber (DUP set): its own redelivery after a broker
        # restart, not something the publisher sent twice.
        self.redelivered: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.topic = topic
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, keepalive=5, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            if msg.dup and any(m[0] == msg.topic and m[1] == msg.payload for m in self.messages[-2000:]):
                self.redelivered.append((msg.topic, bytes(msg.payload)))
                return
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def parsed(self, kind: str | None = None, live_only: bool = True) -> list[Any]:
        with self._lock:
            items = list(self.messages)
        out = []
        for topic, payload, retained in items:
            if (live_only and retained) or "/cmd/" in topic:
                continue
            t = parse_topic(topic)
            if t.category != "device" or (kind is not None and t.kind != kind):
                continue
            out.append(parse_device_message(payload, expected_kind=t.kind))
        return out

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def make_tls(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.pem"
        pem = serialization.Encoding.PEM
        key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("cropwatch test CA")).issuer_name(name("cropwatch test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    _, ca_path = save("ca", ca_key, ca)
    out = {"ca": ca_path}
    for stem, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(DEVICE)]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(DEVICE if stem == "client" else "127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        key_path, cert_path = save(stem, key, cert)
        out[f"{stem}_key"], out[f"{stem}_cert"] = key_path, cert_path
    return out
