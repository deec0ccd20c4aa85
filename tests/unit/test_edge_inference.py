"""Model loading on real ONNX files: signature, sha256, self-test, variant choice, batching, yield runner."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import ModelSettings, YieldSettings
from edge_agent.inference import ModelLoadError, load_backend
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Identity
from edge_agent.sources.leafdraw import draw_leaf
from edge_agent.yield_runner import YieldRunner
from shared.image import decode_image, encode_jpeg
from shared.manifest import SeasonVariable, TrustedKeys
from tests.edge_models import build_classifier, build_yield_model


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("models")
    return build_classifier(root / "c", int8=True), root


def trusted(model) -> TrustedKeys:  # type: ignore[no-untyped-def]
    return TrustedKeys.from_sources([str(model.public_key)])


def test_loads_after_self_test_and_classifies_drawn_leaves(built) -> None:  # type: ignore[no-untyped-def]
    model, _ = built
    backend = load_backend(ModelSettings(manifest=model.manifest_path, threads=1), trusted(model))
    assert backend.provider == "CPUExecutionProvider"
    assert backend.max_batch == 8
    images = [encode_jpeg(draw_leaf(96, 96, c, seed=0)) for c in ("healthy", "early_blight")]
    batch = np.stack([decode_image(b, 32) for b in images])
    probs = backend.run({"image": batch})["probabilities"]
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.manifest.labels[int(np.argmax(probs[0]))] == "healthy"
    assert probs[1, 0] < probs[0, 0]  # the spotted leaf looks less healthy


def test_variant_is_chosen_by_measured_latency(built) -> None:  # type: ignore[no-untyped-def]
    model, _ = built
    keys = trusted(model)
    # A speed-up demand no measurement can meet keeps fp32; one any measurement meets picks int8.
    slow = load_backend(ModelSettings(manifest=model.manifest_path, int8_min_speedup=1e6), keys)
    fast = load_backend(ModelSettings(manifest=model.manifest_path, int8_min_speedup=1e-6), keys)
    assert (slow.variant, fast.variant) == ("fp32", "int8")
    assert set(fast.latency_s) == {"fp32", "int8"}
    only = load_backend(ModelSettings(manifest=model.manifest_path, variants=["fp32"], int8_min_speedup=1e-6), keys)
    assert only.variant == "fp32"


def test_a_model_that_does_not_reproduce_its_reference_output_is_not_loaded(tmp_path: Path) -> None:
    model = build_classifier(tmp_path, tamper_expected=True)
    with pytest.raises(ModelLoadError, match="self-test") as err:
        load_backend(ModelSettings(manifest=model.manifest_path), trusted(model))
    assert err.value.reason == "self_test"


def test_signature_and_file_digest_are_checked(tmp_path: Path, built) -> None:  # type: ignore[no-untyped-def]
    model, _ = built
    other = build_classifier(tmp_path / "other", name="othernet")
    with pytest.raises(ModelLoadError) as err:
        load_backend(ModelSettings(manifest=model.manifest_path), trusted(other))
    assert err.value.reason == "unknown_key"
    with pytest.raises(ModelLoadError) as err:
        load_backend(ModelSettings(manifest=model.manifest_path), TrustedKeys())
    assert err.value.reason == "no_trusted_keys"
    onnx_file = other.directory / other.manifest.file("fp32").path
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match=r"size|sha256"):
        load_backend(ModelSettings(manifest=other.manifest_path), trusted(other))


def test_yield_runner_builds_the_season_tensor_from_sensor_history(tmp_path: Path) -> None:
    model = build_yield_model(tmp_path / "y", time_steps=10)
    backend = load_backend(ModelSettings(manifest=model.manifest_path, threads=1), trusted(model))
    box = Outbox(tmp_path / "o.db", budget_bytes=10**8)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    day = 86400.0
    readings = [
        (start.timestamp() + d * day + 3600 * h, "air_temperature", 10.0 + d) for d in range(3) for h in (0, 12)
    ]
    readings += [(start.timestamp() + d * day, "rainfall", 2.0) for d in range(3) for _ in range(2)]
    box.add([], readings=readings)
    weather = tmp_path / "weather.csv"
    weather.write_text("date,soil_moisture\n2026-10-01,41\n2026-10-05,45\n")
    settings = YieldSettings(enabled=True, model=ModelSettings(manifest=model.manifest_path),
                             season_start=start.date(), weather_csv=weather, crop="maize")  # fmt: skip
    runner = YieldRunner(settings, backend, box, Identity("farm1", "dev1"))
    now = datetime(2026, 10, 4, tzinfo=UTC)
    tensor, days = runner.season_tensor(now)
    assert days == 3 and tensor.shape == (10, 3) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[:4, 0], [10, 11, 12, 20])  # then the training mean for the future
    np.testing.assert_allclose(tensor[:4, 2], [4, 4, 4, 3])  # rainfall summed per day
    assert tensor[0, 1] == 41 and tensor[4, 1] == 45 and tensor[1, 1] == 30  # weather file, else the mean
    estimate = runner.run(now)
    assert estimate.quantiles.p10 <= estimate.quantiles.p50 <= estimate.quantiles.p90
    assert estimate.days_into_season == 3 and estimate.unit == "t/ha" and estimate.crop == "maize"
    assert estimate.model.name == "yieldnet"


def test_providers_fall_back_to_what_exists_and_what_initialises(built, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from edge_agent.inference import onnxruntime_backend as backend_mod

    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]
    present = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: present)
    assert backend_mod.available_providers(wanted) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert backend_mod.available_providers(["TensorrtExecutionProvider"]) == ["CPUExecutionProvider"]
    # A provider listed by the build but failing to initialise (no driver) is dropped, CPU remains.
    real = ort.InferenceSession
    tried: list[list[str]] = []

    def session(path, sess_options=None, providers=()):  # type: ignore[no-untyped-def]
        tried.append(list(providers))
        if providers[0] == "CUDAExecutionProvider":
            raise RuntimeError("CUDA driver not found")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    model, _ = built
    onnx_path = model.directory / model.manifest.file("fp32").path
    sess = backend_mod.create_session(onnx_path, ["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1)
    assert tried == [["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]]
    assert sess.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.gpu
def test_cuda_provider_is_used_when_present(built) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider (install onnxruntime-gpu: the edge-gpu extra)")
    model, _ = built
    backend = load_backend(ModelSettings(manifest=model.manifest_path), trusted(model))
    assert backend.provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def test_yield_runner_reads_the_trainers_variable_names_scales_and_crop(tmp_path: Path) -> None:
    model = build_yield_model(tmp_path / "y", time_steps=4)
    backend = load_backend(ModelSettings(manifest=model.manifest_path, threads=1), trusted(model))
    settings = YieldSettings.model_validate(
        {"enabled": True, "season_start": "2026-10-01", "crop": "corn",
         "variables": {"soil_moisture.mean": {"quantity": "soil_moisture", "scale": 0.01}}}
    )  # fmt: skip
    assert settings.model is None  # the model may come over the air
    runner = YieldRunner(settings, backend, Outbox(tmp_path / "o.db", budget_bytes=10**7), Identity("f", "d"))
    assert runner._source("air_temperature.max") == ("air_temperature", "max", 1.0)
    assert runner._source("rainfall.sum") == ("rainfall", "sum", 1.0)
    assert runner._source("soil_moisture.mean") == ("soil_moisture", "mean", 0.01)
    assert runner._source("ndvi") == ("ndvi", "mean", 1.0)
    corn, soy = (SeasonVariable(name=f"crop={c}", unit="1", mean=0.5, std=0.5, static=True) for c in ("corn", "soy"))
    area = SeasonVariable(name="area", unit="ha", mean=30.0, std=5.0, static=True)
    assert [runner._static_value(v) for v in (corn, soy, area)] == [1.0, 0.0, 30.0]
