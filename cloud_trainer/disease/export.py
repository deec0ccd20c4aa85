"""Export a disease training run to ONNX (fp32 and int8) with a signed manifest.

The graph takes what a field device has after :func:`shared.image.decode_image`: uint8 RGB,
NHWC ``[batch, H, W, 3]``. It converts and normalises inside, runs the network, divides the
logits by the temperature fitted on validation, and outputs calibrated class probabilities.

Checks, each failing loudly: ``onnx.checker`` (full), onnxruntime against torch on real test
images (max abs difference of probabilities <= 1e-4), int8 accuracy on the test split within the
budget (otherwise the int8 file is dropped and the reason written in the manifest).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from shared.display_names import display_names
from shared.manifest import (
    ImagePreprocessing,
    ModelFile,
    ModelManifest,
    TensorData,
    TensorSpec,
    TrustedKeys,
    load_private_key,
    sha256_file,
    sign_manifest,
    verify_manifest,
)

from . import dataset as ds
from .models import build_model
from .outputs import OUTPUT_NAME, OUTPUT_NAMES, ExportModel, ProbabilityModel, abstention_of, output_specs
from .trust_head import TrustHead

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
PARITY_ATOL = 1e-4
# Self-test tolerances on the device: another CPU (ARM, other SIMD) reorders float sums, and int8
# kernels round differently between instruction sets; these bound that, not model error.
SELF_TEST_ATOL = {"fp32": 1e-3, "int8": 2e-2}
OPSET = 18


class ExportError(RuntimeError):
    """An export check failed; the message names the check and the numbers."""


@dataclass
class LoadedRun:
    run_dir: Path
    info: dict[str, Any]
    model: ProbabilityModel
    classes: list[str]
    image_size: int


def load_run(run_dir: Path) -> LoadedRun:
    run_json = run_dir / "run.json"
    if not run_json.is_file() or not (run_dir / "model.pt").is_file():
        raise ExportError(f"{run_dir} is not a finished training run (run.json and model.pt are missing)")
    info = json.loads(run_json.read_text())
    blob = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    net, _ = build_model(blob["arch"], len(blob["classes"]), "none", drop_rate=0.0)
    net.load_state_dict(blob["model"])
    trust = TrustHead.from_state(blob["trust_head"]) if "trust_head" in blob else None
    model = ProbabilityModel(net, float(blob["temperature"]), trust).eval()
    return LoadedRun(run_dir, info, model, list(blob["classes"]), int(blob["image_size"]))


def build_probability_model(arch: str, num_classes: int, temperature: float = 1.0) -> ProbabilityModel:
    net, _ = build_model(arch, num_classes, "none", drop_rate=0.0)
    return ProbabilityModel(net, temperature).eval()


def export_onnx(model: ProbabilityModel, path: Path, image_size: int) -> Path:
    """Write the ONNX file (dynamic batch) and run the full onnx checker on it."""
    import onnx

    model = model.eval()
    example = torch.randint(0, 256, (2, image_size, image_size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    program = torch.onnx.export(
        ExportModel(model).eval(),
        (example,),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES[: 4 if model.trust is not None else 2]),
        dynamic_shapes={"image": {0: batch}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    if program is None:
        # Only the TorchScript path (dynamo=False) returns None; dynamo always gives a program.
        raise ExportError("torch.onnx.export returned no ONNX program")
    program.save(str(tmp))
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    tmp.replace(path)
    return path


def ort_session(path: Path, threads: int = 1, spin: bool = True) -> InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_ort(session: InferenceSession, images: np.ndarray, batch: int = 16) -> np.ndarray:
    out = [session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def run_torch(model: ProbabilityModel, images: np.ndarray, batch: int = 16) -> np.ndarray:
    out = [model(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out)


def check_parity(model: ProbabilityModel, onnx_path: Path, images: np.ndarray, atol: float = PARITY_ATOL) -> float:
    """Max abs difference of probabilities, onnxruntime vs torch; ExportError over ``atol``."""
    ort_out = run_ort(ort_session(onnx_path), images)
    torch_out = run_torch(model, images)
    diff = float(np.max(np.abs(ort_out - torch_out)))
    if not diff <= atol:  # also catches NaN
        raise ExportError(
            f"onnxruntime and torch disagree on {len(images)} real images: max abs difference of probabilities "
            f"{diff:.3g} > {atol:g}; the export is wrong, do not ship it"
        )
    return diff


class _Calibration:
    """Feeds training images to onnxruntime's static quantisation calibrator."""

    def __init__(self, images: np.ndarray, batch: int = 8) -> None:
        self._batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        b = next(self._batches, None)
        return None if b is None else {INPUT_NAME: b}

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        pass


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs through the root logger, one INFO line per tensor: hold the root
    at WARNING meanwhile, so its warnings and this module's errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_images: np.ndarray) -> Path:
    """Static QDQ quantisation: int8 weights per channel, uint8 activations, calibrated on ``images``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = int8_path.with_name(int8_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
    except Exception:
        logger.warning("quantisation pre-processing failed; quantising the plain export", exc_info=True)
        pre.write_bytes(fp32_path.read_bytes())
    graph = onnx.load(str(pre))
    # Probabilities stay float: a uint8 softmax output would be quantised to steps of 1/255.
    exclude = [n.name for n in graph.graph.node if n.op_type == "Softmax"]
    tmp = int8_path.with_name(int8_path.name + ".partial")
    with _quiet_quantizer():
        quantize_static(
            str(pre),
            str(tmp),
            _Calibration(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )
    pre.unlink(missing_ok=True)
    tmp.replace(int8_path)
    return int8_path


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def latency_ms(session: InferenceSession, image: np.ndarray, repeats: int = 30) -> float:
    """Median milliseconds per call: the median shrugs off other processes' bursts on a shared CPU."""
    session.run([OUTPUT_NAME], {INPUT_NAME: image})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: image})
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def _arrays(samples: list[ds.Sample], size: int, limit: int | None = None) -> np.ndarray:
    chosen = samples if limit is None else samples[:limit]
    return np.stack([ds.eval_array(s, size) for s in chosen]) if chosen else np.zeros((0, size, size, 3), np.uint8)


