from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from shared.errors import ManifestError
from shared.examples import example_manifest
from shared.ids import utcnow
from shared.manifest import (
    ModelFile,
    ModelManifest,
    TensorData,
    TrustedKeys,
    generate_keypair,
    load_private_key,
    load_public_key,
    sha256_file,
    sign_manifest,
    verify_artifact,
    verify_manifest,
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple:
    priv, pub, kid = generate_keypair(tmp_path / "keys")
    return load_private_key(priv), load_public_key(str(pub)), kid, priv, pub


def unsigned(artifact: Path | None = None) -> ModelManifest:
    m = example_manifest().model_copy(update={"signature": None})
    if artifact is not None:
        digest, size = sha256_file(artifact)
        m = m.model_copy(update={"files": [ModelFile(variant="fp32", path=artifact.name, sha256=digest, size=size)]})
    return m


def test_keypair_files_and_permissions(keys: tuple) -> None:
    _, public, kid, priv_path, _pub_path = keys
    assert priv_path.stat().st_mode & 0o777 == 0o600
    assert len(kid) == 16
    assert TrustedKeys([public]).get(kid) is not None
    with pytest.raises(FileExistsError):
        generate_keypair(priv_path.parent)


def test_sign_then_verify(keys: tuple) -> None:
    private, public, kid, *_ = keys
    signed = sign_manifest(unsigned(), private)
    assert verify_manifest(signed, TrustedKeys([public])) == kid
    # the signature survives a trip through JSON on disk
    again = ModelManifest.model_validate_json(signed.to_json())
    assert verify_manifest(again, TrustedKeys([public])) == kid


def test_canonical_json_is_sorted_compact_and_ignores_signature(keys: tuple) -> None:
    private, *_ = keys
    m = unsigned()
    raw = m.canonical_bytes()
    doc = json.loads(raw)
    assert "signature" not in doc
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert sign_manifest(m, private).canonical_bytes() == raw


def test_unsigned_is_rejected(keys: tuple) -> None:
    _, public, *_ = keys
    with pytest.raises(ManifestError) as err:
        verify_manifest(unsigned(), TrustedKeys([public]))
    assert err.value.reason == "unsigned"


def test_unknown_key_is_rejected(keys: tuple, tmp_path: Path) -> None:
    private, *_ = keys
    _other_priv, other_pub, _ = generate_keypair(tmp_path / "other")
    signed = sign_manifest(unsigned(), private)
    with pytest.raises(ManifestError) as err:
        verify_manifest(signed, TrustedKeys([load_public_key(str(other_pub))]))
    assert err.value.reason == "unknown_key"


@pytest.mark.parametrize(
    "change",
    [{"version": "1.2.1"}, {"labels": ["a", "b", "c"]}, {"metrics": {"test_accuracy": 0.99}}, {"synthetic": True}],
)
def test_any_change_after_signing_breaks_the_signature(keys: tuple, change: dict) -> None:
    private, public, *_ = keys
    tampered = sign_manifest(unsigned(), private).model_copy(update=change)
    with pytest.raises(ManifestError) as err:
        verify_manifest(tampered, TrustedKeys([public]))
    assert err.value.reason == "bad_signature"


def test_expired_manifest_is_rejected(keys: tuple) -> None:
    private, public, *_ = keys
    m = unsigned().model_copy(update={"expires_at": utcnow() - timedelta(minutes=1)})
    with pytest.raises(ManifestError) as err:
        verify_manifest(sign_manifest(m, private), TrustedKeys([public]))
    assert err.value.reason == "expired"


def test_artifact_digest_and_size_are_checked(tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx bytes" * 100)
    m = unsigned(artifact)
    verify_artifact(m, "fp32", artifact)
    artifact.write_bytes(b"ONNX bytes" * 100)  # same size, other bytes
    with pytest.raises(ManifestError) as err:
        verify_artifact(m, "fp32", artifact)
    assert err.value.reason == "digest_mismatch"
    artifact.write_bytes(b"short")
    with pytest.raises(ManifestError) as err:
        verify_artifact(m, "fp32", artifact)
    assert err.value.reason == "size_mismatch"
    with pytest.raises(ManifestError) as err:
        verify_artifact(m, "int8", artifact)
    assert err.value.reason == "missing_variant"


def test_tensor_data_inline_and_seeded() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    assert np.array_equal(TensorData.from_array(arr).to_array(), arr)
    seeded = TensorData.seeded("uint8", [1, 8, 8, 3], "seed-1")
    a, b = seeded.to_array(), TensorData.seeded("uint8", [1, 8, 8, 3], "seed-1").to_array()
    assert a.shape == (1, 8, 8, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, TensorData.seeded("uint8", [1, 8, 8, 3], "seed-2").to_array())
    with pytest.raises(ValueError, match="exactly one"):
        TensorData(dtype="uint8", shape=[1])


def test_manifest_save_and_load(tmp_path: Path, keys: tuple) -> None:
    private, _public, *_ = keys
    signed = sign_manifest(unsigned(), private)
    path = signed.save(tmp_path / "manifest.json")
    loaded = ModelManifest.load(path)
    assert loaded == signed
    with pytest.raises(ManifestError) as err:
        ModelManifest.load(tmp_path / "missing.json")
    assert err.value.reason == "missing_file"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ManifestError) as err:
        ModelManifest.load(tmp_path / "bad.json")
    assert err.value.reason == "invalid"


def test_manifest_needs_fp32() -> None:
    doc = json.loads(unsigned().to_json())
    doc["files"][0]["variant"] = "int8"
    with pytest.raises(ValueError, match="fp32"):
        ModelManifest.model_validate(doc)


def test_display_names_round_trip_signed(keys: tuple, tmp_path: Path) -> None:
    """With the table: it is signed, survives save/load and verifies; changing one name breaks the signature."""
    priv, pub, *_ = keys
    names = {"Tomato___Late_blight": "Tomato · Late blight", "Tomato___healthy": "Tomato · Healthy"}
    m = sign_manifest(unsigned().model_copy(update={"display_names": names}), priv)
    loaded = ModelManifest.load(m.save(tmp_path / "manifest.json"))
    verify_manifest(loaded, TrustedKeys([pub]))
    assert loaded.display_names == names
    assert json.loads(loaded.canonical_bytes())["display_names"] == names
    assert loaded.display_name("Tomato___Late_blight") == "Tomato · Late blight"
    # A label the table leaves out reads by the shared rule.
    assert loaded.display_name("Tomato___Septoria_leaf_spot") == "Tomato · Septoria leaf spot"
    changed = loaded.model_copy(update={"display_names": {**names, "Tomato___healthy": "Potato · Healthy"}})
    with pytest.raises(ManifestError) as exc:
        verify_manifest(changed, TrustedKeys([pub]))
    assert exc.value.reason == "bad_signature"


def test_manifest_without_display_names_keeps_its_bytes(keys: tuple, tmp_path: Path) -> None:
    """Without the table (every manifest written before it existed): no key in any dump, so a manifest
    signed by older code, as an older reader would write it, still verifies."""
    priv, pub, *_ = keys
    m = sign_manifest(unsigned(), priv)
    assert m.display_names is None
    assert "display_names" not in json.loads(m.canonical_bytes())
    assert "display_names" not in json.loads(m.to_json()) and "display_names" not in m.model_dump_json()
    # What older code wrote: the same document, no display_names key, signed over it.
    old_doc = json.loads(m.to_json())
    loaded = ModelManifest.model_validate(old_doc)
    verify_manifest(loaded, TrustedKeys([pub]))
    assert loaded.display_name("Tomato___Late_blight") == "Tomato · Late blight"


def test_display_names_must_name_the_models_labels() -> None:
    with pytest.raises(ValueError, match="Potato___Early_blight"):
        ModelManifest.model_validate(
            {**json.loads(unsigned().to_json()), "display_names": {"Potato___Early_blight": "Potato · Early blight"}}
        )
