"""The farm monitor's pages under Streamlit's AppTest, over a real SQLite file seeded by ingest's code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from farm_monitor.app.actions import acknowledge_alert, label_sample, save_farm_layout, save_subscription_for
from farm_monitor.app.auth import PermissionDenied, UsersFile
from farm_monitor.db import make_engine
from farm_monitor.db.notifications import SubscriptionSpec
from tests.monitor_seed import PASSWORD, World, seed

APP = Path(__file__).resolve().parents[2] / "farm_monitor" / "app"
# Every page file (a new page is tested without a line here); login is the gate, tested on its own.
PAGES = sorted(p.stem for p in (APP / "views").glob("*.py") if p.stem != "login")
# Pages that show one farm's data (picked in the farm selector).
FARM_PAGES = ["overview", "field", "detections", "alerts", "devices", "device", "models"]
ROLES = ["farmer-a", "agro", "admin"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = seed(tmp_path_factory.mktemp("monitor"))
    UsersFile(w.config.app.users_file).add("agro-a", PASSWORD, "agronomist", ["farm-a"])
    return w


@pytest.fixture(autouse=True)
def _config_env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROPWATCH_CONFIG", str(world.config_path))


def page(name: str, user: str | None) -> AppTest:
    at = AppTest.from_file(str(APP / "views" / f"{name}.py"), default_timeout=60)
    if user:
        at.session_state["cw_username"] = user
    return at.run()


def text_of(at: AppTest) -> str:
    """Everything the page sent to the browser (widget options, tables, markdown), as text."""
    out: list[str] = []

    def walk(node: object) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            for child in children.values():
                walk(child)

    walk(at._tree)
    return "\n".join(out)


def test_login_wrong_then_right_password(world: World) -> None:
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=60).run()
    assert not at.exception
    at.text_input(key="login_user").input("agro")
    at.text_input(key="login_password").input("wrong password")
    at.button[0].click().run()
    assert any("Wrong user name or password" in e.value for e in at.error)
    assert "cw_username" not in at.session_state
    at.text_input(key="login_password").input(PASSWORD)
    at.button[0].click().run()
    assert at.session_state["cw_username"] == "agro"
    assert not at.exception
    assert [t.value for t in at.title] == ["Overview"]


@pytest.mark.parametrize("user", ROLES)
@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_for_every_role(world: World, name: str, user: str) -> None:
    at = page(name, user)
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    if name in ("farm_layout", "users") and user != "admin":
        assert errors and "Only admins" in errors[0]
    else:
        assert not errors, errors
        assert at.title[0].value.lower().replace(" ", "_") == name


def test_farms_page_shows_each_visible_gateway_and_marks_an_offline_farm_as_of_its_last_contact(world: World) -> None:
    at = page("farms", "admin")
    shown = text_of(at)
    assert "farm-a" in shown and "farm-b" in shown
    assert any("farm-b: no contact since" in w.value for w in at.warning)
    assert not any("farm-a:" in w.value for w in at.warning)
    assert "farm-b" not in text_of(page("farms", "farmer-a")), "a farmer sees another farm's gateway"


def test_fleet_table_opens_a_device_page(world: World) -> None:
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=60)
    at.session_state["cw_username"] = "farmer-a"
    at.run()
    at.switch_page("views/devices.py").run()
    assert at.title[0].value == "Devices"
    at.selectbox(key="fleet_open_pick").set_value("gw-a2").run()
    at.button(key="fleet_open").click().run()
    assert not at.exception
    assert at.title[0].value == "Device"
    assert at.selectbox(key="dev_pick").value == "gw-a2"
    assert at.metric[0].value == "offline"


def test_device_page_shows_flagged_sensors_and_field_page_every_quantity_with_its_unit(world: World) -> None:
    at = page("device", "farmer-a")
    at.selectbox(key="dev_pick").set_value("gw-a1").run()
    assert not at.exception
    assert "Sensor health" in [h.value for h in at.subheader]
    table = at.dataframe[0].value
    assert list(table["sensor"]) == ["probe-2"] and list(table["state"]) == ["out of range"]
    assert list(table["unit"]) == ["dS m-1"]
    metrics = {m.label: m.value for m in at.metric}
    assert "Radio link" in [h.value for h in at.subheader]
    assert (metrics["RSSI"], metrics["SNR"], metrics["Frame counter"]) == ("-101 dBm", "7.5 dB", "4242")
    assert metrics["Gateway"] == "gw-eui-0016c001ff10a235"
    at.selectbox(key="dev_pick").set_value("gw-a2").run()
    assert "Sensor health" not in [h.value for h in at.subheader]
    assert "Radio link" not in [h.value for h in at.subheader]
    field = page("field", "farmer-a")
    field.selectbox(key="field_pick").set_value("north").run()
    captions = [c.value for c in field.caption]
    assert any(c.startswith("soil ec (dS m-1") for c in captions), captions
    assert any(c.startswith("air temperature (degC") for c in captions), captions


def test_pages_need_a_login(world: World) -> None:
    at = page("detections", None)
    assert any("log in" in w.value for w in at.warning)
    assert not at.image


def test_farmer_sees_only_their_farm(world: World) -> None:
    for name in FARM_PAGES:
        at = page(name, "farmer-a")
        assert at.selectbox(key=f"cw_farm_select_{'farm'}").options == ["farm-a"]
        body = text_of(at)
        # Any case: display names capitalise (``Potato · Secret blight``).
        assert "secret" not in body.lower(), f"farm-b data on {name}"
    # an agronomist of farm-a is refused farm-b's sample even when calling the action directly
    engine = make_engine(world.db_url)
    with engine.connect() as conn:
        b_sample = conn.execute(text("SELECT msg_id FROM samples WHERE farm_id = 'farm-b' LIMIT 1")).scalar()
        b_alert = conn.execute(text("SELECT id FROM alerts WHERE farm_id = 'farm-b'")).scalar()
    a_user = UsersFile(world.config.app.users_file).get("agro-a")
    with pytest.raises(PermissionDenied):
        label_sample(engine, a_user, b_sample, "Tomato___healthy")
    with pytest.raises(PermissionDenied):
        acknowledge_alert(engine, a_user, b_alert)


def test_models_page_lists_registry_versions_and_device_state(world: World) -> None:
    at = page("models", "agro")
    registry, summary, per_device = (df.value for df in at.dataframe)
    assert list(registry["name"]) == ["leaf-disease"] and list(registry["version"]) == ["1.2.0"]
    assert sorted(per_device["device_id"]) == ["gw-a1", "gw-a2", "gw-a3"]
    assert set(per_device["active_version"]) == {"1.2.0"}
    assert list(summary["devices"]) == [3]
    # The seeded config names no rollout broker: the page says what to set instead of offering buttons.
    assert any("app.rollout_broker" in i.value for i in at.info)
    assert not [b for b in at.button if b.key in ("mdl_publish", "mdl_rollback")]


def test_overview_kpis_and_what_needs_attention(world: World) -> None:
    at = page("overview", "farmer-a")
    kpis = {m.label: m.value for m in at.metric}
    # Open alerts: gw-a2 offline, north's Late_blight and gw-a1's flagged EC probe (sensor_health).
    assert kpis["Devices online"] == "2" and kpis["Offline or silent"] == "1" and kpis["Open alerts"] == "3"
    attention = next(md.value for md in at.markdown if "Needs attention" in md.value)
    assert "gw-a2 has been offline" in attention and "Tomato · Late blight in" in attention
    assert any("gw-a3" in w.value for w in at.warning)  # reports, but not in the layout


def test_admin_sees_both_farms(world: World) -> None:
    at = page("overview", "admin")
    assert at.selectbox(key="cw_farm_select_farm").options == ["farm-a", "farm-b"]


def test_farmer_cannot_label_or_acknowledge(world: World) -> None:
    at = page("detections", "farmer-a")
    assert len(at.image) > 0
    assert not [b for b in at.button if (b.key or "").startswith("save_")]
    assert any("Read-only" in c.value for c in at.caption)
    at = page("alerts", "farmer-a")
    assert not [b for b in at.button if b.key == "al_ack"]
    farmer = UsersFile(world.config.app.users_file).get("farmer-a")
    engine = make_engine(world.db_url)
    with engine.connect() as conn:
        sample = conn.execute(text("SELECT msg_id FROM samples WHERE farm_id = 'farm-a' LIMIT 1")).scalar()
        b_sample = conn.execute(text("SELECT msg_id FROM samples WHERE farm_id = 'farm-b' LIMIT 1")).scalar()
    assert b_sample is not None
    with pytest.raises(PermissionDenied):
        label_sample(engine, farmer, sample, "Tomato___healthy")


def test_agronomist_corrects_a_label(world: World) -> None:
    at = page("detections", "agro")
    first = at.selectbox(key="det_field")  # filters render
    assert first.options[0] == "(all)"
    saves = [b for b in at.button if (b.key or "").startswith("save_")]
    assert saves
    msg_id = saves[0].key.removeprefix("save_")
    at.selectbox(key=f"lab_{msg_id}").set_value("Tomato___healthy")
    at.button(key=f"save_{msg_id}").click().run()
    assert not at.exception and not at.error
    engine = make_engine(world.db_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT label, labelled_by, labelled_at FROM labels WHERE sample_msg_id = :m"), {"m": msg_id}
        ).one()
    assert row.label == "Tomato___healthy" and row.labelled_by == "agro" and row.labelled_at
    assert any("Tomato · Healthy" in c.value and "agro" in c.value for c in at.caption)


def test_agronomist_acknowledges_an_alert(world: World) -> None:
    at = page("alerts", "agro")
    pick = at.multiselect(key="al_ack_pick")
    offline = next(o for o in pick.options if "gw-a2" in o)
    pick.set_value([offline]).run()
    at.button(key="al_ack").click().run()
    assert not at.exception and not at.error
    engine = make_engine(world.db_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT acknowledged_by, acknowledged_at FROM alerts WHERE device_id = 'gw-a2'")).one()
    assert row.acknowledged_by == "agro" and row.acknowledged_at is not None


def test_layout_is_admin_only_and_validated(world: World, tmp_path: Path) -> None:
    users = UsersFile(world.config.app.users_file)
    path = tmp_path / "farm.geojson"
    path.write_text(Path(world.config.app.farm_file).read_text())
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [-93.599, 42.001]},
         "properties": {"kind": "device", "farm_id": "farm-a", "device_id": "gw-a3"}}]}  # fmt: skip
    with pytest.raises(PermissionDenied):
        save_farm_layout(str(path), users.get("agro"), "farm-a", doc)
    saved = save_farm_layout(str(path), users.get("admin"), "farm-a", doc)
    assert [d.properties.device_id for d in saved.for_farm("farm-a").devices] == ["gw-a3"]
    assert saved.for_farm("farm-b").fields, "another farm's part is kept"
    on_disk = json.loads(path.read_text())
    assert len(on_disk["features"]) == 3


def test_empty_database_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "users.json"
    UsersFile(users).add("boss", PASSWORD, "admin", ["*"])
    cfg = tmp_path / "monitor.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "m.db"}"\n[app]\nusers_file = "{users}"\n'
                   f'farm_file = "{tmp_path / "farm.geojson"}"\n')  # fmt: skip
    from farm_monitor.db import migrate

    migrate(make_engine(f"sqlite:///{tmp_path / 'm.db'}", writer=True))
    monkeypatch.setenv("CROPWATCH_CONFIG", str(cfg))
    at = page("overview", "boss")
    assert not at.exception
    assert any("cropwatch agent" in i.value for i in at.info)


def test_broken_layout_file_is_an_error_in_the_page(world: World, tmp_path: Path, monkeypatch) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"kind": "x"}}]}')
    cfg = tmp_path / "monitor.toml"
    cfg.write_text(world.config_path.read_text().replace(world.config.app.farm_file, str(bad)))
    monkeypatch.setenv("CROPWATCH_CONFIG", str(cfg))
    at = page("overview", "admin")
    assert not at.exception
    assert any("farm layout file cannot be read" in e.value for e in at.error)


def test_retraining_page_shows_shadow_scores_and_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime, timedelta

    from fleet import lineage
    from tests.integration.test_shadow_scoring import seed_shadow

    w = seed(tmp_path / "w")
    monkeypatch.setenv("CROPWATCH_CONFIG", str(w.config_path))
    seed_shadow(w.db_url, datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    engine = make_engine(w.db_url)
    with engine.connect() as conn:
        sample = conn.execute(text("SELECT msg_id FROM samples WHERE farm_id = 'farm-a' LIMIT 1")).scalar()
        b_sample = conn.execute(text("SELECT msg_id FROM samples WHERE farm_id = 'farm-b' LIMIT 1")).scalar()
    assert b_sample is not None
    lineage.record_run(
        engine,
        {"run_id": "retrain-2.0.0", "model_name": "leaf-disease", "model_version": "2.0.0",
         "base_model_version": "1.0.0", "base_run": "/runs/base", "run_dir": "/runs/retrain-2.0.0",
         "dataset_fingerprint": "sha256:" + "f" * 64, "base_dataset_fingerprint": "sha256:" + "b" * 64,
         "created_at": datetime.now(UTC), "labels_until": None, "gate_passed": True,
         "gate": {"reasons": ["field test set (12 images): accuracy 0.5000 -> 0.7500"]}, "counts": {"field_labels": 1},
         "status": "shadow"},
        [{"sample_msg_id": sample, "label": "rust", "labelled_by": "agro", "labelled_at": datetime.now(UTC),
          "image_sha256": "c" * 64, "role": "train"},
         {"sample_msg_id": b_sample, "label": "rust", "labelled_by": "b-labeller", "labelled_at": datetime.now(UTC),
          "image_sha256": "d" * 64, "role": "train"}],
    )  # fmt: skip
    lineage.record_run(
        engine,
        {"run_id": "leaf-disease-1.9.0", "model_name": "leaf-disease", "model_version": "1.9.0",
         "base_model_version": "1.0.0", "base_run": "/runs/base", "run_dir": "/runs/retrain-1.9.0",
         "dataset_fingerprint": None, "base_dataset_fingerprint": None,
         "created_at": datetime.now(UTC) - timedelta(days=1), "labels_until": datetime.now(UTC) - timedelta(days=1),
         "gate_passed": False, "gate": None, "counts": None, "status": "error",
         "status_reason": "stopped before the gate: too few to hold out a field test set"},
        [],
    )  # fmt: skip
    at = page("retraining", "agro")
    assert not at.exception, at.exception
    scores = at.dataframe[0].value
    row = scores[scores["challenger version"] == "2.0.0"].iloc[0]
    assert row["compared"] == 10 and row["agreement"] == 0.5 and row["labelled"] == 6
    assert row["champion accuracy"] == pytest.approx(0.5) and row["challenger accuracy"] == pytest.approx(5 / 6)
    runs = at.dataframe[1].value
    assert list(runs["version"]) == ["2.0.0", "1.9.0"] and list(runs["status"]) == ["shadow", "error"]
    assert list(runs["gate"]) == ["passed", "not reached"] and "too few" in runs["reason"].iloc[1]
    shown = text_of(at)
    assert "sha256:" + "f" * 64 in shown and "accuracy 0.5000 -> 0.7500" in shown and "1.0.0" in shown
    assert sorted(at.dataframe[2].value["labelled_by"]) == ["agro", "b-labeller"]
    # An agronomist of farm-a sees the run's farm-a labels only, and is told how many are hidden.
    UsersFile(w.config.app.users_file).add("agro-a", PASSWORD, "agronomist", ["farm-a"])
    only_a = page("retraining", "agro-a")
    assert not only_a.exception, only_a.exception
    assert list(only_a.dataframe[2].value["labelled_by"]) == ["agro"]
    assert b_sample not in text_of(only_a) and "b-labeller" not in text_of(only_a)
    assert any("1 field label(s) of farms you cannot see" in c.value for c in only_a.caption)
    at.selectbox(key="rt_version").set_value("1.9.0").run()
    assert not at.exception and any("stopped before the evaluation gate" in w.value for w in at.warning)
    at.selectbox(key="rt_version").set_value("2.0.0").run()
    with engine.connect() as conn:
        det = conn.execute(text("SELECT msg_id FROM detections WHERE model_version = '1.0.0' LIMIT 1")).scalar()
    at.radio(key="rt_from").set_value("a detection").run()
    at.text_input(key="rt_detection").input(det).run()
    shown = text_of(at)
    assert det in shown and "leaf-disease 1.0.0" in shown and "was not made by" in shown


def test_classes_read_as_crop_and_condition(world: World) -> None:
    """Stored detections show as people read them: the shared rule without a published table, the
    published manifest's table (``models publish --db`` keeps it in ``models``) once there is one."""
    import streamlit as st

    from fleet.desired import record_model
    from shared.examples import example_manifest
    from shared.manifest import ModelManifest

    at = page("detections", "agro")
    assert not at.exception and not at.error
    cards = "\n".join(md.value for md in at.markdown)
    assert "**Apple · Cedar apple rust**" in cards and "Apple___Cedar_apple_rust" not in cards
    assert "Apple · Cedar apple rust" in at.selectbox(key="det_label").options
    alerts = page("alerts", "agro")
    assert any("Tomato · Late blight in" in v for v in alerts.multiselect(key="al_ack_pick").options)

    # The example manifest's labels are tomato classes; its table may still name any class it has.
    base = example_manifest()
    names = {"Apple___Cedar_apple_rust": "Apple · Cedar-apple rust (Gymnosporangium)"}
    manifest = base.model_copy(
        update={"labels": [*base.labels, "Apple___Cedar_apple_rust"], "display_names": names, "version": "9.9.9-names"}
    )
    record_model(world.db_url, ModelManifest.model_validate(manifest.model_dump()))
    st.cache_data.clear()
    try:
        at = page("detections", "agro")
        assert not at.exception and not at.error
        assert "**Apple · Cedar-apple rust (Gymnosporangium)**" in "\n".join(md.value for md in at.markdown)
    finally:
        with make_engine(world.db_url, writer=True).begin() as conn:
            conn.execute(text("DELETE FROM models WHERE version = '9.9.9-names'"))
        st.cache_data.clear()


