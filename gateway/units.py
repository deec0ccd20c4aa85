"""systemd units and a compose file (profile ``gateway``) for the farm gateway's four processes."""

from __future__ import annotations

from .files import Plan

_HARDENING = """NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"""


def _unit(
    description: str, exec_start: str, plan: Plan, after: str = "", user: str = "cropwatch", own: str = ""
) -> str:
    # "+": runs privileged, so the folder exists and belongs to the service user before it starts.
    folder = f"{plan.state_dir}/{own}".rstrip("/")
    return f"""[Unit]
Description={description}
Wants=network-online.target
After=network-online.target {after}

[Service]
Type=exec
ExecStartPre=+/usr/bin/install -d -o {user} -g {user} {folder}
ExecStart={exec_start}
Environment=PYTHONUNBUFFERED=1
Restart=always
RestartSec=3
TimeoutStopSec=30
User={user}
Group={user}
ReadWritePaths={plan.state_dir}
{_HARDENING}

[Install]
WantedBy=multi-user.target
"""


def systemd_units(plan: Plan) -> dict[str, str]:
    conf = plan.path("mosquitto.conf")
    monitor = plan.path("monitor.toml")
    return {
        "cropwatch-gateway-broker.service": _unit(
            f"Cropwatch farm gateway broker (Mosquitto, bridged to the cloud) for {plan.farm_id}",
            f"/usr/sbin/mosquitto -c {conf}",
            plan,
            user="mosquitto",
            own="mosquitto",
        ),
        "cropwatch-gateway-ingest.service": _unit(
            "Cropwatch farm ingest (gateway broker to the farm's SQLite)",
            f"/usr/local/bin/cropwatch ingest --config {monitor}",
            plan,
            "cropwatch-gateway-broker.service",
        ),
        "cropwatch-gateway-monitor.service": _unit(
            "Cropwatch farm monitor (works with the uplink down)",
            f"/usr/local/bin/cropwatch monitor --config {monitor}",
            plan,
        ),
        "cropwatch-gateway-health.service": _unit(
            "Cropwatch gateway health reporter (uplink state, backlog, disk) to the cloud",
            f"/usr/local/bin/cropwatch gateway health --config {plan.path('gateway.toml')}",
            plan,
            "cropwatch-gateway-broker.service",
        ),
    }


def compose_yaml(plan: Plan) -> str:
    """Host networking: the configs name 127.0.0.1 for the local broker, as on a systemd install."""
    d, s = plan.install_dir, plan.state_dir
    volumes = f"""    volumes:
      - {d}:{d}:ro
      - {s}:{s}"""
    service = """  {name}:
    image: {image}
    profiles: [gateway]
    network_mode: host
    restart: unless-stopped
    command: {command}
{volumes}
"""
    parts = [
        f"# Farm gateway of {plan.farm_id} (`cropwatch gateway init`): docker compose --profile gateway up -d",
        f"# First: mkdir -p {s}/mosquitto (the broker's persistence) and copy this folder to {d}.",
        "services:",
        service.format(
            name="gateway-broker",
            image="eclipse-mosquitto:2.0",
            command=f'["mosquitto", "-c", "{plan.path("mosquitto.conf")}"]',
            volumes=volumes,
        ),
    ]
    for name, args in (
        ("gateway-ingest", f'["ingest", "--config", "{plan.path("monitor.toml")}"]'),
        ("gateway-monitor", f'["monitor", "--config", "{plan.path("monitor.toml")}"]'),
        ("gateway-health", f'["gateway", "health", "--config", "{plan.path("gateway.toml")}"]'),
    ):
        parts.append(service.format(name=name, image="cropwatch-cloud:latest", command=args, volumes=volumes))
    return "\n".join(parts)
