"""Export a yield training run to ONNX with a signed manifest.

The graph takes the raw season tensor ``season`` float32 ``[batch, T, C]`` (cube units, NaN for a gap
or a day not yet reached) and, when the model has static inputs, ``static`` float32 ``[batch, S]``.
Normalisation, masking and the season-progress computation are inside. Outputs: ``yield`` ``[batch]``,
``quantiles`` ``[batch, Q]`` and ``season_progress`` ``[batch]``. docs/yield-model.md has the layout.

Checks, each failing loudly: ``onnx.checker``, onnxruntime against torch on the run's reference
seasons (real test seasons cut at several points) plus random gappy seasons, at two batch sizes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from shared.manifest import (
    ModelFile,
    ModelManifest,
    SeasonPreprocessing,
    SeasonVariable,
    TensorData,
    TensorSpec,
    TrustedKeys,
    load_private_key,
    sha256_file,
    sign_manifest,
    verify_artifact,
    verify_manifest,
)

from .errors import ExportError, one_line, run_cli
from .models import SeasonNet, build_model
from .train import BEST, CONFIG_FILE, TASK

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

logger = logging.getLogger(__name__)

OPSET = 17
REFERENCE_FILE = "reference_inputs.npz"
OUTPUTS = ("yield", "quantiles", "season_progress")


def load_run(run_dir: Path) -> tuple[dict[str, Any], SeasonNet]:
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ExportError(f"{run_dir} is not a training run: no {CONFIG_FILE}")
    config = json.loads(config_path.read_text())
    if config.get("task") != TASK:
        raise ExportError(f"{run_dir} is a {config.get('task')!r} run, not {TASK!r}")
    best = run_dir / BEST
    if not best.is_file():
        raise ExportError(f"{run_dir} has no {BEST}; did training finish an epoch?")
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    model = build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return config, model


def input_names(model: SeasonNet) -> list[str]:
    return ["season", "static"] if model.n_static else ["season"]


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class _WithStatic(torch.nn.Module):
    """The inference signature only: (season, static) -> (yield, quantiles, season_progress)."""

    def __init__(self, net: SeasonNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, season: torch.Tensor, static: torch.Tensor) -> Outputs:
        expected, quantiles, progress = self.net(season, static)
        return expected, quantiles, progress


class _SeasonOnly(torch.nn.Module):
    """The signature of a model without static inputs: season -> (yield, quantiles, season_progress)."""

    def __init__(self, net: SeasonNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, season: torch.Tensor) -> Outputs:
        expected, quantiles, progress = self.net(season, None)
        return expected, quantiles, progress


def export_onnx(model: SeasonNet, path: Path) -> Path:
    import onnx

    t, c, s = model.time_steps, model.n_channels, model.n_static
    example: tuple[torch.Tensor, ...] = (torch.zeros(2, t, c),)
    if s:
        example += (torch.zeros(2, s),)
    wrapper: torch.nn.Module = _WithStatic(model) if s else _SeasonOnly(model)
    names = input_names(model)
    dynamic = {n: {0: "batch"} for n in (*names, *OUTPUTS)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        # The RNN size checks and the batch-size note do not apply: h0 is built from the input's batch,
        # and parity is checked below at several batch sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        # The TorchScript exporter handles GRU/LSTM with an explicit initial state; dynamo is not needed here.
        torch.onnx.export(
            wrapper.eval(),
            example,
            str(tmp),
            input_names=names,
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    tmp.replace(path)
    return path


def ort_session(path: Path, threads: int = 1) -> InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_ort(session: InferenceSession, season: np.ndarray, static: np.ndarray | None) -> dict[str, np.ndarray]:
    feeds = {"season": season.astype(np.float32)}
    if static is not None and static.shape[1]:
        feeds["static"] = static.astype(np.float32)
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds), strict=True))


@torch.no_grad()
def run_torch(model: SeasonNet, season: np.ndarray, static: np.ndarray | None) -> dict[str, np.ndarray]:
    st = torch.from_numpy(static.astype(np.float32)) if model.n_static and static is not None else None
    out = model(torch.from_numpy(season.astype(np.float32)), st)
    return {k: v.numpy() for k, v in zip(OUTPUTS, out, strict=True)}


def random_seasons(model: SeasonNet, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gappy, truncated seasons drawn around the training normalisation, for parity beyond the test set."""
    rng = np.random.default_rng(seed)
    t, c, s = model.time_steps, model.n_channels, model.n_static
    x = model.x_mean.numpy() + model.x_std.numpy() * rng.normal(size=(n, t, c))
    x[rng.random((n, t, c)) < 0.05] = np.nan
    for i, cut in enumerate(rng.integers(1, t + 1, size=n)):
        x[i, cut:] = np.nan
    st = model.s_mean.numpy()[:s] + model.s_std.numpy()[:s] * rng.normal(size=(n, s))
    return x.astype(np.float32), st.astype(np.float32)


