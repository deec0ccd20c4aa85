"""Model manifests: the signed description that travels beside every ONNX file.

A manifest names the model, its files (with sha256 and size), its input/output spec, labels,
preprocessing, evaluation metrics and a self-test vector. It is signed with Ed25519 over its
canonical JSON (sorted keys, no whitespace, UTF-8, signature field left out), so any party holding
the public key can check that no byte of the description nor of the files has been changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from .display_names import display_name
from .errors import ManifestError
from .fields import STRICT_MODEL, Id, Label, Sha256Hex, UtcDatetime, Version
from .fsutil import atomic_write_bytes
from .ids import utcnow

Variant = Literal["fp32", "int8"]
DType = Literal["uint8", "float32", "int64"]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]

_NP_DTYPES = {"uint8": np.uint8, "float32": np.float32, "int64": np.int64}
MAX_TENSOR_BYTES = 4 * 1024 * 1024


class TensorSpec(BaseModel):
    model_config = STRICT_MODEL
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    dtype: DType
    shape: list[int | Annotated[str, StringConstraints(max_length=32)]] = Field(
        description="Dimensions; a string names a dynamic axis such as `batch`."
    )
    description: str | None = None


class TensorData(BaseModel):
    """A small tensor, either inline (base64 of little-endian bytes) or drawn from a seed.

    Seeded tensors come from SHAKE-256, not a numpy RNG, so the same seed gives the same bytes on
    every numpy version, and a reference input of a full image costs a few bytes in the manifest.
    """

    model_config = STRICT_MODEL
    dtype: DType
    shape: list[Annotated[int, Field(ge=0)]]
    data_b64: str | None = None
    seed: Annotated[str, StringConstraints(max_length=64)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TensorData:
        if (self.data_b64 is None) == (self.seed is None):
            raise ValueError("give exactly one of data_b64 and seed")
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * np.dtype(_NP_DTYPES[self.dtype]).itemsize
        if nbytes > MAX_TENSOR_BYTES:
            raise ValueError(f"tensor of {nbytes} bytes exceeds {MAX_TENSOR_BYTES}")
        return self

    def to_array(self) -> np.ndarray:
        dtype = np.dtype(_NP_DTYPES[self.dtype]).newbyteorder("<")
        count = int(np.prod(self.shape, dtype=np.int64))
        if self.seed is not None:
            raw = hashlib.shake_256(self.seed.encode()).digest(count)
            u8 = np.frombuffer(raw, dtype=np.uint8)
            if self.dtype == "uint8":
                arr = u8
            elif self.dtype == "float32":
                arr = (u8.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
            else:
                arr = u8.astype(np.int64)
            return arr.reshape(self.shape).copy()
        raw = base64.b64decode(self.data_b64 or "", validate=True)
        if len(raw) != count * dtype.itemsize:
            raise ManifestError(
                "bad_tensor", f"tensor data has {len(raw)} bytes, shape {self.shape} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(self.shape)

    @classmethod
    def from_array(cls, array: np.ndarray) -> TensorData:
        name = str(array.dtype)
        if name not in _NP_DTYPES:
            raise ValueError(f"unsupported dtype {name}")
        data = np.ascontiguousarray(array, dtype=np.dtype(name).newbyteorder("<")).tobytes()
        return cls(dtype=name, shape=list(array.shape), data_b64=base64.b64encode(data).decode())

    @classmethod
    def seeded(cls, dtype: DType, shape: list[int], seed: str) -> TensorData:
        return cls(dtype=dtype, shape=shape, seed=seed)


class ModelFile(BaseModel):
    model_config = STRICT_MODEL
    variant: Variant
    path: FileName = Field(description="File name beside the manifest.")
    sha256: Sha256Hex
    size: Annotated[int, Field(gt=0)]
    expected_outputs: dict[str, TensorData] = Field(
        default_factory=dict, description="This variant's outputs for the manifest's self_test_inputs."
    )
    atol: Annotated[float, Field(gt=0, le=1.0)] = 1e-4
    metrics: dict[str, float] = Field(default_factory=dict)


class ImagePreprocessing(BaseModel):
    """Only decode and resize happen outside the graph; normalisation is inside it."""

    model_config = STRICT_MODEL
    kind: Literal["image"] = "image"
    height: Annotated[int, Field(ge=8, le=4096)]
    width: Annotated[int, Field(ge=8, le=4096)]
    resize: Literal["center_crop", "stretch"] = "center_crop"
    layout: Literal["NHWC"] = "NHWC"
    color: Literal["RGB"] = "RGB"
    dtype: Literal["uint8"] = "uint8"


class SeasonVariable(BaseModel):
    model_config = STRICT_MODEL
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    unit: Annotated[str, StringConstraints(max_length=32)] = ""
    static: bool = False
    mean: float = 0.0
    std: float = 1.0


class SeasonPreprocessing(BaseModel):
    """The season tensor layout; normalisation by mean/std happens inside the graph."""

    model_config = STRICT_MODEL
    kind: Literal["season"] = "season"
    variables: list[SeasonVariable]
    time_steps: Annotated[int, Field(ge=1, le=4096)]
    time_step_days: Annotated[float, Field(gt=0)] = 1.0
    align: Literal["days_since_planting", "days_since_season_start"] = "days_since_planting"
    target: str = "yield"
    target_unit: str = ""
    quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9])


class Abstention(BaseModel):
    """When the model says "I don't know": chosen on validation data at export, applied by the agent.

    The score is higher for a more familiar image and is read from the output ``score_output``:
    for ``prototype_cosine`` that output is the score itself (cosine similarity of the image's
    features to the nearest class prototype, computed in the graph); for ``max_logit`` and
    ``energy`` it holds the raw logits (energy: ``T * logsumexp(logits / T)``); ``max_prob`` reads
    the calibrated probabilities. A detection whose score is below ``threshold`` is reported
    ``uncertain``. ``leaf_output`` (optional) is the probability that the frame shows a leaf at
    all; below ``leaf_threshold`` the frame is ``not_a_leaf`` and its class is not reported as a finding.
    """

    model_config = STRICT_MODEL
    temperature: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Fitted on validation logits; already applied to the probabilities output."
    )
    score: Literal["max_prob", "max_logit", "energy", "prototype_cosine"]
    score_output: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    threshold: float
    target_risk: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="Error rate among answered validation images the threshold was chosen for."
    )
    validation_coverage: Annotated[float, Field(ge=0, le=1)] | None = None
    validation_risk: Annotated[float, Field(ge=0, le=1)] | None = None
    leaf_output: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    leaf_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _needs_logits(self) -> Abstention:
        if self.score != "max_prob" and self.score_output is None:
            raise ValueError(f"score {self.score!r} needs score_output")
        return self


class Signature(BaseModel):
    model_config = STRICT_MODEL
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: KeyId
    value: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ModelManifest(BaseModel):
    model_config = STRICT_MODEL
    manifest_version: Literal[1] = 1
    name: Id
    version: Version
    task: Literal["disease_classification", "yield_forecast"]
    created_at: UtcDatetime = Field(default_factory=utcnow)
    expires_at: UtcDatetime | None = None
    synthetic: bool = Field(False, description="True when trained on synthetic data (tests, demos).")
    files: list[ModelFile] = Field(min_length=1)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    labels: list[Label] = Field(default_factory=list)
    preprocessing: Annotated[ImagePreprocessing | SeasonPreprocessing, Field(discriminator="kind")]
    metrics: dict[str, float] = Field(default_factory=dict)
    training_data_fingerprint: Annotated[str, StringConstraints(max_length=128)] = ""
    training_run: Annotated[str, StringConstraints(max_length=256)] = ""
    self_test_inputs: dict[str, TensorData] = Field(default_factory=dict)
    min_agent_version: Version = "0.1.0"
    notes: dict[str, str] = Field(default_factory=dict)
    display_names: dict[Label, Annotated[str, StringConstraints(min_length=1, max_length=128)]] | None = Field(
        None,
        description="What people read for each label (`Apple · Cedar apple rust`); the labels stay the class ids. "
        "Absent in manifests written before it existed, which still verify.",
    )
    abstention: Abstention | None = Field(
        None,
        description="Temperature, OOD score and thresholds for `uncertain` / `not_a_leaf`. "
        "Absent in manifests written before it existed, which still verify.",
    )
    signature: Signature | None = None

    @model_validator(mode="after")
    def _fp32_present(self) -> ModelManifest:
        variants = [f.variant for f in self.files]
        if "fp32" not in variants:
            raise ValueError("a manifest must list an fp32 file")
        if len(set(variants)) != len(variants):
            raise ValueError("each variant may appear once")
        unknown = sorted(set(self.display_names or {}) - set(self.labels))
        if unknown:
            raise ValueError(f"display_names names labels the model does not have: {unknown}")
        if self.abstention is not None:
            names = {o.name for o in self.outputs}
            for out in (self.abstention.score_output, self.abstention.leaf_output):
                if out is not None and out not in names:
                    raise ValueError(f"abstention names output {out!r}, the model has {sorted(names)}")
        return self

    def file(self, variant: Variant = "fp32") -> ModelFile:
        for f in self.files:
            if f.variant == variant:
                return f
        raise ManifestError("missing_variant", f"manifest {self.name} {self.version} has no {variant} file")

    @property
    def sha256(self) -> str:
        return self.file("fp32").sha256

    @property
    def size(self) -> int:
        return self.file("fp32").size

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An optional field added later stays out of every dump while it is None, so a manifest (or a
        # desired-model message holding one) signed before the field existed has the same canonical
        # bytes, and one without the field still loads in older readers.
        doc: dict[str, Any] = handler(self)
        for optional in ("display_names", "abstention"):
            if getattr(self, optional) is None:
                doc.pop(optional, None)
        return doc

    def canonical_bytes(self) -> bytes:
        """The bytes that are signed: the manifest without its signature, canonical JSON."""
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))

    def display_name(self, label: str) -> str:
        """What a person reads for ``label``: this model's table, else the shared rule."""
        return display_name(label, self.display_names)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelManifest:
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except FileNotFoundError as exc:
            raise ManifestError("missing_file", f"no manifest at {path}") from exc
        except ValueError as exc:
            raise ManifestError("invalid", f"manifest {path} is not valid: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_bytes(path, self.to_json().encode("utf-8"))


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# --- keys ------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(directory: str | os.PathLike[str], name: str = "cropwatch-signing") -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (private, mode 0600) and ``NAME.pub``; refuse to overwrite a key."""
    directory = Path(directory)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} exists; keys are never overwritten (move it away first)")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    return private_path, public_path, key_id(private.public_key())


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ManifestError("bad_key", f"{path} is not an Ed25519 private key")
    return key


