"""The registry folder and its HTTP server, with real files and a real server on a free port."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import models_cli
from fleet.registry import Registry, RegistryError
from fleet.registry_server import RegistryHTTPServer
from shared.errors import ManifestError
from shared.examples import example_manifest
from shared.manifest import (
    ModelFile,
    TrustedKeys,
    generate_keypair,
    load_private_key,
    load_public_key,
    sha256_file,
    sign_manifest,
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub, _ = generate_keypair(tmp_path / "keys")
    return priv, pub


def make_release(folder: Path, priv: Path, version: str = "1.0.0", payload: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = payload if payload is not None else hashlib.sha256(version.encode()).digest() * 4096  # 128 KiB
    (folder / "model.onnx").write_bytes(data)
    digest, size = sha256_file(folder / "model.onnx")
    manifest = example_manifest().model_copy(
        update={
            "version": version,
            "signature": None,
            "files": [ModelFile(variant="fp32", path="model.onnx", sha256=digest, size=size)],
        }
    )
    return sign_manifest(manifest, load_private_key(priv)).save(folder / "manifest.json")


def test_import_list_show_retire(tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    priv, pub = keys
    reg_dir = tmp_path / "registry"
    manifest = make_release(tmp_path / "out", priv)
    base = ["--registry", str(reg_dir)]
    assert models_cli.main([*base, "import", str(manifest), "--trusted-key", str(pub)]) == 0
    assert "imported leaf-disease 1.0.0" in capsys.readouterr().out
    assert (reg_dir / "leaf-disease" / "1.0.0" / "model.onnx").read_bytes() == (
        tmp_path / "out" / "model.onnx"
    ).read_bytes()
    # identical re-import is a no-op
    assert models_cli.main([*base, "import", str(manifest), "--trusted-key", str(pub)]) == 0
    assert "already present" in capsys.readouterr().out
    assert models_cli.main([*base, "list"]) == 0
    assert "leaf-disease  1.0.0" in capsys.readouterr().out
    assert models_cli.main([*base, "show", "leaf-disease", "1.0.0"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.0.0"
    assert models_cli.main([*base, "retire", "leaf-disease", "1.0.0", "--reason", "false positives"]) == 0
    capsys.readouterr()
    assert models_cli.main([*base, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "leaf-disease", "version": "1.0.0", "retired": True}]
    assert models_cli.main([*base, "show", "leaf-disease", "9.9.9"]) == 1
    assert "not in the registry" in capsys.readouterr().err


def test_versions_are_immutable(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    registry = Registry(tmp_path / "registry")
    trusted = TrustedKeys([load_public_key(str(pub))])
    registry.import_version(make_release(tmp_path / "a", priv), trusted)
    other = make_release(tmp_path / "b", priv, payload=b"different model bytes")
    with pytest.raises(RegistryError, match="immutable"):
        registry.import_version(other, trusted)
    assert registry.get("leaf-disease", "1.0.0").manifest.size == 128 * 1024


@pytest.mark.parametrize("attack", ["unsigned", "untrusted", "tampered_file"])
def test_import_rejects_what_does_not_verify(tmp_path: Path, keys: tuple[Path, Path], attack: str) -> None:
    priv, pub = keys
    manifest = make_release(tmp_path / "out", priv)
    trusted = TrustedKeys([load_public_key(str(pub))])
    if attack == "unsigned":
        doc = json.loads(manifest.read_text())
        doc["signature"] = None
        manifest.write_text(json.dumps(doc))
    elif attack == "untrusted":
        _, other_pub, _ = generate_keypair(tmp_path / "other")
        trusted = TrustedKeys([load_public_key(str(other_pub))])
    else:
        blob = bytearray((tmp_path / "out" / "model.onnx").read_bytes())
        blob[100] ^= 1
        (tmp_path / "out" / "model.onnx").write_bytes(bytes(blob))
    with pytest.raises(ManifestError) as err:
        Registry(tmp_path / "registry").import_version(manifest, trusted)
    assert (
        err.value.reason
        == {"unsigned": "unsigned", "untrusted": "unknown_key", "tampered_file": "digest_mismatch"}[attack]
    )
    assert not (tmp_path / "registry" / "leaf-disease" / "1.0.0").exists()


@pytest.fixture
def server(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[RegistryHTTPServer]:
    priv, pub = keys
    registry = Registry(tmp_path / "registry")
    registry.import_version(make_release(tmp_path / "out", priv), TrustedKeys([load_public_key(str(pub))]))
    srv = RegistryHTTPServer(("127.0.0.1", 0), registry, token="s3cret")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(url: str, token: str | None = "s3cret", **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={**({"Authorization": f"Bearer {token}"} if token else {}), **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_http_full_range_resume_and_etag(server: RegistryHTTPServer, tmp_path: Path) -> None:
    url = f"{server.url}/leaf-disease/1.0.0/model.onnx"
    want = (tmp_path / "out" / "model.onnx").read_bytes()
    status, headers, body = get(url)
    assert status == 200 and body == want
    assert headers["ETag"] == f'"{hashlib.sha256(want).hexdigest()}"'
    assert headers["Accept-Ranges"] == "bytes"
    # a download cut after 50,000 bytes resumes from there
    status, headers, part2 = get(url, Range="bytes=50000-")
    assert status == 206 and headers["Content-Range"] == f"bytes 50000-{len(want) - 1}/{len(want)}"
    assert want[:50000] + part2 == want
    assert get(url, Range="bytes=10-19")[2] == want[10:20]
    assert get(url, Range="bytes=-5")[2] == want[-5:]
    assert get(url, Range=f"bytes={len(want)}-")[0] == 416
    assert get(url, **{"If-None-Match": headers["ETag"]})[0] == 304


def test_http_token_and_paths(server: RegistryHTTPServer) -> None:
    base = server.url
    assert get(f"{base}/leaf-disease/1.0.0/model.onnx", token=None)[0] == 401
    assert get(f"{base}/leaf-disease/1.0.0/model.onnx", token="wrong")[0] == 401
    assert get(f"{base}/leaf-disease/1.0.0/../../../etc/passwd")[0] == 404
    assert get(f"{base}/leaf-disease/1.0.0/%2e%2e%2fkeys")[0] == 404
    assert get(f"{base}/leaf-disease/1.0.0/not-listed.onnx")[0] == 404
    assert get(f"{base}/leaf-disease/2.0.0/model.onnx")[0] == 404
    status, _, body = get(f"{base}/leaf-disease/1.0.0/manifest.json")
    assert status == 200 and json.loads(body)["name"] == "leaf-disease"
    status, _, body = get(f"{base}/index.json")
    assert status == 200 and json.loads(body)[0]["files"]["fp32"] == "/leaf-disease/1.0.0/model.onnx"


def test_registry_serve_command(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    import signal
    import subprocess

    from tests.services import cropwatch_cmd, cropwatch_env, free_port, port_open, wait_for

    priv, pub = keys
    Registry(tmp_path / "registry").import_version(
        make_release(tmp_path / "out", priv), TrustedKeys([load_public_key(str(pub))])
    )
    (tmp_path / "token").write_text("tok\n")
    port = free_port()
    proc = subprocess.Popen(
        cropwatch_cmd(
            "registry",
            "serve",
            "--root",
            str(tmp_path / "registry"),
            "--port",
            str(port),
            "--token-file",
            str(tmp_path / "token"),
        ),
        env=cropwatch_env(),
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, timeout=30, what="registry port")
        status, _, body = get(f"http://127.0.0.1:{port}/index.json", token="tok")
        assert status == 200 and json.loads(body)[0]["version"] == "1.0.0"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
