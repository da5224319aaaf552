"""Artifact integrity: truncated, bit-flipped, foreign, tampered and newer-format files are refused
with an ArtifactError naming the file before onnxruntime builds anything; sealing old artifacts."""

from __future__ import annotations

import hashlib
import random
import shutil

import onnx
import pytest

from rewardrt import RewardModel
from rewardrt.runtime import api
from rewardrt.runtime.integrity import KEY_SHA256, PLACEHOLDER, check_artifact, seal, seal_bytes
from rewardrt.runtime.spec import KEY_FORMAT, KEY_TOKENIZER, ArtifactError


@pytest.fixture
def no_session(monkeypatch):
    """Fails the test if a model is built: the error must come before onnxruntime sees the file."""

    def refuse(*args, **kwargs):
        raise AssertionError("make_session was reached")

    monkeypatch.setattr(api, "make_session", refuse)


@pytest.fixture
def sealed(tiny_int8, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copy2(tiny_int8[0], path)
    return path


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_exports_are_sealed(sealed):
    data = sealed.read_bytes()
    meta = _meta(sealed)
    assert meta[KEY_FORMAT] == "2"
    digest = meta[KEY_SHA256]
    assert data.count(digest.encode()) == 1
    assert hashlib.sha256(data.replace(digest.encode(), PLACEHOLDER)).hexdigest() == digest
    assert check_artifact(sealed) == 2
    assert seal(sealed) == digest and sealed.read_bytes() == data  # re-sealing is a no-op


def test_any_bit_flip_is_refused_before_loading(sealed, tmp_path, no_session):
    data = sealed.read_bytes()
    digest_at = data.index(_meta(sealed)[KEY_SHA256].encode())
    version_at = data.index(b"rewardrt.format_version") + len("rewardrt.format_version") + 2
    rng = random.Random(0)
    positions = [0, 1, len(data) // 2, len(data) - 1, digest_at, digest_at + 63, version_at]
    positions += rng.sample(range(len(data)), 40)
    flipped = tmp_path / "flipped.onnx"
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        flipped.write_bytes(bad)
        with pytest.raises(ArtifactError, match="flipped.onnx"):
            RewardModel(flipped)


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99])
def test_truncated_file_is_refused(sealed, tmp_path, keep, no_session):
    data = sealed.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * keep)] if keep else b"")
    with pytest.raises(ArtifactError, match=r"cut\.onnx' is (empty|truncated)"):
        RewardModel(cut)
    cut.write_bytes(data[:-1])
    with pytest.raises(ArtifactError, match="cut.onnx"):
        RewardModel(cut)


@pytest.mark.parametrize("content", [b"\x00garbage" * 100, b'{"not": "onnx"}', b"\xff" * 4096,
                                     bytes(random.Random(3).randbytes(10_000))])
def test_garbage_is_refused(tmp_path, content, no_session):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match="garbage.onnx"):
        RewardModel(path)


def test_foreign_onnx_and_a_folder(tiny_fp32, tmp_path, no_session):
    model = onnx.load(str(tiny_fp32[0]))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(ArtifactError, match="foreign.onnx' is an ONNX graph without rewardrt metadata"):
        RewardModel(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RewardModel(tmp_path)


def test_tampered_metadata_is_refused(sealed, tmp_path, no_session):
    model = onnx.load(str(sealed))
    for p in model.metadata_props:
        if p.key == KEY_TOKENIZER:
            p.value = p.value.replace('"[UNK]"', '"[UNKNOWN]"')
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    with pytest.raises(ArtifactError, match="tampered.onnx' is corrupt or was modified after export"):
        RewardModel(tampered)
    del model.metadata_props[[p.key for p in model.metadata_props].index(KEY_SHA256)]
    onnx.save(model, str(tampered))
    with pytest.raises(ArtifactError, match="says artifact format 2 but carries no rewardrt.sha256"):
        RewardModel(tampered)


@pytest.mark.parametrize("version", ["3", "99"])
def test_newer_format_asks_for_an_upgrade(sealed, tmp_path, version, no_session):
    model = onnx.load(str(sealed))
    for p in model.metadata_props:
        if p.key == KEY_FORMAT:
            p.value = version
    newer = tmp_path / "newer.onnx"
    newer.write_bytes(model.SerializeToString())
    with pytest.raises(ArtifactError, match=rf"newer.onnx' was written by a newer rewardrt \(artifact "
                                            rf"format {version}.*upgrade rewardrt"):
        RewardModel(newer)


def test_unsealed_format_1_is_refused_naming_re_export(sealed, tmp_path):
    """Format 1 (no digest) was never shipped in a release: it is refused, not loaded with a warning."""
    model = onnx.load(str(sealed))
    del model.metadata_props[[p.key for p in model.metadata_props].index(KEY_SHA256)]
    for p in model.metadata_props:
        if p.key == KEY_FORMAT:
            p.value = "1"
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.raises(ArtifactError, match=r"old.onnx' is artifact format 1 .*re-export it"):
        RewardModel(old)
    with pytest.raises(ArtifactError, match=r"cannot seal format '1'"):
        seal(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "old.onnx"]  # nothing written


def test_seal_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ArtifactError, match="not a readable ONNX file"):
        seal_bytes(b"\xff" * 100)
    path = tmp_path / "x.onnx"
    path.write_bytes(b"\xff" * 100)
    with pytest.raises(ArtifactError, match="x.onnx"):
        seal(path)
    assert path.read_bytes() == b"\xff" * 100
    with pytest.raises(FileNotFoundError):
        seal(tmp_path / "none.onnx")


def test_default_artifact_passes_the_check():
    from rewardrt.models import default_model_path

    assert check_artifact(default_model_path()) == 2