def load_public_key(source: str | os.PathLike[str] | bytes) -> Ed25519PublicKey:
    """A public key from a PEM file path, PEM bytes, or base64 of the 32 raw bytes."""
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str) and not source.lstrip().startswith("-----") and not os.path.exists(source):
        try:
            raw = base64.b64decode(source, validate=True)
        except ValueError as exc:
            raise ManifestError("bad_key", f"{source!r} is neither a key file nor base64 of a key") from exc
        return Ed25519PublicKey.from_public_bytes(raw)
    elif isinstance(source, str) and source.lstrip().startswith("-----"):
        data = source.encode()
    else:
        data = Path(source).read_bytes()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ManifestError("bad_key", "not an Ed25519 public key")
    return key


class TrustedKeys:
    """The public keys an agent or registry accepts, by key id."""

    def __init__(self, keys: list[Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for k in keys or []:
            self.add(k)

    def add(self, key: Ed25519PublicKey) -> str:
        kid = key_id(key)
        self._keys[kid] = key
        return kid

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_sources(cls, sources: list[str]) -> TrustedKeys:
        return cls([load_public_key(s) for s in sources])


# --- sign and verify ---------------------------------------------------------------------------


def sign_bytes(data: bytes, private_key: Ed25519PrivateKey) -> Signature:
    """An Ed25519 signature of ``data`` (canonical JSON of whatever is signed), with its key id."""
    value = private_key.sign(data)
    return Signature(key_id=key_id(private_key.public_key()), value=base64.b64encode(value).decode())


def verify_bytes(sig: Signature | None, data: bytes, trusted: TrustedKeys, what: str, reason_prefix: str = "") -> str:
    """Check ``sig`` over ``data`` against the trusted keys; return the key id.

    Raises ManifestError with reason ``{prefix}unsigned``, ``{prefix}unknown_key`` or
    ``{prefix}bad_signature``; ``what`` names the signed thing in the message.
    """
    if sig is None:
        raise ManifestError(f"{reason_prefix}unsigned", f"{what} carries no signature")
    key = trusted.get(sig.key_id)
    if key is None:
        raise ManifestError(
            f"{reason_prefix}unknown_key",
            f"{what} is signed by key {sig.key_id}, which is not trusted; "
            "add its public key to the trusted keys if it is yours",
        )
    try:
        key.verify(base64.b64decode(sig.value, validate=True), data)
    except (InvalidSignature, ValueError) as exc:
        raise ManifestError(
            f"{reason_prefix}bad_signature", f"{what}: signature does not match its content (altered after signing?)"
        ) from exc
    return sig.key_id


def sign_manifest(manifest: ModelManifest, private_key: Ed25519PrivateKey) -> ModelManifest:
    return manifest.model_copy(update={"signature": sign_bytes(manifest.canonical_bytes(), private_key)})


def verify_manifest(manifest: ModelManifest, trusted: TrustedKeys, now: datetime | None = None) -> str:
    """Check the signature (and expiry); return the key id. Raises ManifestError with a reason."""
    what = f"manifest {manifest.name} {manifest.version}"
    kid = verify_bytes(manifest.signature, manifest.canonical_bytes(), trusted, what)
    current = now or utcnow()
    if manifest.expires_at is not None and manifest.expires_at <= current:
        raise ManifestError(
            "expired", f"manifest {manifest.name} {manifest.version} expired at {manifest.expires_at.isoformat()}"
        )
    return kid


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def verify_artifact(manifest: ModelManifest, variant: Variant, path: str | os.PathLike[str]) -> None:
    """Check a downloaded file against the (already verified) manifest."""
    entry = manifest.file(variant)
    if not Path(path).is_file():
        raise ManifestError("missing_file", f"{path} does not exist")
    digest, size = sha256_file(path)
    if size != entry.size:
        raise ManifestError("size_mismatch", f"{path}: {size} bytes, manifest says {entry.size}")
    if digest != entry.sha256:
        raise ManifestError("digest_mismatch", f"{path}: sha256 {digest} does not match the manifest's {entry.sha256}")
