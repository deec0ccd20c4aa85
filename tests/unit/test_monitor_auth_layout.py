"""Users file (argon2), roles and permissions, farm layout validation, risk levels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm_monitor.app.auth import AuthError, PermissionDenied, UsersFile
from farm_monitor.app.layout import LayoutError, load_layout, parse_layout, replace_farm
from farm_monitor.app.risk import risk_level
from farm_monitor.app.users_cli import main as users_main
from tests.monitor_seed import layout_doc


def test_users_file_stores_argon2_hashes_and_authenticates(tmp_path: Path) -> None:
    store = UsersFile(tmp_path / "users.json")
    store.add("ann", "s3cret-pass", "farmer", ["farm-a"])
    raw = json.loads((tmp_path / "users.json").read_text())
    assert raw["users"]["ann"]["hash"].startswith("$argon2")
    assert "s3cret-pass" not in (tmp_path / "users.json").read_text()
    assert (tmp_path / "users.json").stat().st_mode & 0o077 == 0
    assert store.authenticate("ann", "s3cret-pass").farms == ("farm-a",)
    assert store.authenticate("ann", "wrong-pass") is None
    assert store.authenticate("nobody", "s3cret-pass") is None
    with pytest.raises(AuthError, match="exists"):
        store.add("ann", "another-pass", "admin", [])
    assert store.remove("ann") and store.get("ann") is None


@pytest.mark.parametrize(
    ("name", "role", "farms", "password", "match"),
    [
        ("Bad Name", "farmer", ["f"], "longenough", "user name"),
        ("bob", "owner", ["f"], "longenough", "role"),
        ("bob", "farmer", [], "longenough", "farmer needs"),
        ("bob", "farmer", ["Farm/A"], "longenough", "farm id"),
        ("bob", "farmer", ["f"], "short", "8 characters"),
    ],
)
def test_users_file_rejects_bad_input(tmp_path: Path, name, role, farms, password, match) -> None:
    with pytest.raises(AuthError, match=match):
        UsersFile(tmp_path / "u.json").add(name, password, role, farms)


def test_roles_are_cumulative_and_farm_scoped(tmp_path: Path) -> None:
    store = UsersFile(tmp_path / "u.json")
    farmer = store.add("f", "password1", "farmer", ["farm-a"])
    agro = store.add("a", "password1", "agronomist", ["farm-a", "farm-c"])
    admin = store.add("root", "password1", "admin", [])
    assert admin.farms == ("*",) and admin.sees_farm("anything")
    assert farmer.can("view") and not farmer.can("label") and not farmer.can("acknowledge")
    assert agro.can("label") and agro.can("models") and not agro.can("layout")
    assert admin.can("users") and admin.can("label")
    assert agro.visible_farms(["farm-a", "farm-b", "farm-c"]) == ["farm-a", "farm-c"]
    with pytest.raises(PermissionDenied, match="farm-b"):
        agro.require("label", "farm-b")
    with pytest.raises(PermissionDenied, match="may not label"):
        farmer.require("label", "farm-a")


def test_users_cli_add_list_remove(tmp_path: Path, monkeypatch, capsys) -> None:
    f = str(tmp_path / "u.json")
    monkeypatch.setenv("PW", "a-long-password")
    assert users_main(["--file", f, "add", "eve", "--role", "agronomist", "--password-env", "PW"]) == 0
    assert users_main(["--file", f, "list"]) == 0
    assert "eve" in capsys.readouterr().out
    assert users_main(["--file", f, "add", "eve", "--role", "admin", "--password-env", "PW"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert users_main(["--file", f, "remove", "eve"]) == 0
    assert users_main(["--file", f, "remove", "eve"]) == 1


def test_layout_parses_and_names_the_bad_feature(tmp_path: Path) -> None:
    layout = parse_layout(layout_doc())
    assert layout.farms() == ["farm-a", "farm-b"]
    assert [f.properties.field_id for f in layout.for_farm("farm-a").fields] == ["north", "south"]
    bad = layout_doc()
    bad["features"][0]["geometry"]["coordinates"] = [[[0, 0], [1, 1]]]
    with pytest.raises(LayoutError, match="feature 0"):
        parse_layout(bad)
    bad = layout_doc()
    bad["features"][3]["properties"]["device_id"] = "GW/1"
    with pytest.raises(LayoutError, match=r"feature 3 \(device\)"):
        parse_layout(bad)
    with pytest.raises(LayoutError, match="FeatureCollection"):
        parse_layout([])
    assert load_layout(tmp_path / "missing.geojson").farms() == []
    (tmp_path / "x.geojson").write_text("{nope")
    with pytest.raises(LayoutError, match="not valid JSON"):
        load_layout(tmp_path / "x.geojson")


def test_replace_farm_keeps_other_farms_and_refuses_foreign_features() -> None:
    layout = parse_layout(layout_doc())
    only_b = {"type": "FeatureCollection", "features": [f for f in layout_doc()["features"]
                                                        if f["properties"]["farm_id"] == "farm-b"]}  # fmt: skip
    with pytest.raises(LayoutError, match="farm-b"):
        replace_farm(layout, "farm-a", only_b)
    new = replace_farm(layout, "farm-a", {"type": "FeatureCollection", "features": []})
    assert new.for_farm("farm-a").fields == [] and len(new.for_farm("farm-b").fields) == 1


@pytest.mark.parametrize(
    ("n", "share", "level"), [(3, 0.9, "unknown"), (20, 0.05, "low"), (20, 0.2, "medium"), (20, 0.3, "high")]
)
def test_risk_level(n: int, share: float, level: str) -> None:
    assert risk_level(n, share, min_detections=10, alert_percent=30.0) == level


def test_monitor_check_config_shows_the_app_section(tmp_path: Path, capsys) -> None:
    from farm_monitor.app.cli import main as monitor_main

    cfg = tmp_path / "monitor.toml"
    cfg.write_text('[app]\nport = 8600\nusers_file = "u.json"\n')
    assert monitor_main(["--config", str(cfg), "--check-config"]) == 0
    assert json.loads(capsys.readouterr().out)["app"]["port"] == 8600
    cfg.write_text("[app]\nbogus = 1\n")
    assert monitor_main(["--config", str(cfg), "--check-config"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_login_throttle_locks_a_name_after_repeated_failures() -> None:
    from farm_monitor.app.auth import LoginThrottle

    t = LoginThrottle(max_failures=3, lock_s=60)
    for i in range(3):
        assert t.wait_s("ann", 100.0 + i) == 0
        t.failed("ann", 100.0 + i)
    assert t.wait_s("ann", 103.0) == pytest.approx(57.0)
    assert t.wait_s("bob", 103.0) == 0
    assert t.wait_s("ann", 161.0) == 0  # the oldest failure has aged out
    t.failed("ann", 161.0)
    t.succeeded("ann")
    assert t.wait_s("ann", 162.0) == 0