def export_run(
    run_dir: Path,
    out_dir: Path | None = None,
    name: str = "leaf-disease",
    version: str | None = None,
    key_path: Path | None = None,
    int8: bool = True,
    int8_budget_points: float = 1.0,
    calibration_images: int = 64,
    int8_min_speedup: float | None = None,
    extra_metrics: dict[str, float] | None = None,
    extra_notes: dict[str, str] | None = None,
) -> tuple[ModelManifest, Path]:
    loaded = load_run(run_dir)
    info, size, classes = loaded.info, loaded.image_size, loaded.classes
    out_dir = out_dir or run_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    version = version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d-%H%M%S")
    stem = f"{name}-{version}"

    split = _run_split(run_dir, info)
    test_images = _arrays(split["test"], size)
    test_labels = _labels(split["test"], classes)

    fp32_path = export_onnx(loaded.model, out_dir / f"{stem}.onnx", size)
    parity = check_parity(loaded.model, fp32_path, test_images[:32])
    n_parity = min(32, len(test_images))
    logger.info(
        "fp32 ONNX %s: onnx.checker ok, max |ort - torch| = %.2e on %d test images", fp32_path, parity, n_parity
    )

    fp32_session = ort_session(fp32_path)
    fp32_acc = accuracy(run_ort(fp32_session, test_images), test_labels)
    self_test = TensorData.seeded("uint8", [2, size, size, 3], seed=f"{name}:{version}:self-test")
    self_in = self_test.to_array()
    fp32_metrics = {"test_accuracy": fp32_acc, "parity_max_abs_diff": parity}
    files = [_model_file("fp32", fp32_path, fp32_session, self_in, fp32_metrics)]
    notes = {
        "exporter": f"torch {torch.__version__} dynamo, opset {OPSET}",
        "parity": f"max abs diff {parity:.2e} vs torch",
    }
    if int8:
        int8_file, notes["int8"] = _int8_variant(
            fp32_path,
            fp32_session,
            fp32_acc,
            out_dir / f"{stem}.int8.onnx",
            _arrays(_shuffled(list(split["train"])), size, calibration_images),
            (test_images, test_labels),
            self_in,
            int8_budget_points,
            int8_min_speedup,
        )
        if int8_file is not None:
            files.append(int8_file)
        logger.info("int8: %s", notes["int8"])

    manifest = ModelManifest(
        name=name,
        version=version,
        task="disease_classification",
        synthetic=bool(info.get("synthetic", False)),
        files=files,
        inputs=[TensorSpec(name=INPUT_NAME, dtype="uint8", shape=["batch", size, size, 3], description="RGB, NHWC")],
        outputs=output_specs(len(classes), loaded.model.trust is not None),
        labels=classes,
        display_names=display_names(classes),
        preprocessing=ImagePreprocessing(height=size, width=size, resize="center_crop"),
        metrics=_manifest_metrics(info, fp32_acc, extra_metrics),
        training_data_fingerprint=info["dataset_fingerprint"],
        training_run=str(run_dir.resolve())[-256:],
        self_test_inputs={INPUT_NAME: self_test},
        notes={**notes, "arch": info["arch"], **(extra_notes or {})},
        abstention=abstention_of(info, loaded.model.trust is not None),
    )
    if key_path is not None:
        manifest = _signed(manifest, key_path)
    manifest_path = manifest.save(out_dir / "manifest.json")
    return manifest, manifest_path