def check_parity(model: SeasonNet, session: InferenceSession, season: np.ndarray, static: np.ndarray) -> float:
    """Max |ORT - torch| over all outputs, at the given batch and one sample at a time."""
    worst = 0.0
    for lo, hi in ((0, len(season)), (0, 1), (len(season) - 1, len(season))):
        a = run_ort(session, season[lo:hi], static[lo:hi])
        b = run_torch(model, season[lo:hi], static[lo:hi])
        for k in OUTPUTS:
            worst = max(worst, float(np.max(np.abs(a[k] - b[k]))))
    return worst


def parity_atol(model: SeasonNet) -> float:
    # float32 carries ~7 digits: a yield of 200 bu/acre cannot agree closer than ~1e-5 between runtimes.
    scale = abs(float(model.y_mean)) + float(model.y_std)
    if model.log_target:
        scale = float(np.exp(float(model.y_mean) + 2 * float(model.y_std)))
    return max(1e-4, 2e-6 * scale)


def export_run(
    run_dir: str | Path,
    key_path: str | Path | None,
    out_dir: str | Path | None = None,
    name: str = "crop-yield",
    version: str | None = None,
) -> tuple[ModelManifest, Path]:
    """Export ``run_dir`` to ``out_dir`` (default RUN_DIR/export): ONNX + manifest, signed when a key is given."""
    run_dir = Path(run_dir)
    config, model = load_run(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    version = version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d-%H%M%S")
    onnx_path = export_onnx(model, out / f"{name}-{version}.onnx")
    session = ort_session(onnx_path)
    ref_season, ref_static = reference_seasons(run_dir, model)
    n_random = 32
    parity = check_export_parity(model, session, ref_season, ref_static, n_random)
    logger.info("ONNX %s: checker ok, max |ort - torch| = %.2e", onnx_path, parity)

    # Self-test: two real seasons (one cut half-way, one whole) so the device checks masking too.
    self_season, self_static = ref_season[:2], ref_static[:2]
    expected = run_ort(session, self_season, self_static)
    self_inputs = {"season": TensorData.from_array(self_season.astype(np.float32))}
    if model.n_static:
        self_inputs["static"] = TensorData.from_array(self_static.astype(np.float32))
    digest, size = sha256_file(onnx_path)
    metrics = _metrics(_load_report(run_dir))
    files = [
        ModelFile(
            variant="fp32",
            path=onnx_path.name,
            sha256=digest,
            size=size,
            expected_outputs={k: TensorData.from_array(v.astype(np.float32)) for k, v in expected.items()},
            # Another CPU reorders float sums; this bounds that, not model error.
            atol=min(1.0, max(1e-3, 20 * parity_atol(model))),
            metrics={"parity_max_abs_diff": parity, **metrics},
        )
    ]
    inputs, outputs = tensor_specs(model, config)
    manifest = ModelManifest(
        name=name,
        version=version,
        task=TASK,
        synthetic=bool(config.get("synthetic", False)),
        files=files,
        inputs=inputs,
        outputs=outputs,
        labels=[],
        preprocessing=season_preprocessing(model, config),
        metrics=metrics,
        training_data_fingerprint=config.get("training_data_fingerprint", "")[:128],
        training_run=str(run_dir.resolve())[-256:],
        self_test_inputs=self_inputs,
        notes={
            "arch": model.arch,
            "exporter": f"torch {torch.__version__} TorchScript exporter, opset {OPSET}",
            "parity": f"max abs diff {parity:.2e} vs torch over {len(ref_season) + n_random} seasons",
            "int8": "not produced: the model is a few thousand parameters and already sub-millisecond in fp32",
            "split": json.dumps(config.get("split", {}))[:1000],
        },
    )
    if key_path is not None:
        key = load_private_key(key_path)
        manifest = sign_manifest(manifest, key)
        verify_manifest(manifest, TrustedKeys([key.public_key()]))
    verify_artifact(manifest, "fp32", onnx_path)
    manifest_path = manifest.save(out / "manifest.json")
    logger.info("manifest %s (%s)", manifest_path, "signed" if manifest.signature else "UNSIGNED")
    return manifest, manifest_path


def reference_seasons(run_dir: Path, model: SeasonNet) -> tuple[np.ndarray, np.ndarray]:
    """The run's reference seasons (real test seasons), or random ones for a run that has none."""
    ref_path = run_dir / REFERENCE_FILE
    if not ref_path.is_file():
        return random_seasons(model, 8, seed=1)
    ref = np.load(ref_path)
    return ref["season"], ref["static"]


def check_export_parity(
    model: SeasonNet, session: InferenceSession, ref_season: np.ndarray, ref_static: np.ndarray, n_random: int
) -> float:
    """Max |ORT - torch| over the reference and ``n_random`` random seasons; ExportError above the tolerance."""
    rand_season, rand_static = random_seasons(model, n_random)
    atol = parity_atol(model)
    parity = max(
        check_parity(model, session, ref_season, ref_static),
        check_parity(model, session, rand_season, rand_static),
    )
    if not parity <= atol:
        raise ExportError(f"onnxruntime and torch disagree: max abs difference {parity:.3g} > {atol:.3g}")
    return parity


def tensor_specs(model: SeasonNet, config: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    t, c, s = model.time_steps, model.n_channels, model.n_static
    unit = config.get("target_unit", "")
    step = f"{config['time_step_days']:g}"
    inputs = [
        TensorSpec(
            name="season",
            dtype="float32",
            shape=["batch", t, c],
            description=f"day-step x variable, variables in preprocessing order (non-static); NaN = gap/not yet; "
            f"step k = days [{step}k, {step}(k+1)) since start",
        )
    ]
    if s:
        inputs.append(
            TensorSpec(
                name="static",
                dtype="float32",
                shape=["batch", s],
                description="static variables in preprocessing order; 'name=level' columns are one-hot (0/1)",
            )
        )
    outputs = [
        TensorSpec(name="yield", dtype="float32", shape=["batch"], description=f"expected yield [{unit}]"),
        TensorSpec(
            name="quantiles",
            dtype="float32",
            shape=["batch", len(model.quantiles)],
            description=f"yield quantiles {model.quantiles} [{unit}]",
        ),
        TensorSpec(
            name="season_progress",
            dtype="float32",
            shape=["batch"],
            description="fraction of the season up to the last step with any observation",
        ),
    ]
    return inputs, outputs


def season_preprocessing(model: SeasonNet, config: dict[str, Any]) -> SeasonPreprocessing:
    norm = config["normalisation"]
    dynamic = zip(config["channels"], config["channel_units"], norm["x_mean"], norm["x_std"], strict=True)
    static = zip(config["static"], config["static_units"], norm["s_mean"], norm["s_std"], strict=True)
    variables = [SeasonVariable(name=n[:64], unit=u[:32], static=False, mean=m, std=sd) for n, u, m, sd in dynamic]
    variables += [SeasonVariable(name=n[:64], unit=u[:32], static=True, mean=m, std=sd) for n, u, m, sd in static]
    return SeasonPreprocessing(
        variables=variables,
        time_steps=model.time_steps,
        time_step_days=float(config["time_step_days"]),
        align=config["align"],
        target=config["target"],
        target_unit=config.get("target_unit", ""),
        quantiles=list(model.quantiles),
    )


def _load_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _metrics(report: dict[str, Any]) -> dict[str, float]:
    if not report:
        return {}
    out: dict[str, float] = {}
    full = report["full_season"]
    for k in ("rmse", "mae", "r2", "coverage_10_90", "interval_width"):
        v = report["network"][full].get(k)
        if v is not None and np.isfinite(v):
            out[f"test_{k}"] = float(v)
    for frac, m in report["network"].items():
        out[f"test_rmse_at_{frac}"] = float(m["rmse"])
    for name, per in report["baselines"].items():
        out[f"baseline_{name}_rmse"] = float(per[full]["rmse"])
    out["test_samples"] = float(report["network"][full]["n"])
    return out


def main_cli(argv: list[str] | None = None, prog: str = "cropwatch export") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Export a yield training run to ONNX with a signed manifest.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--key", type=Path, default=None, help="Ed25519 private key (cropwatch keys generate)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/export)")
    p.add_argument("--name", default="crop-yield", help="model name (lower-case id)")
    p.add_argument("--version", default=None, help="model version (default: UTC date-time)")
    p.add_argument("--allow-unsigned", action="store_true", help="write an unsigned manifest (tests, local use)")
    args = p.parse_args(argv)
    if args.key is None and not args.allow_unsigned:
        p.error("--key is required (or --allow-unsigned); make one with 'cropwatch keys generate'")
    if args.key is not None and not args.key.is_file():
        fix = "make one with 'cropwatch keys generate', or pass --allow-unsigned"
        print(one_line(prog, FileNotFoundError(f"no signing key at {args.key}; {fix}")), file=sys.stderr)
        return 1
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def body() -> int:
        manifest, path = export_run(args.run_dir, args.key, args.out, args.name, args.version)
        print(path)
        print(f"{manifest.name} {manifest.version}: {manifest.files[0].path} sha256 {manifest.sha256}")
        return 0

    return run_cli(prog, body)


if __name__ == "__main__":
    sys.exit(main_cli(sys.argv[1:], prog="python -m cloud_trainer.yield_model.export"))
