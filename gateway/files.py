"""The files ``cropwatch gateway init`` writes: the gateway's Mosquitto (persistence and the bridge),
the local ingest and monitor config, the health reporter's config, systemd units and a compose file.

The bridge is Mosquitto's own (``connection``): the farm's device messages go ``out`` to the cloud,
the farm's commands and fleet topics (desired and shadow models) come ``in``. The two sets of
topics are disjoint (``+/+`` after the farm is exactly a device message; ``+/cmd/+`` and
``_fleet/#`` have more levels), so nothing the bridge brings in can go back out: no loop. Topics
already carry the farm id, so no prefix remapping is needed and the cloud ACL can confine a
gateway to its own farm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from shared.ids import is_valid_id
from shared.topics import PREFIX

from .sizing import QueueSize, human_bytes

BRIDGE_NAME = "cloud"


class GatewayInitError(ValueError):
    pass


@dataclass(frozen=True)
class CloudAddress:
    host: str
    port: int
    tls: bool


def parse_cloud_url(url: str) -> CloudAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise GatewayInitError(f"--cloud {url!r}: use mqtts://HOST:PORT (or mqtt://HOST:PORT for a lab without TLS)")
    if not parts.hostname:
        raise GatewayInitError(f"--cloud {url!r} names no host; e.g. mqtts://broker.example.org:8883")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise GatewayInitError(f"--cloud {url!r}: {exc}") from exc
    return CloudAddress(parts.hostname, port, tls)


@dataclass(frozen=True)
class Plan:
    farm_id: str
    cloud: CloudAddress
    queue: QueueSize
    install_dir: PurePosixPath  # where these files live on the gateway
    state_dir: PurePosixPath  # Mosquitto persistence, the farm database
    local_port: int = 1883  # local services only (127.0.0.1)
    device_port: int | None = 8883  # field devices (TLS, certificate, password, ACL); None: no such listener
    gateway_id: str = "gateway"
    bridge_user: str | None = None
    bridge_password: str | None = None
    retry_min_s: int = 5
    retry_max_s: int = 120
    autosave_s: int = 30
    metrics_port: int = 9464
    monitor_port: int = 8501

    def __post_init__(self) -> None:
        for what, value in (("--farm", self.farm_id), ("--gateway-id", self.gateway_id)):
            if not is_valid_id(value):
                raise GatewayInitError(f"{what} {value!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")
        if self.cloud.tls and (self.bridge_user is None or self.bridge_password is None):
            raise GatewayInitError("an mqtts:// cloud needs the bridge's user and password (give --pki)")

    def path(self, name: str) -> str:
        return str(self.install_dir / name)

    def queue_note(self) -> str:
        return (
            f"{self.queue.messages} messages / {human_bytes(self.queue.bytes)} queued "
            f"(about {human_bytes(self.queue.memory_bytes)} of RAM when full); see docs/gateway.md"
        )


def bridge_topics(farm_id: str) -> list[str]:
    """The bridge's ``topic`` lines (pattern, direction, QoS 1)."""
    base = f"{PREFIX}/{farm_id}"
    return [
        f"topic {base}/+/+ out 1",  # device messages (and the gateway's own status) up
        f"topic {base}/+/cmd/+ in 1",  # commands down
        f"topic {base}/_fleet/# in 1",  # retained desired and shadow models down
    ]


def mosquitto_conf(plan: Plan) -> str:
    q = plan.queue
    lines = [
        f"# Farm gateway broker for farm {plan.farm_id}, written by `cropwatch gateway init`.",
        "# Devices publish here; the local ingest stores everything in the farm's SQLite; the bridge",
        "# below forwards device messages to the cloud and brings commands and models back.",
        "per_listener_settings true",
        "persistence true",
        f"persistence_location {plan.state_dir / 'mosquitto'}/",
        "# Queued bridge messages survive a clean restart; a crash loses at most this many seconds",
        "# of the cloud's copy (the farm's own database has them already).",
        f"autosave_interval {plan.autosave_s}",
        "persistent_client_expiration 30d",
        f"# Sized for {plan.queue_note()}.",
        f"max_queued_messages {q.max_queued_messages}",
        f"max_queued_bytes {q.max_queued_bytes}",
        "max_inflight_messages 20",
        "max_packet_size 1200000",
        "sys_interval 10",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "",
        "# Local services (ingest, monitor, health reporter) on this host only.",
        f"listener {plan.local_port} 127.0.0.1",
        "allow_anonymous true",
    ]
    if plan.device_port is not None:
        lines += [
            "",
            "# Field devices: the same CA, passwords and ACL as the cloud broker (from the PKI folder).",
            f"listener {plan.device_port}",
            f"cafile {plan.path('certs/ca.crt')}",
            f"certfile {plan.path('certs/server.crt')}",
            f"keyfile {plan.path('certs/server.key')}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "allow_anonymous false",
            f"password_file {plan.path('mosquitto.passwd')}",
            f"acl_file {plan.path('mosquitto.acl')}",
        ]
    return "\n".join([*lines, "", *bridge_section(plan)]) + "\n"


