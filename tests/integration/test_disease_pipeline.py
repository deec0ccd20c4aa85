"""A tiny synthetic run through train -> export -> parity -> signed manifest -> edge-only inference."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud_trainer import export_cli, train_cli
from cropwatch import data_cli
from shared.display_names import display_names
from shared.manifest import ModelManifest, TrustedKeys, generate_keypair, verify_artifact, verify_manifest
from tests.services import cropwatch_env

torch.set_num_threads(1)

TINY = ["--image-size", "32", "--batch-size", "8", "--threads", "1", "--quiet", "--pretrained", "none"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("disease")
    data = base / "leaves"
    assert (
        data_cli.main(["synth-leaves", str(data), "--classes", "3", "--per-class", "8", "--size", "40", "--quiet"], "t")
        == 0
    )
    # One unreadable file in the data folder: it must be skipped and listed, not crash the run.
    (data / "Synthetic_leaf___Blight" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run = base / "run"
    rc = train_cli.main(
        ["disease", "--data", str(data), "--arch", "mobilenetv3_large_100", "--epochs", "2", "--out", str(run), *TINY],
        "cropwatch train",
    )
    assert rc == 0
    _priv, pub, _kid = generate_keypair(base / "keys")
    rc = export_cli.main(
        [str(run), "--key", str(base / "keys" / "cropwatch-signing.key"), "--version", "1.0.0", "--threads", "1"],
        "cropwatch export",
    )
    assert rc == 0
    return {"base": base, "data": data, "run": run, "pub": pub, "export": run / "export"}


def test_run_folder_holds_config_split_metrics_and_report(tiny_run: dict[str, Path]) -> None:
    run = tiny_run["run"]
    for name in (
        "config.json",
        "split.csv",
        "dataset.json",
        "history.csv",
        "checkpoint.pt",
        "best.pt",
        "model.pt",
        "run.json",
    ):
        assert (run / name).is_file(), name
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["skipped_count"] == 1 and dataset["skipped"][0]["path"].endswith("broken.jpg")
    assert dataset["synthetic"] is True
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "disease_classification" and info["synthetic"] is True
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    cm = np.array(metrics["test"]["confusion_matrix"])
    assert cm.sum() == metrics["test"]["n"] == info["metrics"]["test_images"]
    assert abs(np.trace(cm) / cm.sum() - metrics["test"]["accuracy"]) < 1e-9
    assert (run / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert "accuracy" in (run / "eval" / "report.md").read_text()
    assert 0.5 <= metrics["temperature"] <= 10
    split_rows = (run / "split.csv").read_text().splitlines()
    assert len(split_rows) == 1 + 24  # the broken file is in no split


def test_manifest_is_signed_and_describes_the_files(tiny_run: dict[str, Path]) -> None:
    manifest = ModelManifest.load(tiny_run["export"] / "manifest.json")
    assert verify_manifest(manifest, TrustedKeys.from_sources([str(tiny_run["pub"])]))
    assert manifest.task == "disease_classification" and manifest.synthetic is True
    assert manifest.labels == json.loads((tiny_run["run"] / "run.json").read_text())["classes"]
    # What people read ships with the model (signed with it); the labels stay the class ids.
    assert manifest.display_names == display_names(manifest.labels)
    assert manifest.inputs[0].dtype == "uint8" and manifest.inputs[0].shape == ["batch", 32, 32, 3]
    assert manifest.training_data_fingerprint.startswith("sha256:")
    assert "test_accuracy" in manifest.metrics
    for f in manifest.files:
        verify_artifact(manifest, f.variant, tiny_run["export"] / f.path)
    variants = {f.variant for f in manifest.files}
    assert "fp32" in variants
    # int8 is either shipped with its measured accuracy or dropped with the reason written down.
    assert ("int8" in variants and "test_accuracy" in manifest.file("int8").metrics) or manifest.notes[
        "int8"
    ].startswith("dropped")
    tampered = manifest.model_copy(update={"labels": list(reversed(manifest.labels))})
    with pytest.raises(Exception, match="does not match"):
        verify_manifest(tampered, TrustedKeys.from_sources([str(tiny_run["pub"])]))


def test_onnx_matches_torch_on_real_images_with_dynamic_batch(tiny_run: dict[str, Path]) -> None:
    import onnxruntime as ort

    from cloud_trainer.disease import dataset as ds
    from cloud_trainer.disease.export import load_run, run_torch

    loaded = load_run(tiny_run["run"])
    data = ds.load_dataset(tiny_run["data"])
    images = np.stack([ds.eval_array(s, 32) for s in data.samples[:5]])
    manifest = ModelManifest.load(tiny_run["export"] / "manifest.json")
    sess = ort.InferenceSession(
        str(tiny_run["export"] / manifest.file("fp32").path), providers=["CPUExecutionProvider"]
    )
    for batch in (images[:1], images):
        got = sess.run(None, {"image": batch})[0]
        assert got.shape == (len(batch), 3)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
        assert np.max(np.abs(got - run_torch(loaded.model, batch))) <= 1e-4


EDGE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "timm", "torchvision"):
                raise ImportError(f"{name} is not installed on the edge")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
        sys.exit("torch import was not blocked")
    except ImportError:
        pass

    import numpy as np
    import onnxruntime as ort
    from shared.image import decode_image
    from shared.manifest import ModelManifest, TrustedKeys, verify_artifact, verify_manifest

    folder, pub, photo = sys.argv[1:4]
    m = ModelManifest.load(f"{folder}/manifest.json")
    verify_manifest(m, TrustedKeys.from_sources([pub]))
    result = {}
    for f in m.files:
        verify_artifact(m, f.variant, f"{folder}/{f.path}")
        sess = ort.InferenceSession(f"{folder}/{f.path}", providers=["CPUExecutionProvider"])
        inp = m.self_test_inputs["image"].to_array()
        out = sess.run(None, {"image": inp})[0]
        assert np.allclose(out, f.expected_outputs["probabilities"].to_array(), atol=f.atol), f.variant
        img = decode_image(open(photo, "rb").read(), (m.preprocessing.height, m.preprocessing.width))
        probs = sess.run(None, {"image": img[None]})[0][0]
        result[f.variant] = m.labels[int(probs.argmax())]
    assert "torch" not in sys.modules
    print(json.dumps(result))
    """
)