def _run_split(run_dir: Path, info: dict[str, Any]) -> dict[str, list[ds.Sample]]:
    """The run's own split, over the same images decoded the same way as on a device."""
    data = ds.load_dataset(info["data"], min_per_class=1)
    return ds.load_split(run_dir / "split.csv", data)


def _labels(samples: list[ds.Sample], classes: list[str]) -> np.ndarray:
    c2i = {c: i for i, c in enumerate(classes)}
    return np.array([c2i[s.label] for s in samples], dtype=np.int64)


def _signed(manifest: ModelManifest, key_path: Path) -> ModelManifest:
    private = load_private_key(key_path)
    manifest = sign_manifest(manifest, private)
    # Verify as an agent would, before anything leaves this machine.
    verify_manifest(manifest, TrustedKeys([private.public_key()]))
    return manifest


def _shuffled(samples: list[ds.Sample]) -> list[ds.Sample]:
    """The calibration pool in a fixed random order (seed 0), so the int8 file is reproducible."""
    rng = np.random.default_rng(0)
    rng.shuffle(samples)
    return samples


def _int8_variant(
    fp32_path: Path,
    fp32_session: InferenceSession,
    fp32_acc: float,
    int8_path: Path,
    calib: np.ndarray,
    test: tuple[np.ndarray, np.ndarray],
    self_in: np.ndarray,
    budget_points: float,
    min_speedup: float | None,
) -> tuple[ModelFile | None, str]:
    """The int8 file when it stays within the accuracy budget (and speed-up, when asked), and the note why."""
    test_images, test_labels = test
    quantize_int8(fp32_path, int8_path, calib)
    int8_session = ort_session(int8_path)
    int8_acc = accuracy(run_ort(int8_session, test_images), test_labels)
    drop = (fp32_acc - int8_acc) * 100
    one = test_images[:1]
    speed = latency_ms(fp32_session, one) / max(latency_ms(int8_session, one), 1e-9)
    summary = (
        f"test accuracy int8 {int8_acc:.4f} vs fp32 {fp32_acc:.4f} "
        f"({(int8_acc - fp32_acc) * 100:+.2f} points against fp32, budget -{budget_points}); "
        f"batch-1 speed int8/fp32 {speed:.2f}x on the export machine, 1 thread"
    )
    # The export machine is rarely the field device, so speed only decides when asked to.
    too_slow = min_speedup is not None and speed < min_speedup
    if drop <= budget_points and not too_slow:
        metrics = {"test_accuracy": int8_acc, "speedup_vs_fp32": speed}
        return _model_file("int8", int8_path, int8_session, self_in, metrics), "kept: " + summary
    int8_path.unlink()
    why = "over the accuracy budget" if drop > budget_points else f"slower than {min_speedup}x"
    return None, f"dropped ({why}): " + summary