def test_notifications_people_edit_their_own_admins_anyones_channels_stay_hidden(world: World) -> None:
    store = UsersFile(world.config.app.users_file)
    farmer, agro, admin = store.get("farmer-a"), store.get("agro"), store.get("admin")
    engine = make_engine(world.db_url)
    token_url = "tgram://123456:FarmerSecretToken/4242"
    sid = save_subscription_for(engine, farmer, farmer, SubscriptionSpec(farms=["farm-a"], channels=[token_url]))
    for who, owner, spec, why in [
        (farmer, agro, SubscriptionSpec(), "only their own"),
        (farmer, farmer, SubscriptionSpec(farms=["farm-b"]), "no access to farm"),
        (farmer, farmer, SubscriptionSpec(channels=["secret:ops-telegram"]), "set by an admin"),
    ]:
        with pytest.raises(PermissionDenied, match=why):
            save_subscription_for(engine, who, owner, spec)
    with pytest.raises(PermissionDenied, match="not found"):  # another user's subscription id
        save_subscription_for(engine, agro, agro, SubscriptionSpec(), sub_id=sid)
    save_subscription_for(engine, admin, farmer, SubscriptionSpec(channels=["secret:ops-telegram"]))
    engine.dispose()

    at = page("notifications", "farmer-a")
    assert not at.exception and not at.error
    shown = text_of(at)
    assert "tgram://" in shown and "FarmerSecretToken" not in shown and "4242" not in shown
    assert "secret:ops-telegram" in shown and "Undeliverable" in shown
    assert not [s for s in at.selectbox if s.label == "Whose notifications"]  # only admins pick a person
    admin_page = page("notifications", "admin")
    assert [s for s in admin_page.selectbox if s.label == "Whose notifications"]
