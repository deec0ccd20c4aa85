from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from shared.config import REDACTED, load_config, redacted, redacted_json
from shared.errors import ConfigError
from shared.settings import MqttSettings


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = 0.5
    names: list[str] = []


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    farm_id: str
    mqtt: MqttSettings = MqttSettings()
    section: Section = Section()
    api_token: SecretStr | None = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


def test_toml_then_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, 'farm_id = "north"\n[mqtt]\nhost = "broker.lan"\nport = 8883\n[section]\nthreshold = 0.3\n')
    cfg = load_config(
        DaemonConfig,
        path,
        environ={"CROPWATCH_MQTT__PORT": "1884", "CROPWATCH_SECTION__NAMES": '["a", "b"]', "OTHER": "x"},
    )
    assert cfg.farm_id == "north"
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("broker.lan", 1884)
    assert cfg.section.threshold == 0.3 and cfg.section.names == ["a", "b"]


def test_secrets_from_files_and_redaction(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pass").write_text("s3cret-pw\n")
    (tmp_path / "token").write_text("tok-123")
    path = write(
        tmp_path, 'farm_id = "f"\napi_token_file = "token"\n[mqtt]\nusername = "gw-1"\npassword_file = "mqtt.pass"\n'
    )
    cfg = load_config(DaemonConfig, path, environ={})
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "s3cret-pw"
    assert cfg.api_token is not None and cfg.api_token.get_secret_value() == "tok-123"
    shown = redacted_json(cfg)
    assert "s3cret-pw" not in shown and "tok-123" not in shown
    assert redacted(cfg)["mqtt"]["password"] == REDACTED
    assert "s3cret-pw" not in repr(cfg) and "s3cret-pw" not in str(cfg)


def test_secret_file_from_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-env-file")
    cfg = load_config(
        DaemonConfig, None, environ={"CROPWATCH_FARM_ID": "f", "CROPWATCH_MQTT__PASSWORD_FILE": str(secret)}
    )
    assert cfg.mqtt.password.get_secret_value() == "from-env-file"


@pytest.mark.parametrize(
    ("text", "env", "reason", "needle"),
    [
        ('farm_id = "f"\n[mqtt]\nport = 99999\n', {}, "invalid", "mqtt.port"),
        ('farm_id = "f"\n[mqtt]\nhots = "typo"\n', {}, "invalid", "mqtt.hots"),
        ("[mqtt]\n", {}, "invalid", "farm_id"),
        ('farm_id = "f"\n[mqtt\n', {}, "bad_toml", "not valid TOML"),
        ('farm_id = "f"\n[mqtt]\npassword_file = "/nonexistent/pw"\n', {}, "secret_file", "mqtt.password_file"),
        ('farm_id = "f"\n', {"CROPWATCH_MQTT__PORT": "abc"}, "invalid", "mqtt.port"),
    ],
)
def test_errors_name_the_bad_key(tmp_path: Path, text: str, env: dict, reason: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DaemonConfig, write(tmp_path, text), environ=env)
    assert err.value.reason == reason
    assert needle in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DaemonConfig, tmp_path / "nope.toml", environ={})
    assert err.value.reason == "missing_file"


def test_atomic_writes_use_the_umask_unless_given_a_mode(tmp_path: Path) -> None:
    from shared import fsutil
    from shared.fsutil import atomic_write_text

    old = fsutil._UMASK
    fsutil._UMASK = 0o022
    try:
        assert atomic_write_text(tmp_path / "a.json", "{}").stat().st_mode & 0o777 == 0o644
        assert atomic_write_text(tmp_path / "b.key", "k", mode=0o600).stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "a.json").read_text() == "{}"
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    finally:
        fsutil._UMASK = old