def test_exported_model_runs_where_torch_cannot_be_imported(tiny_run: dict[str, Path]) -> None:
    photo = next(tiny_run["data"].glob("Synthetic_leaf___Rust/*.jpg"), None) or next(tiny_run["data"].glob("*/*.jpg"))
    proc = subprocess.run(
        [sys.executable, "-c", EDGE_SCRIPT, str(tiny_run["export"]), str(tiny_run["pub"]), str(photo)],
        env=cropwatch_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = ModelManifest.load(tiny_run["export"] / "manifest.json")
    assert set(result) == {f.variant for f in manifest.files}
    assert all(label in manifest.labels for label in result.values())


def test_export_without_key_explains_what_to_do(tiny_run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc = export_cli.main([str(tiny_run["run"]), "--key", str(tiny_run["base"] / "missing.key")], "cropwatch export")
    assert rc == 2
    assert "cropwatch keys generate" in capsys.readouterr().err


def test_export_of_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_cli.main([str(tmp_path)], "cropwatch export") == 2
    assert "run.json" in capsys.readouterr().err


def test_train_with_a_one_image_class_names_it(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert (
        data_cli.main(["synth-leaves", str(data), "--classes", "2", "--per-class", "4", "--size", "24", "--quiet"], "t")
        == 0
    )
    lonely = data / "Potato___Early_blight"
    lonely.mkdir()
    (lonely / "one.jpg").write_bytes(next(data.glob("*/*.jpg")).read_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cropwatch",
            "train",
            "disease",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "1",
            *TINY,
        ],
        env=cropwatch_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "'Potato___Early_blight' has 1" in proc.stderr


def test_int8_over_budget_is_dropped_with_the_reason(tiny_run: dict[str, Path]) -> None:
    out = tiny_run["base"] / "export-strict"
    key = str(tiny_run["base"] / "keys" / "cropwatch-signing.key")
    # A budget below zero cannot be met: int8 must go, and the manifest must say why.
    args = [str(tiny_run["run"]), "--key", key, "--out", str(out), "--int8-budget", "-100", "--threads", "1"]
    assert export_cli.main(args, "cropwatch export") == 0
    manifest = ModelManifest.load(out / "manifest.json")
    assert [f.variant for f in manifest.files] == ["fp32"]
    assert manifest.notes["int8"].startswith("dropped (over the accuracy budget)")
    assert not list(out.glob("*.int8.onnx"))


def test_run_carries_abstention_into_the_manifest_and_evaluate_reports_trust(
    tiny_run: dict[str, Path], tmp_path: Path
) -> None:
    from cloud_trainer import evaluate_cli

    manifest = ModelManifest.load(tiny_run["export"] / "manifest.json")
    rule = manifest.abstention
    assert rule is not None and rule.score == "prototype_cosine" and rule.leaf_output == "leaf"
    assert [o.name for o in manifest.outputs] == ["probabilities", "logits", "familiarity", "leaf"]
    info = json.loads((tiny_run["run"] / "run.json").read_text())
    assert info["abstention"]["threshold"] == pytest.approx(rule.threshold)
    assert "## Trust" in (tiny_run["run"] / "eval" / "report.md").read_text()
    out = tmp_path / "ev"
    assert evaluate_cli.main([str(tiny_run["run"]), str(tiny_run["data"]), "--non-leaf", "--out", str(out)], "t") == 0
    sets = json.loads((out / "metrics.json").read_text())["sets"]
    assert set(sets) == {"leaves", "not a leaf"}
    assert sets["not a leaf"]["accuracy"] == 0.0 and 0.0 <= sets["not a leaf"]["not_a_leaf"] <= 1.0
    assert (out / "risk_coverage.png").stat().st_size > 1000 and "## Leaf gate" in (out / "report.md").read_text()
