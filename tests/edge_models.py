"""Tiny real ONNX models with signed manifests, built without torch (for agent tests and demos).

The classifier follows the design's image contract: uint8 NHWC RGB ``[N, H, W, 3]`` in, the
normalisation inside the graph, class probabilities out. It scores colour: the mean of each RGB
channel through a small linear layer and a softmax, so a green leaf and a brown one get different
labels. The yield model takes a float32 season tensor ``[N, T, V]`` and outputs the expected yield
``[N, 1]`` and ordered quantiles ``[N, 3]`` (p10, p50, p90).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from shared.manifest import (
    Abstention,
    ImagePreprocessing,
    ModelFile,
    ModelManifest,
    SeasonPreprocessing,
    SeasonVariable,
    TensorData,
    TensorSpec,
    generate_keypair,
    load_private_key,
    sha256_file,
    sign_manifest,
)

LEAF_LABELS = ["healthy", "early_blight", "late_blight"]
# Rows: mean R, G, B in [0, 1]; columns: labels. The score is greenness (G - R): a clearly green
# picture is healthy, a brownish one late blight, in between early blight.
_COLOUR_WEIGHTS = np.array([[-40.0, 0.0, 40.0], [40.0, 0.0, -40.0], [0.0, 0.0, 0.0]], dtype=np.float32)
_COLOUR_BIAS = np.array([-2.0, 0.0, -1.2], dtype=np.float32)


@dataclass
class BuiltModel:
    directory: Path
    manifest_path: Path
    public_key: Path
    private_key: Path
    manifest: ModelManifest


def _keys(directory: Path, key_dir: Path | None) -> tuple[Path, Path]:
    key_dir = key_dir or directory
    priv, pub = key_dir / "cropwatch-signing.key", key_dir / "cropwatch-signing.pub"
    if not priv.exists():
        generate_keypair(key_dir)
    return priv, pub


def classifier_graph(size: int, labels: list[str], temperature: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    n = len(labels)
    rng = np.random.default_rng(seed)
    weights = np.zeros((3, n), dtype=np.float32)
    bias = np.zeros(n, dtype=np.float32)
    weights[:, : min(3, n)] = _COLOUR_WEIGHTS[:, : min(3, n)]
    bias[: min(3, n)] = _COLOUR_BIAS[: min(3, n)]
    if n > 3:
        weights[:, 3:] = rng.normal(0, 0.5, size=(3, n - 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array([1 / 255.0], dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        numpy_helper.from_array(weights / temperature, "W"),
        numpy_helper.from_array(bias / temperature, "B"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "scale"], ["xn"]),
        helper.make_node("ReduceMean", ["xn", "axes"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "leaf_colour_classifier",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def trust_classifier_graph(size: int, labels: list[str]) -> onnx.ModelProto:
    """The colour classifier plus the trust outputs the trainer's graph has (logits, familiarity, leaf).

    familiarity is greenness (mean G - mean R): a green leaf is familiar, a brown or grey frame is
    not; leaf is sigmoid(40 * (colourfulness - 0.08)) with colourfulness the spread of the mean
    channels, so a blank, grey or noise frame (all channels alike) is not a leaf.
    """
    base = classifier_graph(size, labels)
    g = base.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([[-1.0], [1.0], [0.0]], dtype=np.float32), "Wf"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "Bf"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "ch"),
            numpy_helper.from_array(np.array([0.08], dtype=np.float32), "leaf_shift"),
            numpy_helper.from_array(np.array([40.0], dtype=np.float32), "leaf_gain"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Gemm", ["pooled", "Wf", "Bf"], ["familiarity"]),
            helper.make_node("ReduceMax", ["pooled", "ch"], ["cmax"], keepdims=1),
            helper.make_node("ReduceMin", ["pooled", "ch"], ["cmin"], keepdims=1),
            helper.make_node("Sub", ["cmax", "cmin"], ["spread"]),
            helper.make_node("Sub", ["spread", "leaf_shift"], ["spread0"]),
            helper.make_node("Mul", ["spread0", "leaf_gain"], ["leaf_logit"]),
            helper.make_node("Sigmoid", ["leaf_logit"], ["leaf"]),
        ]
    )
    for name, dims in (("logits", ["batch", len(labels)]), ("familiarity", ["batch", 1]), ("leaf", ["batch", 1])):
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    onnx.checker.check_model(base)
    return base


def build_trust_classifier(
    directory: Path, *, threshold: float = 0.05, size: int = 32, key_dir: Path | None = None, version: str = "1.0.0"
) -> BuiltModel:
    """A signed colour classifier whose manifest carries an abstention rule (uncertain / not_a_leaf)."""
    labels = list(LEAF_LABELS)
    n = len(labels)
    return _write_and_sign(
        Path(directory),
        {"fp32": trust_classifier_graph(size, labels)},
        key_dir,
        False,
        name="leafnet",
        version=version,
        task="disease_classification",
        inputs=[TensorSpec(name="image", dtype="uint8", shape=["batch", size, size, 3])],
        outputs=[
            TensorSpec(name="probabilities", dtype="float32", shape=["batch", n]),
            TensorSpec(name="logits", dtype="float32", shape=["batch", n]),
            TensorSpec(name="familiarity", dtype="float32", shape=["batch", 1]),
            TensorSpec(name="leaf", dtype="float32", shape=["batch", 1]),
        ],
        labels=labels,
        preprocessing=ImagePreprocessing(height=size, width=size),
        self_test_inputs={"image": TensorData.seeded("uint8", [2, size, size, 3], "self-test")},
        abstention=Abstention(
            score="prototype_cosine", score_output="familiarity", threshold=threshold, leaf_output="leaf",
            leaf_threshold=0.5, target_risk=0.03,
        ),
    )  # fmt: skip


def yield_graph(time_steps: int, variables: list[SeasonVariable], spread: float = 0.5) -> onnx.ModelProto:
    v = len(variables)
    means = np.array([x.mean for x in variables], dtype=np.float32)
    stds = np.array([x.std for x in variables], dtype=np.float32)
    w = np.linspace(0.2, 1.0, v, dtype=np.float32).reshape(v, 1)
    inits = [
        numpy_helper.from_array(means, "mean"),
        numpy_helper.from_array(stds, "std"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array([10.0], dtype=np.float32), "B"),
        numpy_helper.from_array(np.array([[-spread, 0.0, spread]], dtype=np.float32), "offsets"),
    ]
    nodes = [
        helper.make_node("Sub", ["season", "mean"], ["c"]),
        helper.make_node("Div", ["c", "std"], ["z"]),
        helper.make_node("ReduceMean", ["z", "axes"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "W", "B"], ["expected"]),
        helper.make_node("Add", ["expected", "offsets"], ["quantiles"]),
    ]
    graph = helper.make_graph(
        nodes,
        "season_yield",
        [helper.make_tensor_value_info("season", TensorProto.FLOAT, ["batch", time_steps, v])],
        [
            helper.make_tensor_value_info("expected", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _expected(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, TensorData]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return {n: TensorData.from_array(a) for n, a in zip(names, sess.run(None, inputs), strict=True)}


def _write_and_sign(
    directory: Path,
    graphs: dict[str, onnx.ModelProto],
    key_dir: Path | None,
    tamper_expected: bool,
    **manifest_fields: object,
) -> BuiltModel:
    directory.mkdir(parents=True, exist_ok=True)
    self_test_inputs: dict[str, TensorData] = manifest_fields.pop("self_test_inputs")  # type: ignore[assignment]
    inputs = {n: td.to_array() for n, td in self_test_inputs.items()}
    files = []
    for variant, graph in graphs.items():
        name = f"{manifest_fields['name']}-{manifest_fields['version']}.{variant}.onnx"
        path = directory / name
        onnx.save(graph, str(path))
        digest, size = sha256_file(path)
        expected = _expected(path, inputs)
        if tamper_expected:
            expected = {
                n: TensorData.from_array((td.to_array() + 0.25).astype(td.to_array().dtype))
                for n, td in expected.items()
            }
        files.append(
            ModelFile(variant=variant, path=name, sha256=digest, size=size, expected_outputs=expected, atol=1e-4)
        )
    manifest = ModelManifest(files=files, self_test_inputs=self_test_inputs, synthetic=True, **manifest_fields)
    priv, pub = _keys(directory, key_dir)
    manifest = sign_manifest(manifest, load_private_key(priv))
    manifest_path = directory / f"{manifest.name}-{manifest.version}.manifest.json"
    manifest.save(manifest_path)
    return BuiltModel(directory, manifest_path, pub, priv, manifest)


def build_classifier(
    directory: Path,
    *,
    name: str = "leafnet",
    version: str = "1.0.0",
    size: int = 32,
    labels: list[str] | None = None,
    temperature: float = 1.0,
    int8: bool = False,
    key_dir: Path | None = None,
    tamper_expected: bool = False,
    min_agent_version: str = "0.1.0",
) -> BuiltModel:
    """A colour classifier with a signed manifest (and an ``int8`` file when asked)."""
    labels = labels or list(LEAF_LABELS)
    graphs = {"fp32": classifier_graph(size, labels, temperature)}
    if int8:
        # Same function, a different file: the agent's choice between them is by measured latency.
        g = classifier_graph(size, labels, temperature)
        g.doc_string = "int8 stand-in"
        graphs["int8"] = g
    return _write_and_sign(
        Path(directory),
        graphs,
        key_dir,
        tamper_expected,
        name=name,
        version=version,
        task="disease_classification",
        inputs=[TensorSpec(name="image", dtype="uint8", shape=["batch", size, size, 3])],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=["batch", len(labels)])],
        labels=labels,
        preprocessing=ImagePreprocessing(height=size, width=size),
        self_test_inputs={"image": TensorData.seeded("uint8", [2, size, size, 3], "self-test")},
        min_agent_version=min_agent_version,
    )


YIELD_VARIABLES = [
    SeasonVariable(name="air_temperature", unit="degC", mean=20.0, std=5.0),
    SeasonVariable(name="soil_moisture", unit="%", mean=30.0, std=10.0),
    SeasonVariable(name="rainfall", unit="mm", mean=3.0, std=5.0),
]


def build_yield_model(
    directory: Path,
    *,
    name: str = "yieldnet",
    version: str = "1.0.0",
    time_steps: int = 30,
    variables: list[SeasonVariable] | None = None,
    key_dir: Path | None = None,
) -> BuiltModel:
    variables = variables or list(YIELD_VARIABLES)
    prep = SeasonPreprocessing(variables=variables, time_steps=time_steps, target="yield", target_unit="t/ha")
    return _write_and_sign(
        Path(directory),
        {"fp32": yield_graph(time_steps, variables)},
        key_dir,
        False,
        name=name,
        version=version,
        task="yield_forecast",
        inputs=[TensorSpec(name="season", dtype="float32", shape=["batch", time_steps, len(variables)])],
        outputs=[
            TensorSpec(name="expected", dtype="float32", shape=["batch", 1]),
            TensorSpec(name="quantiles", dtype="float32", shape=["batch", 3]),
        ],
        preprocessing=prep,
        self_test_inputs={"season": TensorData.seeded("float32", [1, time_steps, len(variables)], "self-test")},
    )