def bridge_section(plan: Plan) -> list[str]:
    c = plan.cloud
    lines = [
        "# The uplink: Mosquitto's own bridge, persistent session both ways, QoS 1.",
        f"connection {BRIDGE_NAME}",
        f"address {c.host}:{c.port}",
        # MQTT 3.1.1 on purpose: Mosquitto 2.0's v5 bridge sends no session expiry (0), so the cloud
        # dropped the bridge's session at each cut and commands sent meanwhile were lost (seen in
        # tests/integration/test_gateway_bridge.py; mosquitto issues #1632, #2980). A 3.1.1
        # clean-session-false session is kept until persistent_client_expiration. Devices and
        # services still speak v5 to their brokers.
        "bridge_protocol_version mqttv311",
        f"remote_clientid gateway-{plan.farm_id}",
        f"local_clientid bridge-{BRIDGE_NAME}",
        "cleansession false",
        "local_cleansession false",
        "start_type automatic",
        f"restart_timeout {plan.retry_min_s} {plan.retry_max_s}",
        "keepalive_interval 60",
        "# Uplink state, retained, on this broker only (the cloud ACL gives the bridge no $SYS rights):",
        f"# $SYS/broker/connection/{BRIDGE_NAME}/state is 1 (up) or 0 (down).",
        "notifications true",
        "notifications_local_only true",
        f"notification_topic $SYS/broker/connection/{BRIDGE_NAME}/state",
    ]
    if plan.bridge_user:
        lines += [f"remote_username {plan.bridge_user}", f"remote_password {plan.bridge_password}"]
    if c.tls:
        lines += [
            f"bridge_cafile {plan.path('certs/ca.crt')}",
            f"bridge_certfile {plan.path('certs/bridge.crt')}",
            f"bridge_keyfile {plan.path('certs/bridge.key')}",
            "bridge_tls_version tlsv1.2",
            "bridge_insecure false",
        ]
    return lines + bridge_topics(plan.farm_id)


def monitor_toml(plan: Plan) -> str:
    return f"""# The farm's own ingest and monitor (cropwatch ingest / cropwatch monitor), written by
# `cropwatch gateway init`. They use only the gateway broker and this SQLite file, so they keep
# working while the uplink is down; the local ingest evaluates the same alert rules as the cloud's.

[database]
url = "sqlite:///{plan.state_dir / "farm.db"}"

[mqtt]
host = "127.0.0.1"
port = {plan.local_port}

[ingest]
shared_group = "ingest"
client_id = "gateway-ingest"

[metrics]
host = "127.0.0.1"
port = {plan.metrics_port}

[app]
host = "0.0.0.0"
port = {plan.monitor_port}
users_file = "{plan.state_dir / "monitor-users.json"}"
farm_file = "{plan.path("farm.geojson")}"
"""


def gateway_toml(plan: Plan) -> str:
    return f"""# The gateway's health reporter (`cropwatch gateway health`): reads the bridge state and the
# broker's message store from $SYS, the disk free under the state folder, and publishes a
# gateway_status message every interval_s; the bridge takes it to the cloud's Farms page.
# It also sends the labels people make in the farm monitor, once each, to the cloud.

farm_id = "{plan.farm_id}"
gateway_id = "{plan.gateway_id}"
bridge = "{BRIDGE_NAME}"
interval_s = 60
disk_path = "{plan.state_dir}"
# Labels made in the farm monitor go up the bridge to the cloud's labels table.
labels_database = "sqlite:///{plan.state_dir / "farm.db"}"
labels_cursor_file = "{plan.state_dir / "labels.cursor"}"

[mqtt]
host = "127.0.0.1"
port = {plan.local_port}
client_id = "gateway-health"
"""