def _manifest_metrics(info: dict[str, Any], fp32_acc: float, extra: dict[str, float] | None) -> dict[str, float]:
    m = info["metrics"]
    return {
        "test_accuracy": float(m["test_accuracy"]),
        "test_macro_f1": float(m["test_macro_f1"]),
        "test_ece": float(m["test_ece"]),
        "test_images": float(m["test_images"]),
        "temperature": float(info["temperature"]),
        "onnx_fp32_test_accuracy": fp32_acc,
        **{k: float(v) for k, v in (extra or {}).items()},
    }


def _model_file(
    variant: str, path: Path, session: InferenceSession, self_in: np.ndarray, metrics: dict[str, float]
) -> ModelFile:
    digest, size = sha256_file(path)
    expected = session.run([OUTPUT_NAME], {INPUT_NAME: self_in})[0]
    return ModelFile(
        variant=variant,
        path=path.name,
        sha256=digest,
        size=size,
        expected_outputs={OUTPUT_NAME: TensorData.from_array(expected.astype(np.float32))},
        atol=SELF_TEST_ATOL[variant],
        metrics={k: float(v) for k, v in metrics.items()},
    )


def main(argv: list[str], prog: str) -> int:
    p = argparse.ArgumentParser(prog=prog, description="Export a disease training run to signed ONNX (fp32 + int8).")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/export)")
    p.add_argument("--name", default="leaf-disease", help="model name (lower-case id)")
    p.add_argument("--version", default=None, help="model version (default: UTC date-time)")
    p.add_argument(
        "--key",
        type=Path,
        default=Path("keys/cropwatch-signing.key"),
        help="Ed25519 private key from 'cropwatch keys generate' (default keys/cropwatch-signing.key)",
    )
    p.add_argument("--unsigned", action="store_true", help="write the manifest without a signature (agents refuse it)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 variant")
    p.add_argument("--int8-budget", type=float, default=1.0, help="max test-accuracy drop of int8, in points")
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument(
        "--int8-min-speedup",
        type=float,
        default=None,
        help="also drop int8 unless it is this much faster than fp32 here (batch 1, 1 thread); "
        "use only when this machine is like the target device",
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # The ONNX optimiser narrates every folded constant at INFO; only its warnings matter here.
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    key = None
    if not args.unsigned:
        if not args.key.is_file():
            print(
                f"{prog}: no signing key at {args.key}; create one with 'cropwatch keys generate', pass --key PATH, "
                "or --unsigned for a manifest agents will refuse",
                file=sys.stderr,
            )
            return 2
        key = args.key
    try:
        manifest, path = export_run(
            args.run_dir,
            args.out,
            args.name,
            args.version,
            key,
            int8=not args.no_int8,
            int8_budget_points=args.int8_budget,
            calibration_images=args.calibration_images,
            int8_min_speedup=args.int8_min_speedup,
        )
    except (ExportError, ds.DatasetError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    variants = ", ".join(f"{f.variant} {f.path} ({f.size / 1e6:.1f} MB)" for f in manifest.files)
    print(f"exported {manifest.name} {manifest.version}: {variants}; manifest {path}")
    for k, v in manifest.notes.items():
        print(f"  {k}: {v}")
    return 0
