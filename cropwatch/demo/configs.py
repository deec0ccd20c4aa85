"""The files the demo writes for its components: agent and monitor configs, farm layout, users, keys."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from datetime import date, timedelta
from pathlib import Path

from .processes import cropwatch_command
from .settings import (
    DEMO_PASSWORD,
    DEMO_USERS,
    FARM_ID,
    FIELDS,
    SEASON_DAYS_AGO,
    YIELD_CROP,
    YIELD_INTERVAL_S,
)


def season_start() -> str:
    return (date.today() - timedelta(days=SEASON_DAYS_AGO)).isoformat()


def demo_key(root: Path) -> Path:
    """The demo's signing key pair (made once); returns the public key. The yield model is signed with it."""
    from shared.manifest import generate_keypair

    keys = root / "keys"
    if not (keys / "cropwatch-signing.key").exists():
        generate_keypair(keys)
    return keys / "cropwatch-signing.pub"


AGENT_TOML = """# made by cropwatch demo
data_dir = "state"
shutdown_deadline_s = 10.0

[device]
farm_id = "{farm_id}"
device_id = "{device_id}"
field_id = "{field_id}"

[mqtt]
host = "{host}"
port = {port}

[trust]
public_keys = [{public_keys}]

# No model here: the demo publishes one through the rollout path (retained desired-model
# message, download from the registry, signature and self-test, swap).
[updates]
enabled = true
health_window_s = 30.0

# The yield model comes over the air too; the runner starts when it arrives.
[yield]
enabled = true
season_start = "{season_start}"
crop = "{crop}"
interval_s = {interval_s}
# One round of the simulated sensors (every 15 s) is in by then; a second run shows an outlook at once.
first_run_s = 20.0

# The simulated probe reads percent; the model's soil_moisture.mean is in m3 m-3.
[yield.variables."soil_moisture.mean"]
quantity = "soil_moisture"
aggregate = "mean"
scale = 0.01

[[sources]]
type = "folder"
name = "trap"
path = "inbox"
after = "delete"
scan_interval_s = 1.0
settle_s = 0.2

[[sources]]
type = "sensors"
name = "soil"
interval_s = 15.0

[sources.reader]
type = "simulated"
seed = {seed}

[[sources.channels]]
sensor = "soil1"
quantity = "soil_moisture"
unit = "%"

[[sources.channels]]
sensor = "air1"
quantity = "air_temperature"
unit = "degC"

[samples]
confidence_below = 0.7
max_per_hour = 20

[heartbeat]
interval_s = 10.0

[log]
format = "text"
"""


def agent_toml(root: Path, device_id: str, field_id: str, host: str, port: int, public_keys: list[Path]) -> Path:
    folder = root / "agents" / device_id
    (folder / "inbox").mkdir(parents=True, exist_ok=True)
    text = AGENT_TOML.format(
        farm_id=FARM_ID,
        device_id=device_id,
        field_id=field_id,
        host=host,
        port=port,
        public_keys=", ".join(f'"{k}"' for k in public_keys),
        season_start=season_start(),
        crop=YIELD_CROP,
        interval_s=YIELD_INTERVAL_S,
        seed=abs(hash(device_id)) % 1000,
    )
    path = folder / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def monitor_toml(root: Path, host: str, port: int, monitor_port: int = 8501) -> Path:
    path = root / "monitor.toml"
    path.write_text(
        f"""# made by cropwatch demo
[database]
url = "sqlite:///{root / "cropwatch.db"}"

[mqtt]
host = "{host}"
port = {port}

[metrics]
port = 0

[app]
users_file = "{root / "monitor-users.json"}"
farm_file = "{root / "farm.geojson"}"
registry = "{root / "registry"}"
refresh_s = 10
cache_ttl_s = 5

[notify]
poll_interval_s = 2
monitor_url = "http://localhost:{monitor_port}"
ack_secret = "{secrets.token_hex(24)}"
""",
        encoding="utf-8",
    )
    return path


def farm_layout(root: Path, devices: tuple[str, ...]) -> Path:
    """Demo fields near Ames, Iowa: one square field per device, the device in its middle."""
    features = []
    for i, device_id in enumerate(devices):
        lon, lat = -93.62 + 0.012 * (i % 3), 42.03 + 0.009 * (i // 3)
        d = 0.004
        ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]]
        field_id = FIELDS[i]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"kind": "field", "farm_id": FARM_ID, "field_id": field_id,
                               "name": field_id.replace("-", " ").title(), "crop": YIELD_CROP,
                               "planting_date": season_start()},
            }
        )  # fmt: skip
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {"kind": "device", "farm_id": FARM_ID, "device_id": device_id, "field_id": field_id},
            }
        )
    path = root / "farm.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1), encoding="utf-8")
    return path


def demo_users(root: Path) -> None:
    if (root / "monitor-users.json").exists():
        return
    for name, role in DEMO_USERS:
        subprocess.run(
            cropwatch_command("users", "--file", str(root / "monitor-users.json"), "add", name,
                              "--role", role, "--farm", FARM_ID, "--password-env", "CROPWATCH_DEMO_PASSWORD"),
            env={**os.environ, "CROPWATCH_DEMO_PASSWORD": DEMO_PASSWORD},
            check=True,
            capture_output=True,
        )  # fmt: skip
